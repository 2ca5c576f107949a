"""The server's periodic audit signer (api.audit_timer): unsigned entries are signed within
`audit_checkpoint_seconds` while the server runs, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import time

import pytest
from sqlalchemy import func, select
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
