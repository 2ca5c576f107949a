"""The lean lane (schema.compiled.lean): a registered contact page answered in one statement on
the event loop, on PostgreSQL. It must answer exactly as the ordinary executor does (the
equivalence tests of test_compiled.py run through it), and hand every case that is not plain
to the usual path having written nothing: a moved ciphertext, a policy or key change made by
another process, a revoked client, an unbound document, a lost connection. No answer may
leave before its audit entry is durable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import asyncpg
import httpx2 as httpx
import pytest
from sqlalchemy import select, text

from api.app import create_app
from schema.compiled import lean
from schema.context import unit_of_work
from schema.ops import clients, documents, policies
from schema.runtime import Appliance
from security import audit
from security.authz import Rule
from security.classification import OBJECTS
from storage.models import AuditEvent
from tests.conftest import operator
from tests.test_compiled import DOCUMENTS, _both, make_world, move_email

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

BENCH = DOCUMENTS[0]  # the benchmark's page: six fields and the account


@pytest.fixture
def world(appliance: Appliance, caller: Any) -> dict[str, Any]:
    """test_compiled's world, each document already run once (so compiled: the lean lane
    takes a document from its second request on)."""
    made = make_world(appliance, caller)
    for who in made["callers"].values():
        for doc_id in made["docs"].values():
            _post(who, doc_id)
    return made


def _post(who: Any, doc_id: str, variables: dict[str, Any] | None = None) -> httpx.Response:
    response: httpx.Response = who.http.post(
        "/graphql", json={"documentId": doc_id, "variables": variables or {}},
        headers={"Authorization": f"Bearer {who.token}"})
    return response


def _entries(appliance: Appliance, action: str) -> list[AuditEvent]:
    with appliance.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def test_the_plain_case_is_answered_by_the_lean_lane_as_the_ordinary_path_answers(
        appliance: Appliance, world: dict[str, Any]) -> None:
    who = world["callers"]["sales_manager"]
    for body in DOCUMENTS[:3]:
        for variables in ({}, {"first": 2}, {"first": 100}):
            before = lean.Counts.answered
            compiled, ordinary = _both(appliance, who, body, world["docs"][body], variables)
            assert lean.Counts.answered == before + 1, (body, variables)
            assert compiled == ordinary
    # The page it answered was audited like the ordinary path's: the same ids, the same fields.
    entries = _entries(appliance, "contact.read")
    assert entries[-1].object_ids == entries[-2].object_ids
    assert entries[-1].fields == entries[-2].fields


def test_filtered_pages_are_answered_and_a_refused_filter_is_left_to_the_guard(
        appliance: Appliance, world: dict[str, Any]) -> None:
    body = DOCUMENTS[2]  # contacts(first, after, filter)
    ids = world["ids"]
    manager = world["callers"]["sales_manager"]
    for contact_filter in ({"accountId": ids["account"][0]}, {"owner": "r-east"},
                           {"email": ids["email"][1]}, {"phone": "+1 555 0101"},
                           {"accountId": ids["account"][1], "owner": "r-east"}):
        before = lean.Counts.answered
        compiled, ordinary = _both(appliance, manager, body, world["docs"][body],
                                   {"filter": contact_filter, "first": 5})
        assert lean.Counts.answered == before + 1, contact_filter
        assert compiled == ordinary
    # A caller who may not read a field may not search by it either: refused and audited by
    # the usual path, the same bytes.
    email = OBJECTS["contact"].field("email").classification.policy_name
    with unit_of_work(appliance, operator("admin")) as ctx:
        policies.revoke(ctx, Rule("sales_manager", "contact", email, "read"))
    before = lean.Counts.answered
    compiled, ordinary = _both(appliance, manager, body, world["docs"][body],
                               {"filter": {"email": ids["email"][1]}})
    assert lean.Counts.answered == before
    assert compiled == ordinary and b"FORBIDDEN" in compiled


def test_a_moved_ciphertext_is_left_to_the_guard(appliance: Appliance,
                                                 world: dict[str, Any]) -> None:
    """The lane does not answer a page holding a value that does not open: the guard's path
    does, with DATA_INTEGRITY for that field and the rest of the page intact."""
    move_email(appliance, world)
    who = world["callers"]["sales_manager"]
    before = lean.Counts.answered
    compiled, ordinary = _both(appliance, who, BENCH, world["docs"][BENCH], {})
    assert lean.Counts.answered == before
    assert compiled == ordinary and b"DATA_INTEGRITY" in compiled
    assert compiled.count(b"DATA_INTEGRITY") == 1


def test_a_policy_change_made_by_another_process_applies_to_the_next_request(
        appliance: Appliance, world: dict[str, Any], settings: Any) -> None:
    who = world["callers"]["sales_manager"]
    doc_id = world["docs"][BENCH]
    assert b"@example.org" in _post(who, doc_id).content  # emails readable, and kept opened
    email = OBJECTS["contact"].field("email").classification.policy_name
    other = Appliance.open(settings)  # another worker's view of the same database
    try:
        with unit_of_work(other, operator("admin")) as ctx:
            policies.revoke(ctx, Rule("sales_manager", "contact", email, "read"))
    finally:
        other.close()
    before = lean.Counts.answered
    answer = _post(who, doc_id)
    assert lean.Counts.answered == before  # this process had not loaded that policy
    assert b"@example.org" not in answer.content
    compiled, ordinary = _both(appliance, who, BENCH, doc_id, {})
    assert compiled == ordinary


def test_a_revoked_client_is_refused_at_once(appliance: Appliance,
                                             world: dict[str, Any]) -> None:
    who = world["callers"]["sales_manager"]
    doc_id = world["docs"][BENCH]
    before = lean.Counts.answered
    assert _post(who, doc_id).status_code == 200
    assert lean.Counts.answered == before + 1
    with unit_of_work(appliance, operator("admin")) as ctx:
        clients.revoke_client(ctx, who.client_id)
    refused = _post(who, doc_id)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert lean.Counts.answered == before + 1


def test_a_document_unbound_from_the_client_is_refused_and_audited(
        appliance: Appliance, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(appliance, "settings",
                        dataclasses.replace(appliance.settings, documents="trusted"))
    who = world["callers"]["sales_manager"]
    doc_id = world["docs"][BENCH]
    assert _post(who, doc_id).status_code == 200
    with unit_of_work(appliance, operator("admin")) as ctx:
        documents.remove_document(ctx, doc_id, client=who.client_id)
    refused = _post(who, doc_id).json()
    assert refused["data"] is None
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert json.loads(_entries(appliance, "document.refused")[-1].object_ids) == [doc_id]
    with unit_of_work(appliance, operator("admin")) as ctx:
        documents.remove_document(ctx, doc_id)
    gone = _post(world["callers"]["sales_rep"], doc_id).json()
    assert gone["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


def test_no_answer_leaves_before_its_audit_entry_is_written(appliance: Appliance,
                                                           world: dict[str, Any]) -> None:
    """With the audit log refusing writes, the page is not sent: 503, no data; once the log
    takes writes again, reads are answered and the chain still verifies."""
    who = world["callers"]["sales_manager"]
    doc_id = world["docs"][BENCH]
    assert _post(who, doc_id).status_code == 200  # the lane is warm: the next one is its
    with appliance.engine.begin() as connection:
        connection.execute(text(
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit log unavailable'; END $$"))
        connection.execute(text("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
                                "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"))
    reads = len(_entries(appliance, "contact.read"))
    failed = _post(who, doc_id)
    assert failed.status_code == 503 and b"@example.org" not in failed.content
    assert failed.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    with appliance.engine.begin() as connection:
        connection.execute(text("DROP TRIGGER refuse_audit ON audit_events"))
    assert _post(who, doc_id).status_code == 200
    assert len(_entries(appliance, "contact.read")) == reads + 1
    with appliance.sessions() as session:
        report = audit.verify(session, appliance.keyring)
    assert report.problem is None, report.problem


def test_a_lost_connection_falls_back_and_the_lane_recovers(appliance: Appliance,
                                                           world: dict[str, Any]) -> None:
    who = world["callers"]["sales_manager"]
    doc_id = world["docs"][BENCH]
    expected = _post(who, doc_id).content
    assert appliance.raw_connections is not None
    with appliance.engine.begin() as connection:  # the server drops every other session
        connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    before = lean.Counts.answered
    assert _post(who, doc_id).content == expected  # answered the usual way
    assert _post(who, doc_id).content == expected
    assert lean.Counts.answered >= before + 1  # and the lane again, on a new connection


def test_a_connection_in_a_state_asyncpg_refuses_falls_back(
        appliance: Appliance, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection the server terminated while it sat idle can fail its next statement with
    asyncpg's InternalClientError (seen once in this test file's run): the read is answered
    the usual way, the connection dropped, and the next read takes the lane again."""
    who = world["callers"]["sales_manager"]
    doc_id = world["docs"][BENCH]
    expected = _post(who, doc_id).content
    real = asyncpg.Connection.fetch
    broken = {"once": True}

    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if broken.pop("once", False):
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "fetch", fetch)
    before = lean.Counts.answered
    answer = _post(who, doc_id)
    assert answer.status_code == 200 and answer.content == expected
    assert lean.Counts.answered == before  # answered the usual way
    assert _post(who, doc_id).content == expected
    assert lean.Counts.answered == before + 1


def test_the_lean_connections_only_read(appliance: Appliance) -> None:
    assert appliance.raw_connections is not None
    connections = appliance.raw_connections

    async def write() -> None:
        connection = await connections.get()
        try:
            await connection.execute("UPDATE settings SET value = value")
        finally:
            await connection.close()

    with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
        asyncio.run(write())


def test_concurrent_reads_are_each_audited_in_batches(appliance: Appliance,
                                                      world: dict[str, Any]) -> None:
    """Twenty reads at once on one event loop: every one answered, every one audited (its own
    entry, its own request id), fewer commits than reads, and the log still verifies."""
    who = world["callers"]["sales_manager"]
    doc_id = world["docs"][BENCH]
    app = create_app(appliance)
    before = len(_entries(appliance, "contact.read"))
    writer = appliance.audit_writer
    batches = appliance.audit_group.batches + writer.statement_batches
    statements = writer.statement_batches
    answered = lean.Counts.answered

    async def many() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            await client.post("/graphql", json={"documentId": doc_id},
                              headers={"Authorization": f"Bearer {who.token}"})
            return list(await asyncio.gather(*(
                client.post("/graphql", json={"documentId": doc_id},
                            headers={"Authorization": f"Bearer {who.token}"})
                for _ in range(20))))

    responses = asyncio.run(many())
    assert all(r.status_code == 200 and b"errors" not in r.content for r in responses)
    assert lean.Counts.answered == answered + 21
    entries = _entries(appliance, "contact.read")[before:]
    assert len(entries) == 21
    assert {r.headers["x-request-id"] for r in responses} <= {e.request_id for e in entries}
    assert appliance.audit_group.batches + writer.statement_batches - batches < 21
    assert writer.statement_batches > statements  # in one statement each, on the loop
    with appliance.sessions() as session:
        assert audit.verify(session, appliance.keyring).problem is None


def test_every_role_the_lane_answers_matches_the_ordinary_path_with_accounts_hidden(
        appliance: Appliance, world: dict[str, Any]) -> None:
    """Each caller whose page the lane takes gets the ordinary path's bytes, and the sales
    manager's page holds a contact with no account and one whose account has moved to another
    team (outside the caller's records): both read null."""
    moved = world["ids"]["account"][0]  # east's first account: some east contacts point to it
    with appliance.engine.begin() as connection:
        connection.execute(text("UPDATE accounts SET team = 'west' WHERE id = :id"),
                           {"id": moved})
    by_lane = {}
    for role, who in world["callers"].items():
        for variables in ({}, {"first": 3}):
            before = lean.Counts.answered
            compiled, ordinary = _both(appliance, who, BENCH, world["docs"][BENCH], variables)
            assert compiled == ordinary, role
            if lean.Counts.answered == before + 1 and not variables:
                by_lane[role] = json.loads(compiled)["data"]["contacts"]["edges"]
    assert {"sales_manager", "sales_rep"} <= set(by_lane)
    nodes = [edge["node"] for edge in by_lane["sales_manager"]]
    assert sum(node["account"] is None for node in nodes) >= 2
    assert moved not in {node["account"]["id"] for node in nodes if node["account"]}
    assert any(node["account"] for node in nodes)
