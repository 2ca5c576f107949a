"""Group commit of read audit entries (security.audit_group): every caller's entries are
durable when it returns, in one chain that still verifies; a failed batch fails every caller
in it; compiled reads on PostgreSQL use it and still write one entry per read."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.runtime import Appliance
from security import audit
from security.audit import AuditEntry
from security.audit_group import GroupAppender
from storage.models import AuditEvent


def _entry(i: int) -> AuditEntry:
    return AuditEntry(actor=f"client:t{i}", roles=("sales_manager",), action="contact.read",
                      object_type="contact", object_ids=[f"id-{i}"], fields=["email"])


def test_concurrent_appends_are_all_durable_and_chained(appliance: Appliance) -> None:
    group = GroupAppender(appliance.sessions, appliance.append_audit)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def one(i: int) -> None:
        start.wait()
        try:
            for j in range(5):
                results[i * 10 + j] = group.append([_entry(i * 10 + j)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 60 and group.entries == 60
    seqs = sorted(s for found in results.values() for s in found)
    assert len(set(seqs)) == 60
    with appliance.sessions() as session:
        for key, found in results.items():
            row = session.scalars(select(AuditEvent).where(AuditEvent.seq == found[0])).one()
            assert row.actor == f"client:t{key}" and row.object_ids == f'["id-{key}"]'
        assert audit.verify(session, appliance.keyring).ok


def test_a_failed_batch_fails_its_callers(appliance: Appliance) -> None:
    def broken(session: Session, entries: list[AuditEntry]) -> list[int]:
        raise RuntimeError("the database went away")

    group = GroupAppender(appliance.sessions, broken)
    with pytest.raises(RuntimeError):
        group.append([_entry(1)])
    # The next caller leads again (the failure did not leave the appender stuck).
    with pytest.raises(RuntimeError):
        group.append([_entry(2)])


def test_compiled_reads_write_one_entry_each(appliance: Appliance, caller: Any,
                                             backend: str) -> None:
    from schema.context import unit_of_work
    from schema.graphql import execution
    from schema.ops import documents
    from tests.conftest import operator

    who = caller("sales_manager", team="east")
    body = "query { contacts(first: 5) { edges { node { id email } } } }"
    with unit_of_work(appliance, operator("admin")) as ctx:
        doc_id = documents.add_document(ctx, body, clients=[who.client_id],
                                        validate=execution.validate_document).id
    with unit_of_work(appliance, operator("sales_manager", team="east", id="m")) as ctx:
        from schema.ops import contacts as contact_ops
        contact_ops.create_contact(ctx, {"last_name": "A", "email": "a@example.org"})
    writer = appliance.audit_writer
    before = appliance.audit_group.entries + writer.statement_entries
    for _ in range(3):
        answer = who.http.post("/graphql", json={"documentId": doc_id},
                               headers={"Authorization": f"Bearer {who.token}"}).json()
        assert "errors" not in answer and answer["data"]["contacts"]["edges"]
    grouped = appliance.audit_group.entries + writer.statement_entries - before
    assert grouped == (3 if backend == "postgres" else 0)
    with appliance.sessions() as session:
        reads = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.read", AuditEvent.actor == f"client:{who.client_id}"))
        assert len(list(reads)) == 3
        assert audit.verify(session, appliance.keyring).ok


def test_a_caller_that_goes_away_still_has_its_entries_appended() -> None:
    """A read cancelled while its batch is being written (the client hung up) cancels only its
    own wait: the entries it handed over are in the batch, and the batch is written whole."""
    from security.audit_group import LoopAppender

    written: list[str] = []

    async def slow_plain(entries: list[AuditEntry]) -> list[int]:
        await asyncio.sleep(0.05)
        written.extend(str(entry.request_id) for entry in entries)
        return list(range(1, len(entries) + 1))

    def entry(request_id: str) -> AuditEntry:
        return AuditEntry(actor="client:t", roles=("r",), action="contact.read",
                          request_id=request_id)

    async def run() -> list[int]:
        appender = LoopAppender(None, slow_plain)  # type: ignore[arg-type]
        first = asyncio.ensure_future(appender.append([entry("first")]))
        await asyncio.sleep(0.01)  # the first batch is being written
        gone = asyncio.ensure_future(appender.append([entry("gone")]))
        kept = asyncio.ensure_future(appender.append([entry("kept")]))
        await asyncio.sleep(0)
        gone.cancel()
        await first
        return await kept

    assert asyncio.run(run()) == [2]
    assert written == ["first", "gone", "kept"]


def test_a_batch_waits_briefly_for_reads_on_their_way_and_a_lone_read_for_nobody() -> None:
    """Reads that announced themselves (`expect`) are gathered into the batch about to be
    written, so one commit serves them all; with none on the way the batch goes at once; a
    read that never comes holds a batch back no longer than GATHER_SECONDS."""
    from security import audit_group
    from security.audit_group import LoopAppender

    batches: list[list[str]] = []

    async def plain(entries: list[AuditEntry]) -> list[int]:
        batches.append([str(entry.request_id) for entry in entries])
        return list(range(1, len(entries) + 1))

    def entry(request_id: str) -> list[AuditEntry]:
        return [AuditEntry(actor="client:t", roles=("r",), action="contact.read",
                           request_id=request_id)]

    async def run() -> tuple[float, float]:
        appender = LoopAppender(None, plain)  # type: ignore[arg-type]
        for _ in range(3):  # three reads on their way
            appender.expect()

        async def read(name: str, delay: float) -> list[int]:
            await asyncio.sleep(delay)
            return await appender.append(entry(name), expected=True)

        await asyncio.gather(read("a", 0), read("b", 0.0005), read("c", 0.001))
        loop = asyncio.get_running_loop()
        began = loop.time()
        await appender.append(entry("alone"))
        alone = loop.time() - began
        appender.expect()  # a read that fails before it appends, and never says so in time
        began = loop.time()
        await appender.append(entry("late"))
        held = loop.time() - began
        appender.unexpect()
        return alone, held

    alone, held = asyncio.run(run())
    assert batches[0] == ["a", "b", "c"]  # one batch for the three
    assert batches[1] == ["alone"] and alone < audit_group.GATHER_SECONDS
    assert batches[2] == ["late"] and held < audit_group.GATHER_SECONDS + 0.05
