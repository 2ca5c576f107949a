"""Audit entries appended in one statement on PostgreSQL (security.audit_statement, the
`audit_append_entries` function of migration 0006), attacked where it could go wrong: the
database must chain exactly as the application hashes (any value, any character), write
nothing when a checkpoint is due or the statement is refused, and a batch whose commit is
unknown must end up in the log once, never lost and never twice."""

from __future__ import annotations

import asyncio
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy import func, select, text, update

from schema.runtime import Appliance
from security import audit, audit_statement
from security.audit import AuditEntry
from storage.models import AuditEvent, AuditHead
from storage.raw_connections import conninfo

pg = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_entries = st.builds(
    AuditEntry, actor=_text, roles=st.lists(_text, max_size=3), action=_text,
    object_type=st.none() | _text, object_ids=st.lists(_text | st.integers(), max_size=4),
    fields=st.lists(_text, max_size=3), decision=_text, reason=st.none() | _text,
    request_id=st.none() | _text)


@given(entry=_entries, seq=st.integers(1, 2**62), prev=st.text("0123456789abcdef", min_size=64,
                                                                max_size=64))
@examples(max_examples=200, deadline=None)
def test_the_pieces_around_the_locked_values_are_the_canonical_encoding(
        entry: AuditEntry, seq: int, prev: str) -> None:
    ts = "2026-11-22T12:00:00.123456+00:00"
    columns = audit_statement.arguments([entry])
    before, ids, after, middle = (columns[0][0], columns[1][0], columns[2][0], columns[3][0])
    assert before is not None and ids is not None and after is not None and middle is not None
    row = SimpleNamespace(seq=seq, ts=ts, actor=entry.actor, roles=columns[5][0],
                          action=entry.action, object_type=entry.object_type,
                          object_ids=ids, fields=columns[8][0],
                          decision=entry.decision, reason=entry.reason,
                          request_id=entry.request_id, prev_hash=prev)
    assert (f'{before}{ids}{after}{prev}{middle}{seq},"ts":"{ts}"}}'.encode()
            == audit.canonical(row))


def _connect(appliance: Appliance) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo(appliance.engine.url), autocommit=True)


def _entry(**values: Any) -> AuditEntry:
    return AuditEntry(**{"actor": "client:t", "roles": ("sales_manager",),
                         "action": "contact.read", "object_type": "contact",
                         "object_ids": ("a", "b"), "fields": ("email",),
                         "request_id": uuid.uuid4().hex, **values})


def _rows(appliance: Appliance) -> list[AuditEvent]:
    with appliance.sessions() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _append_now(appliance: Appliance, entries: list[AuditEntry]) -> None:
    with appliance.sessions.begin() as session:
        appliance.append_audit(session, entries)


def _signed_once(appliance: Appliance) -> None:
    """One entry the usual way: the first append signs the first checkpoint, so the next
    ones are not due one."""
    _append_now(appliance, [_entry()])


def _checkpoint_due_after(appliance: Appliance, entries: int) -> None:
    """Bring the next checkpoint forward: due once `entries` more are appended."""
    with appliance.sessions.begin() as session:
        head = session.get(AuditHead, 1)
        assert head is not None
        session.execute(update(AuditHead).where(AuditHead.id == 1)
                        .values(checkpoint_due=head.seq + entries))


@pg
def test_the_database_chains_as_the_application_hashes(appliance: Appliance) -> None:
    _signed_once(appliance)
    odd = [_entry(actor="zoë 😀 \"quoted\" \\ back\nslash", reason="naïve ' \" \u2028",
                  object_type=None, object_ids=("é", 7, ""), fields=()),
           _entry(request_id=None, reason=None, roles=()), _entry()]
    with _connect(appliance) as connection:
        seqs = audit_statement.append(connection, odd)
        more = audit_statement.append(connection, [_entry() for _ in range(2)])  # < 8 in all
    assert seqs is not None and more is not None and more[0] == seqs[-1] + 1
    _append_now(appliance, [_entry()])  # and the session path goes on from there
    rows = _rows(appliance)
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    for before, row in zip(rows, rows[1:], strict=False):
        assert row.prev_hash == before.hash and row.hash == audit.entry_hash(row)
    # Each entry's stored Merkle leaf (what checkpoints are signed from) is its own, whoever
    # wrote it: the database function or the session path.
    assert all(row.leaf == audit.entry_leaf(row).hex() for row in rows)
    stored = {row.seq: row for row in rows}
    assert stored[seqs[0]].actor == odd[0].actor and stored[seqs[0]].object_type is None
    assert stored[seqs[1]].request_id is None and stored[seqs[1]].reason is None
    with appliance.sessions() as session:
        assert audit.verify(session, appliance.keyring).ok


@pg
def test_an_entry_chained_otherwise_is_found_by_verify(appliance: Appliance) -> None:
    _signed_once(appliance)
    entry = _entry()
    columns = audit_statement.arguments([entry])
    columns[3][0] = str(columns[3][0]).replace('"roles":', '"roles" :')  # not canonical
    with _connect(appliance) as connection:
        last = connection.execute(audit_statement._CALL, columns).fetchone()
    assert last is not None and last[0] is not None
    with appliance.sessions() as session:
        report = audit.verify(session, appliance.keyring)
    assert not report.ok and report.first_bad_seq == last[0]


@pg
def test_a_checkpoint_due_is_left_to_the_session_path(appliance: Appliance) -> None:
    _signed_once(appliance)
    _checkpoint_due_after(appliance, 3)
    before = _rows(appliance)
    with _connect(appliance) as connection:
        assert audit_statement.append(connection, [_entry(), _entry()]) is not None
        assert audit_statement.append(connection, [_entry()]) is None  # the third is due
    assert len(_rows(appliance)) == len(before) + 2
    appliance.audit_group.append([_entry()])  # the group signs it
    with appliance.sessions() as session:
        report = audit.verify(session, appliance.keyring)
        assert report.ok and report.last_checkpoint == len(before) + 3


@pg
def test_a_refused_statement_writes_nothing_and_says_so(appliance: Appliance) -> None:
    _signed_once(appliance)
    with appliance.engine.begin() as connection:
        connection.execute(text(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no'; END $$"))
        connection.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
                                "FOR EACH ROW EXECUTE FUNCTION refuse()"))
    before = _rows(appliance)
    with _connect(appliance) as connection:
        with pytest.raises(audit_statement.NotWritten):
            audit_statement.append(connection, [_entry(), _entry()])
        assert not connection.broken  # the server refused it; the connection is fine
    with appliance.sessions() as session:
        assert session.get(AuditHead, 1).seq == len(before)  # type: ignore[union-attr]
    assert len(_rows(appliance)) == len(before)


def _count(appliance: Appliance, request_id: str) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)
                                  .where(AuditEvent.request_id == request_id)) or 0)


@pg
@pytest.mark.parametrize("committed", [True, False])
def test_a_batch_whose_commit_is_unknown_is_in_the_log_once(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch, committed: bool) -> None:
    """The connection breaks once the statement is sent: whether it committed or not, the
    caller gets its sequence numbers and the log holds its entries exactly once."""
    _signed_once(appliance)
    real = audit_statement.append_async

    async def lost(connection: Any, entries: Any) -> list[int] | None:
        if committed:
            await real(connection, entries)
        raise audit_statement.MaybeWritten()

    monkeypatch.setattr(audit_statement, "append_async", lost)
    batch = [_entry(), _entry(), _entry()]

    async def append() -> list[int]:
        # Another process appends meanwhile: the batch is looked for, not assumed last.
        await asyncio.to_thread(_append_now, appliance, [_entry()])
        return await appliance.loop_appender().append(batch)

    seqs = asyncio.run(append())
    rows = {row.seq: row for row in _rows(appliance)}
    assert [rows[seq].request_id for seq in seqs] == [entry.request_id for entry in batch]
    assert all(_count(appliance, str(entry.request_id)) == 1 for entry in batch)
    with appliance.sessions() as session:
        assert audit.verify(session, appliance.keyring).ok


@pg
def test_a_lost_audit_connection_loses_no_entry(appliance: Appliance) -> None:
    """The server drops the writer's connections while they sit idle: the next batches are
    still appended, once each, and the statement path recovers on fresh connections."""
    _signed_once(appliance)
    writer = appliance.audit_writer

    async def reads(count: int) -> list[list[int]]:
        appender = appliance.loop_appender()
        return [await appender.append([_entry()]) for _ in range(count)]

    async def run() -> tuple[list[list[int]], list[list[int]], int]:
        first = await reads(2)
        await asyncio.to_thread(appliance.audit_group.append, [_entry()])
        with appliance.engine.begin() as connection:
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid()"))
        statements = writer.statement_batches
        second = await reads(3)
        await asyncio.to_thread(appliance.audit_group.append, [_entry()])
        return first, second, writer.statement_batches - statements

    first, second, statements = asyncio.run(run())
    assert statements >= 2  # after the first batch, in one statement again
    rows = _rows(appliance)
    requests = [row.request_id for row in rows if row.request_id]
    assert len(set(requests)) == len(requests) >= 7  # none twice
    assert {seq for found in first + second for seq in found} <= {row.seq for row in rows}
    with appliance.sessions() as session:
        assert audit.verify(session, appliance.keyring).ok


@pg
def test_two_processes_appending_at_once_keep_one_chain(appliance: Appliance,
                                                        settings: Any) -> None:
    """Two appliances on one database (two server workers), each from threads and an event
    loop, with checkpoints falling due among them: every entry once, one chain, verified."""
    _signed_once(appliance)
    before = len(_rows(appliance))
    other = Appliance.open(settings)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def threads(target: Appliance) -> None:
        start.wait()
        try:
            for _ in range(30):
                target.audit_group.append([_entry(), _entry()])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def loop(target: Appliance) -> None:
        async def run() -> None:
            appender = target.loop_appender()
            for _ in range(10):
                await asyncio.gather(*(appender.append([_entry()]) for _ in range(4)))
        start.wait()
        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        workers = [threading.Thread(target=threads, args=(appliance,)),
                   threading.Thread(target=threads, args=(other,)),
                   threading.Thread(target=loop, args=(appliance,)),
                   threading.Thread(target=loop, args=(other,))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
    finally:
        other.close()
    assert not errors
    rows = _rows(appliance)
    assert len(rows) == before + 2 * 60 + 2 * 40
    requests = [row.request_id for row in rows if row.request_id]
    assert len(set(requests)) == len(requests)
    with appliance.sessions() as session:
        report = audit.verify(session, appliance.keyring)
        assert report.ok and report.checkpoints > 3


@pg
def test_a_batch_the_statement_declined_is_not_offered_to_it_again(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint falls due within a loop's batch: the function is asked once, then the batch
    goes straight to the signing path (not to the group's statement, nor the write path's)."""
    _signed_once(appliance)
    _checkpoint_due_after(appliance, 1)
    asked: list[str] = []
    for name in ("append", "append_async", "append_in_transaction"):
        real = getattr(audit_statement, name)
        if name == "append_async":
            async def counted_async(*args: Any, _real: Any = real) -> Any:
                asked.append("append_async")
                return await _real(*args)
            monkeypatch.setattr(audit_statement, name, counted_async)
        else:
            def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
                asked.append(_name)
                return _real(*args)
            monkeypatch.setattr(audit_statement, name, counted)

    async def append() -> list[int]:
        return await appliance.loop_appender().append([_entry()])

    seqs = asyncio.run(append())
    assert asked == ["append_async"]
    with appliance.sessions() as session:
        report = audit.verify(session, appliance.keyring)
        assert report.ok and report.last_checkpoint == seqs[0]
