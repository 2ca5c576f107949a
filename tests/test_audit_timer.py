"""The server's periodic audit signer (api.audit_timer): unsigned entries are signed within
`audit_checkpoint_seconds` while the server runs, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from api.app import create_app
from schema.runtime import Appliance
from security import audit
from security.audit import AuditEntry
from security.config import ConfigurationError, Settings
from storage.models import AuditCheckpoint, AuditHead


def _append(appliance: Appliance, count: int) -> None:
    with appliance.sessions.begin() as session:
        appliance.append_audit(session, [AuditEntry(actor="client:t", roles=("r",),
                                                     action="test.entry")] * count)


def _state(appliance: Appliance) -> tuple[int, int]:
    """(entries in the log, size of the last signed checkpoint)."""
    with appliance.sessions() as session:
        head = session.get(AuditHead, 1)
        last = session.scalar(select(func.max(AuditCheckpoint.seq)))
        return (head.seq if head else 0), int(last or 0)


def _wait_until_signed(appliance: Appliance, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        size, signed = _state(appliance)
        if signed == size or time.monotonic() > deadline:
            return size, signed
        time.sleep(0.05)


def test_a_running_server_signs_the_unsigned_end_within_the_interval(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(appliance, "settings", dataclasses.replace(
        appliance.settings, audit_checkpoint_every=1000, audit_checkpoint_seconds=0.2))
    _append(appliance, 1)  # the first entry is signed at once
    _append(appliance, 5)  # these wait for the count (1000), or for the timer
    size, signed = _state(appliance)
    assert signed < size
    with TestClient(create_app(appliance)):
        size, signed = _wait_until_signed(appliance, timeout=5)
        assert signed == size
        _append(appliance, 3)
        size, signed = _wait_until_signed(appliance, timeout=5)
        assert signed == size  # and again, for entries written later
        checkpoints = _count_checkpoints(appliance)
        time.sleep(0.6)  # nothing new: nothing more to sign
        assert _count_checkpoints(appliance) == checkpoints
    with appliance.sessions() as session:
        assert audit.verify(session, appliance.keyring).ok


def test_without_an_interval_only_the_count_signs(appliance: Appliance) -> None:
    assert appliance.settings.audit_checkpoint_seconds == 0
    _append(appliance, 1)
    _append(appliance, 3)  # under the count of 8
    with TestClient(create_app(appliance)):
        time.sleep(0.5)
        size, signed = _state(appliance)
    assert signed < size


def _count_checkpoints(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AuditCheckpoint)) or 0)


def test_the_settings_take_the_interval_and_refuse_nonsense(tmp_path: object) -> None:
    env = {"ENCLAVE_AUDIT_CHECKPOINT_SECONDS": "2.5", "ENCLAVE_AUDIT_CHECKPOINT_EVERY": "100"}
    settings = Settings.from_env(env, data_dir=tmp_path, dev_mode=True)
    assert (settings.audit_checkpoint_seconds, settings.audit_checkpoint_every) == (2.5, 100)
    for bad in ({"ENCLAVE_AUDIT_CHECKPOINT_SECONDS": "soon"},
                {"ENCLAVE_AUDIT_CHECKPOINT_SECONDS": "-1"},
                {"ENCLAVE_AUDIT_CHECKPOINT_EVERY": "0"}):
        with pytest.raises(ConfigurationError):
            Settings.from_env(bad, data_dir=tmp_path, dev_mode=True)


# -- signing ahead of the count (security.audit.sign_ahead) --------------------------------

def _sign_ahead(appliance: Appliance, every: int = 8, at_least: int = 1) -> int | None:
    return audit.sign_ahead(appliance.sessions, appliance.keyring, checkpoint_every=every,
                            at_least=at_least)


def _due(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return int(session.get(AuditHead, 1).checkpoint_due)


def _verified(appliance: Appliance) -> bool:
    with appliance.sessions() as session:
        return audit.verify(session, appliance.keyring).ok


def _appended(appliance: Appliance, count: int) -> None:
    """A new appliance's log (2 entries, signed; the count due at 10) and `count` more."""
    assert (_state(appliance), _due(appliance)) == ((2, 2), 10)
    _append(appliance, count)
    assert _state(appliance) == (2 + count, 2)


def test_signing_ahead_signs_the_end_and_moves_the_promise(appliance: Appliance) -> None:
    _appended(appliance, 4)
    assert _sign_ahead(appliance) == 6
    assert _state(appliance) == (6, 6)
    assert _due(appliance) == 6 + 8  # the promise moves with it
    checkpoints = _count_checkpoints(appliance)
    assert _sign_ahead(appliance) == 6  # nothing new: nothing signed again
    assert _count_checkpoints(appliance) == checkpoints
    _append(appliance, 7)  # 13: under the new promise (14), so the count does not sign
    assert _state(appliance) == (13, 6)
    assert _verified(appliance)


def test_signing_ahead_lets_appends_through_while_it_signs(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tree is grown holding no lock (and the note signed outside any transaction): an
    append made while the tree grows, from another connection with a lock timeout so that a
    held lock fails rather than hangs, goes through, and the checkpoint signs the size the
    signer started from."""
    if appliance.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time (every transaction begins IMMEDIATE)")
    _appended(appliance, 4)
    grown = audit._grown_tree

    def append_while_growing(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(audit, "_grown_tree", grown)
        with appliance.sessions.begin() as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            appliance.append_audit(session, [AuditEntry(actor="client:t", roles=("r",),
                                                         action="test.during")] * 2)
        return grown(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(audit, "_grown_tree", append_while_growing)
    assert _sign_ahead(appliance) == 6
    assert _state(appliance) == (8, 6)
    assert _verified(appliance)


def test_signing_ahead_stands_back_for_a_newer_checkpoint(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another signer (here: signing the end by hand) stores a checkpoint while this one
    signs: this one stores nothing and reports the other's size."""
    _appended(appliance, 4)
    signed = audit._signed

    def other_signer_first(*args: object, **kwargs: object) -> dict[str, object]:
        monkeypatch.setattr(audit, "_signed", signed)  # the other signer signs as usual
        _append(appliance, 1)
        with appliance.sessions.begin() as session:
            audit.checkpoint_now(session, appliance.keyring, checkpoint_every=8)
        return signed(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(audit, "_signed", other_signer_first)
    assert _sign_ahead(appliance) == 7
    with appliance.sessions() as session:
        assert session.get(AuditCheckpoint, 6) is None
    assert _state(appliance) == (7, 7)
    assert _due(appliance) == 7 + 8
    assert _verified(appliance)


def test_signing_ahead_never_stores_a_promise_already_broken(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the log grew past the size the new note promises while it was signed, storing it
    would leave `verify` failing until the next checkpoint: nothing is stored."""
    _appended(appliance, 4)
    signed = audit._signed

    def grow_past_the_promise(*args: object, **kwargs: object) -> dict[str, object]:
        _append(appliance, 2)
        return signed(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(audit, "_signed", grow_past_the_promise)
    assert _sign_ahead(appliance, every=2) == 2  # promises 6 + 2 = 8; the log is at 8
    assert _state(appliance) == (8, 2)
    assert _due(appliance) == 10
    assert _verified(appliance)


def test_a_running_server_signs_ahead_of_the_count(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the interval far off, entries past three quarters of a checkpoint interval (6 of
    8) wake the worker's signer at once; the count (due at 10) is not what signs them."""
    monkeypatch.setattr(appliance, "settings", dataclasses.replace(
        appliance.settings, audit_checkpoint_seconds=60))
    assert _state(appliance) == (2, 2)
    with TestClient(create_app(appliance)):
        _append(appliance, 5)
        time.sleep(0.3)
        assert _state(appliance) == (7, 2)  # 5 past the last checkpoint: not woken
        _append(appliance, 1)
        assert _wait_until_signed(appliance, timeout=5) == (8, 8)
        assert _due(appliance) == 8 + 8
    assert appliance.audit_writer.nudge is None  # the signer stopped with the server
    assert _verified(appliance)


def test_signing_ahead_waits_for_enough_unsigned_entries(appliance: Appliance) -> None:
    """A signer woken by the count asks for a quarter of an interval: a few entries appended
    since another signer signed are left to the next wake (or the timer)."""
    _appended(appliance, 4)
    assert _sign_ahead(appliance, at_least=5) == 2  # 4 unsigned: not enough
    assert _state(appliance) == (6, 2)
    assert _sign_ahead(appliance, at_least=4) == 6
    assert _state(appliance) == (6, 6)
    assert _verified(appliance)


def test_one_signer_at_a_time_the_others_stand_back_at_once(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers' signers woken by the same count: while one grows the tree and signs, the
    other finds the signers' lock taken and returns at once without reading the log; the first
    stores its checkpoint; exactly one checkpoint is added."""
    if appliance.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: signers cannot overlap")
    _appended(appliance, 4)
    checkpoints = _count_checkpoints(appliance)
    grown, inside, release = audit._grown_tree, threading.Event(), threading.Event()
    grown_calls: list[int] = []

    def slow_grow(*args: object, **kwargs: object) -> object:
        grown_calls.append(1)
        inside.set()
        assert release.wait(10)
        return grown(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(audit, "_grown_tree", slow_grow)
    first: list[int | None] = []
    signer = threading.Thread(target=lambda: first.append(_sign_ahead(appliance)))
    signer.start()
    try:
        assert inside.wait(10)
        assert _sign_ahead(appliance) is None  # the lock is taken: nothing read, nothing signed
        assert len(grown_calls) == 1
    finally:
        release.set()
        signer.join(10)
    assert first == [6]
    assert _count_checkpoints(appliance) == checkpoints + 1
    assert _state(appliance) == (6, 6)
    assert _sign_ahead(appliance) == 6  # the lock went with the first signer's transaction
    assert _verified(appliance)


def test_storing_a_checkpoint_holds_the_head_row_for_one_statement_only(
        appliance: Appliance) -> None:
    """Every appender of every worker waits on the head row. The signer runs in a thread of a
    busy worker, which waits for the interpreter between round trips: after each statement
    it sends, another connection must find the head row free (taking it with NOWAIT)."""
    if appliance.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no row locks")
    _appended(appliance, 4)
    probe = create_engine(appliance.engine.url)
    held_after: list[str] = []

    def probe_head(conn: object, cursor: object, statement: str, *args: object) -> None:
        with probe.connect() as other:
            try:
                other.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT"))
            except OperationalError:
                held_after.append(" ".join(statement.split())[:80])
            other.rollback()

    event.listen(appliance.engine, "after_cursor_execute", probe_head)
    try:
        assert _sign_ahead(appliance) == 6
    finally:
        event.remove(appliance.engine, "after_cursor_execute", probe_head)
        probe.dispose()
    assert held_after == []
    assert _state(appliance) == (6, 6)
    assert _due(appliance) == 6 + 8
    assert _verified(appliance)
