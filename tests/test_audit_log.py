"""Attacks on the audit log: what gets recorded, who may read it, and tampering with it.

Tampering is done the way an attacker with database superuser rights would: the append-only
triggers refuse a plain UPDATE or DELETE, so they are bypassed (SQLite: dropped; PostgreSQL:
`session_replication_role = replica` or `ALTER TABLE ... DISABLE TRIGGER ALL`), the rows are
changed, and `security.audit.verify` must name the first entry that no longer matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError

from schema.context import RequestContext, unit_of_work
from schema.ops import audit_log
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance
from security import audit, audit_statement, checkpoint_note, merkle
from security.errors import Forbidden
from security.principal import Principal
from storage.models import AuditEvent, AuditHead, Contact

TEAM = "east"


def principal(*roles: str, team: str | None = None, id: str = "audit-tester") -> Principal:
    return Principal(id=id, name=id, roles=roles, team=team, kind="operator")


def seed_contacts(appliance: Appliance, n: int, *, team: str = TEAM,
                  prefix: str = "Seed") -> list[str]:
    """n contacts, each created in its own unit of work (one audit entry each)."""
    ids = []
    for i in range(n):
        with unit_of_work(appliance, principal("sales_manager", team=team, id=f"mgr-{team}")) \
                as ctx:
            row = contact_ops.create_contact(ctx, {
                "last_name": f"{prefix}{i}", "email": f"{prefix.lower()}{i}@example.com",
                "phone": f"+1 555 01{i:02d}", "national_id": f"NI-{prefix}-{i}"})
            ids.append(row.id)
    return ids


def events(appliance: Appliance, after: int = 0) -> list[AuditEvent]:
    with appliance.sessions() as session:
        return list(session.scalars(
            select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq)))


def last_seq(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.max(AuditEvent.seq))) or 0)


def verify(appliance: Appliance) -> audit.VerifyReport:
    with appliance.sessions() as session:
        return audit.verify(session, appliance.keyring)


def gql_raw(caller_: Any, query: str, variables: dict[str, Any] | None = None, *,
            status: int = 200) -> tuple[dict[str, Any], str]:
    response = caller_.http.post("/graphql", json={"query": query, "variables": variables or {}},
                                 headers={"Authorization": f"Bearer {caller_.token}"})
    assert response.status_code == status, response.text
    return response.json(), response.headers["x-request-id"]


def no_data(body: dict[str, Any]) -> bool:
    """Nothing came back: `data` is null, or (nullable root fields) every root field is."""
    data = body.get("data")
    return data is None or all(value is None for value in data.values())


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors") or []]


# -- 1. what gets recorded ---------------------------------------------------------------------

def test_a_list_read_is_one_entry_naming_every_record(appliance: Appliance, caller: Any) -> None:
    east = seed_contacts(appliance, 5)
    seed_contacts(appliance, 2, team="west", prefix="West")
    manager = caller("sales_manager", team=TEAM)
    query = "{ contacts(first: 50) { edges { node { id email phone } } } }"

    for _ in range(2):  # one entry per request, every time
        before = last_seq(appliance)
        body, request_id = gql_raw(manager, query)
        assert "errors" not in body, body
        nodes = [e["node"] for e in body["data"]["contacts"]["edges"]]
        assert sorted(n["id"] for n in nodes) == sorted(east)
        new = events(appliance, before)
        assert len(new) == 1, [(e.action, e.object_ids) for e in new]
        entry = new[0]
        assert entry.action == "contact.read" and entry.object_type == "contact"
        assert entry.decision == "allow" and entry.reason is None
        ids = json.loads(entry.object_ids)
        assert len(ids) == 5 and set(ids) == set(east)
        assert sorted(json.loads(entry.fields)) == ["email", "phone"]
        assert entry.actor == f"client:{manager.client_id}"
        assert json.loads(entry.roles) == ["sales_manager"]
        assert entry.request_id == request_id
        # The log records who read what, never the values read.
        row_text = json.dumps([entry.object_ids, entry.fields, entry.reason])
        assert not any(n["email"] in row_text or n["phone"] in row_text for n in nodes)

    # A read that touches no personal field (ids only) writes nothing.
    before = last_seq(appliance)
    body, _ = gql_raw(manager, "{ contacts(first: 50) { edges { node { id title } } } }")
    assert "errors" not in body
    assert events(appliance, before) == []


def test_a_refused_field_is_audited_as_a_denial(appliance: Appliance, caller: Any) -> None:
    east = seed_contacts(appliance, 3)
    rep = caller("sales_rep", team=TEAM)
    before = last_seq(appliance)
    body, request_id = gql_raw(rep, "{ contacts { edges { node { id lastName nationalId } } } }")
    assert {tuple(e["path"][-1:]) for e in body["errors"]} == {("nationalId",)}
    assert codes(body) == ["FORBIDDEN"] * 3
    new = events(appliance, before)
    by_action = {e.action: e for e in new}
    assert sorted(by_action) == ["contact.read", "contact.refused"], [e.action for e in new]
    read, refused = by_action["contact.read"], by_action["contact.refused"]
    assert json.loads(read.fields) == ["last_name"]
    assert set(json.loads(read.object_ids)) == set(east)
    assert refused.decision == "deny"
    assert refused.reason and "national_id" in refused.reason
    assert json.loads(refused.fields) == ["national_id"]
    assert set(json.loads(refused.object_ids)) == set(east)
    assert {read.request_id, refused.request_id} == {request_id}
    assert refused.actor == f"client:{rep.client_id}"


CREATE = "mutation($input: ContactInput!) { createContact(input: $input) { id } }"
UPDATE = ("mutation($id: ID!, $input: ContactPatch!) "
          "{ updateContact(id: $id, input: $input) { id } }")
DELETE = "mutation($id: ID!) { deleteContact(id: $id) { id } }"


def test_every_write_is_one_entry(appliance: Appliance, caller: Any) -> None:
    manager = caller("sales_manager", team=TEAM)
    actor = f"client:{manager.client_id}"

    def one_entry(query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], AuditEvent]:
        before = last_seq(appliance)
        body, request_id = gql_raw(manager, query, variables)
        assert "errors" not in body, body
        new = events(appliance, before)
        assert len(new) == 1, [e.action for e in new]
        assert new[0].actor == actor and new[0].request_id == request_id
        return body, new[0]

    body, created = one_entry(CREATE, {"input": {"lastName": "Writer",
                                                 "email": "writer@example.com"}})
    contact_id = body["data"]["createContact"]["id"]
    assert created.action == "contact.create"
    assert json.loads(created.object_ids) == [contact_id]
    assert sorted(json.loads(created.fields)) == ["email", "last_name"]
    assert "writer@example.com" not in created.fields

    _, updated = one_entry(UPDATE, {"id": contact_id, "input": {"title": "Boss"}})
    assert updated.action == "contact.update"
    assert (json.loads(updated.object_ids), json.loads(updated.fields)) == ([contact_id],
                                                                            ["title"])
    _, deleted = one_entry(DELETE, {"id": contact_id})
    assert deleted.action == "contact.delete"
    assert json.loads(deleted.object_ids) == [contact_id]
    assert verify(appliance).ok


def test_a_write_and_its_entry_commit_or_fail_together(appliance: Appliance, caller: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    manager = caller("sales_manager", team=TEAM)

    def contact_count() -> int:
        with appliance.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(Contact)) or 0)

    start_contacts = contact_count()

    # (a) The entry cannot be written: the contact is not written either.
    real_append = audit.append

    def failing_append(session: Any, entries: Any, **kwargs: Any) -> list[int]:
        entries = list(entries)
        if any(e.action == "contact.create" for e in entries):
            raise RuntimeError("audit storage failed")
        return real_append(session, entries, **kwargs)

    real_statement = audit_statement.append_in_transaction

    def failing_statement(session: Any, entries: Any) -> list[int] | None:
        if any(e.action == "contact.create" for e in entries):
            raise RuntimeError("audit storage failed")
        return real_statement(session, entries)

    monkeypatch.setattr(audit, "append", failing_append)
    monkeypatch.setattr(audit_statement, "append_in_transaction", failing_statement)
    before = last_seq(appliance)
    # The unit's entries are appended as it commits, so this is a failure to commit: the
    # answer says the request could not be completed, as for any storage failure then.
    body, _ = gql_raw(manager, CREATE, {"input": {"lastName": "Ghost"}}, status=503)
    assert codes(body) == ["UNAVAILABLE"], body
    assert contact_count() == start_contacts
    assert not [e for e in events(appliance, before) if e.action == "contact.create"]
    monkeypatch.undo()

    # (b) The write fails after its entry was appended: the entry goes with it, and the chain
    # (head included) stays whole for the next writer.
    real_append_audit = Appliance.append_audit

    def append_then_fail(self: Appliance, session: Any, entries: list[Any]) -> list[int]:
        seqs = real_append_audit(self, session, entries)
        if any(e.action == "contact.create" for e in entries):
            raise RuntimeError("the commit failed after the entry was written")
        return seqs

    # Make the doomed entry land exactly where the next checkpoint is due, so the rolled-back
    # savepoint also holds a freshly signed checkpoint.
    def checkpoint_due() -> int:
        with appliance.sessions() as session:
            head = session.get(AuditHead, 1)
            assert head is not None
            return int(head.checkpoint_due)

    padding = checkpoint_due() - 1 - last_seq(appliance)
    assert padding >= 0
    seed_contacts(appliance, padding, prefix="Pad")
    start_contacts += padding
    boundary = last_seq(appliance) + 1
    assert boundary == checkpoint_due()

    def checkpoint_seqs() -> list[int]:
        with appliance.sessions() as session:
            return list(session.scalars(select(audit.AuditCheckpoint.seq)))

    monkeypatch.setattr(Appliance, "append_audit", append_then_fail)
    for i in range(2):
        body, _ = gql_raw(manager, CREATE, {"input": {"lastName": f"Phantom{i}"}}, status=503)
        assert codes(body) == ["UNAVAILABLE"], body
    assert contact_count() == start_contacts
    assert last_seq(appliance) == boundary - 1
    assert boundary not in checkpoint_seqs()
    monkeypatch.setattr(Appliance, "append_audit", real_append_audit)
    report = verify(appliance)
    assert report.ok, report

    # And a write that succeeds carries its entry (and the checkpoint at the boundary).
    before = last_seq(appliance)
    body, _ = gql_raw(manager, CREATE, {"input": {"lastName": "Real"}})
    assert "errors" not in body, body
    new = events(appliance, before)
    assert [(e.seq, e.action) for e in new] == [(boundary, "contact.create")]
    assert boundary in checkpoint_seqs()
    assert contact_count() == start_contacts + 1
    report = verify(appliance)
    assert report.ok and report.last_checkpoint == boundary, report


def test_a_mutation_undone_by_its_savepoint_leaves_no_entry(
        appliance: Appliance, caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three mutations in one request; the second fails after recording its entry (in
    `emit`, which comes after `audit`): its contact and its entry go, the others' stay, in
    order, and the chain verifies."""
    manager = caller("sales_manager", team=TEAM)
    real_emit = RequestContext.emit
    calls = []

    def emit_failing_second(self: RequestContext, event: str, object_type: str,
                            record_id: str) -> None:
        calls.append(record_id)
        if len(calls) == 2:
            raise RuntimeError("the second mutation fails after its entry was recorded")
        real_emit(self, event, object_type, record_id)

    monkeypatch.setattr(RequestContext, "emit", emit_failing_second)
    before = last_seq(appliance)
    body, request_id = gql_raw(manager, 'mutation { a: createContact(input: {lastName: "A"}) '
                                        '{ id } b: createContact(input: {lastName: "B"}) { id } '
                                        'c: createContact(input: {lastName: "C"}) { id } }')
    assert codes(body) == ["INTERNAL"] and body["data"]["b"] is None, body
    kept = [body["data"]["a"]["id"], body["data"]["c"]["id"]]
    new = [e for e in events(appliance, before) if e.request_id == request_id]
    assert [(e.action, json.loads(e.object_ids)) for e in new] == [
        ("contact.create", [kept[0]]), ("contact.create", [kept[1]])]
    assert calls[1] not in {i for e in events(appliance, before)
                            for i in json.loads(e.object_ids)}
    assert verify(appliance).ok


def test_the_log_head_is_free_while_a_mutation_runs(appliance: Appliance, caller: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A write locks the log's head row from its append to its commit only: while its
    operation is still running (after recording its entry), another writer can lock the head
    at once. Appending at the call held the lock through the rest of the request, and every
    writer of every worker queued behind it."""
    if appliance.engine.dialect.name != "postgresql":
        pytest.skip("row locks (SQLite locks the whole database for a writer)")
    manager = caller("sales_manager", team=TEAM)
    real_emit = RequestContext.emit
    seen: list[str] = []

    def emit_and_lock_the_head(self: RequestContext, event: str, object_type: str,
                               record_id: str) -> None:
        with appliance.engine.connect() as other:
            try:
                other.execute(text("SELECT seq FROM audit_head WHERE id = 1 "
                                   "FOR UPDATE NOWAIT"))
                seen.append("free")
            except DBAPIError:
                seen.append("locked")
            other.rollback()
        real_emit(self, event, object_type, record_id)

    monkeypatch.setattr(RequestContext, "emit", emit_and_lock_the_head)
    before = last_seq(appliance)
    body, _ = gql_raw(manager, CREATE, {"input": {"lastName": "Concurrent"}})
    assert "errors" not in body, body
    assert seen == ["free"]
    assert [e.action for e in events(appliance, before)] == ["contact.create"]
    assert verify(appliance).ok


# -- 2. reading the log over GraphQL -----------------------------------------------------------

AUDIT_QUERY = """
query($first: Int, $after: String, $filter: AuditEventFilter) {
  auditEvents(first: $first, after: $after, filter: $filter) {
    edges { cursor node { seq action actor decision reason objectIds fields hash prevHash } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


def test_audit_events_are_for_security_officers_only(appliance: Appliance, caller: Any) -> None:
    seed_contacts(appliance, 4)
    officer = caller("security_officer")
    for intruder in (caller("sales_manager", team=TEAM), caller("admin"),
                     caller("support_agent", team=TEAM)):
        body, _ = gql_raw(intruder, AUDIT_QUERY, {"first": 5})
        assert codes(body) == ["FORBIDDEN"], body
        assert no_data(body)
        refusal = events(appliance, last_seq(appliance) - 1)[0]
        assert (refusal.action, refusal.decision, refusal.actor) == (
            "audit.refused", "deny", f"client:{intruder.client_id}")
        # ...nor through the verification operation.
        with unit_of_work(appliance, principal(*intruder.roles)) as ctx, \
                pytest.raises(Forbidden):
            audit_log.verify(ctx)

    # Paging: three at a time, following endCursor, covers the whole log once, in order.
    known = last_seq(appliance)
    seen: list[int] = []
    after = None
    pages = 0
    while True:
        body, _ = gql_raw(officer, AUDIT_QUERY, {"first": 3, "after": after})
        assert "errors" not in body, body
        connection = body["data"]["auditEvents"]
        batch = [e["node"]["seq"] for e in connection["edges"]]
        assert len(batch) <= 3
        seen += batch
        pages += 1
        if not connection["pageInfo"]["hasNextPage"]:
            break
        assert len(batch) == 3
        after = connection["pageInfo"]["endCursor"]
        assert after == connection["edges"][-1]["cursor"]
    assert pages >= 3
    assert seen == list(range(1, len(seen) + 1)) and seen[-1] >= known
    stored = {e.seq: e for e in events(appliance)}
    assert seen == sorted(s for s in stored if s <= seen[-1])
    # The nodes are the stored rows.
    body, _ = gql_raw(officer, AUDIT_QUERY, {"first": 2})
    for edge in body["data"]["auditEvents"]["edges"]:
        node, row = edge["node"], stored[edge["node"]["seq"]]
        assert (node["action"], node["hash"], node["prevHash"]) == (row.action, row.hash,
                                                                    row.prev_hash)

    # Filters.
    for flt, expected in (
        ({"action": "contact.create"}, [e.seq for e in stored.values()
                                        if e.action == "contact.create"]),
        ({"decision": "deny"}, [e.seq for e in stored.values() if e.decision == "deny"]),
        ({"action": "audit.refused", "actor": f"client:{officer.client_id}"}, []),
    ):
        body, _ = gql_raw(officer, AUDIT_QUERY, {"first": 100, "filter": flt})
        assert "errors" not in body, body
        nodes = [e["node"] for e in body["data"]["auditEvents"]["edges"]]
        assert [n["seq"] for n in nodes] == sorted(expected), flt
        for key, value in flt.items():
            assert all(n[key] == value for n in nodes)
    assert len([s for s in stored.values() if s.action == "contact.create"]) == 4
    assert len([s for s in stored.values() if s.decision == "deny"]) >= 3
    contact_id = json.loads(next(e for e in stored.values()
                                 if e.action == "contact.create").object_ids)[0]
    body, _ = gql_raw(officer, AUDIT_QUERY, {"filter": {"objectId": contact_id}})
    assert [e["node"]["action"] for e in body["data"]["auditEvents"]["edges"]] == \
        ["contact.create"]

    # A cursor that was not given out is refused.
    body, _ = gql_raw(officer, AUDIT_QUERY, {"after": "bm9wZQ=="})
    assert codes(body) == ["BAD_USER_INPUT"], body

    # The officer may verify the log; it is intact.
    with unit_of_work(appliance, principal("security_officer")) as ctx:
        report = audit_log.verify(ctx)
    assert report.ok and report.entries == last_seq(appliance)


# -- 3. tampering --------------------------------------------------------------------------------

AUDIT_TABLES = ("audit_events", "audit_checkpoints", "audit_head")


def dump(appliance: Appliance) -> dict[str, list[dict[str, Any]]]:
    with appliance.engine.connect() as conn:
        order = {"audit_events": "seq", "audit_checkpoints": "seq", "audit_head": "id"}
        return {t: [dict(r) for r in conn.execute(text(
            f"SELECT * FROM {t} ORDER BY {order[t]}")).mappings()] for t in AUDIT_TABLES}


@contextmanager
def as_superuser(appliance: Appliance, method: str) -> Iterator[Connection]:
    """A transaction in which the append-only triggers no longer fire."""
    with appliance.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            triggers = conn.execute(text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                "AND tbl_name IN ('audit_events', 'audit_checkpoints')")).all()
            assert {name for name, _ in triggers} >= {"audit_events_no_update",
                                                      "audit_events_no_delete"}
            for name, _ in triggers:
                conn.execute(text(f"DROP TRIGGER {name}"))
            yield conn
            for _, sql in triggers:  # put them back, for the next attack
                conn.execute(text(sql))
        elif method == "replica":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            yield conn
        else:
            for table in ("audit_events", "audit_checkpoints"):
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER ALL"))
            yield conn
            for table in ("audit_events", "audit_checkpoints"):
                conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER ALL"))


def restore(appliance: Appliance, saved: dict[str, list[dict[str, Any]]]) -> None:
    with as_superuser(appliance, "replica") as conn:
        for table in AUDIT_TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
            if saved[table]:
                columns = list(saved[table][0])
                conn.execute(text(
                    f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join(':' + c for c in columns)})"), saved[table])
    assert dump(appliance) == saved


def row_hash(conn: Connection, seq: int) -> str:
    return str(conn.execute(text("SELECT hash FROM audit_events WHERE seq = :s"),
                            {"s": seq}).scalar_one())


def load_event(conn: Connection, seq: int) -> AuditEvent:
    row = conn.execute(text("SELECT * FROM audit_events WHERE seq = :s"), {"s": seq}).mappings() \
        .one()
    return AuditEvent(**dict(row))


def rechain(conn: Connection, start: int) -> None:
    """What a careful attacker does next: recompute every hash from `start` on, fix the head."""
    prev = row_hash(conn, start - 1) if start > 1 else audit.GENESIS_HASH
    seqs = list(conn.execute(text("SELECT seq FROM audit_events WHERE seq >= :s ORDER BY seq"),
                             {"s": start}).scalars())
    for seq in seqs:
        event = load_event(conn, seq)
        event.prev_hash = prev
        event.hash = audit.entry_hash(event)
        event.leaf = audit.entry_leaf(event).hex()
        conn.execute(text("UPDATE audit_events SET prev_hash = :p, hash = :h, leaf = :l "
                          "WHERE seq = :s"),
                     {"p": event.prev_hash, "h": event.hash, "l": event.leaf, "s": seq})
        prev = event.hash
    top = conn.execute(text("SELECT max(seq) FROM audit_events")).scalar_one()
    conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"),
                 {"s": top, "h": prev})


def shift_up(conn: Connection, start: int) -> None:
    """Renumber entries from `start` on one place up (in two steps: seq is the primary key)."""
    conn.execute(text("UPDATE audit_events SET seq = seq + 1000000 WHERE seq >= :s"),
                 {"s": start})
    conn.execute(text("UPDATE audit_events SET seq = seq - 999999 WHERE seq >= 1000000"))


def insert_forged(conn: Connection, seq: int) -> None:
    forged = load_event(conn, seq - 1)
    forged.seq = seq
    forged.actor = "client:nobody"
    forged.action = "contact.read"
    forged.object_ids = json.dumps(["00000000-0000-7000-8000-000000000000"])
    forged.prev_hash = row_hash(conn, seq - 1)
    forged.hash = audit.entry_hash(forged)
    forged.leaf = audit.entry_leaf(forged).hex()
    columns = [c.name for c in AuditEvent.__table__.columns]
    conn.execute(text(f"INSERT INTO audit_events ({', '.join(columns)}) "
                      f"VALUES ({', '.join(':' + c for c in columns)})"),
                 {c: getattr(forged, c) for c in columns})


def resign(conn: Connection, seq: int, key: Ed25519PrivateKey) -> None:
    """Replace checkpoint `seq` with a well-formed note for the log as it now stands (the Merkle
    root of entries 1..seq), signed with `key` under the log's own name."""
    checkpoint = conn.execute(text("SELECT ts, next_due, signature FROM audit_checkpoints "
                                   "WHERE seq = :s"), {"s": seq}).one()
    name = checkpoint_note.signature_name(checkpoint.signature)
    assert name is not None and name.startswith("enclave/")
    root = merkle.root(audit.entry_leaf(load_event(conn, s)) for s in range(1, seq + 1))
    body = checkpoint_note.body(name, seq, root, checkpoint.ts, checkpoint.next_due)
    conn.execute(text("UPDATE audit_checkpoints SET hash = :h, signature = :sig WHERE seq = :s"),
                 {"h": root.hex(), "sig": checkpoint_note.sign(body, name, key), "s": seq})


def test_an_intact_log_verifies(appliance: Appliance) -> None:
    seed_contacts(appliance, 20)
    report = verify(appliance)
    n = last_seq(appliance)
    assert report.ok and report.first_bad_seq is None and report.problem is None
    assert report.entries == n >= 22
    with appliance.sessions() as session:
        checkpoints = sorted(session.scalars(select(audit.AuditCheckpoint.seq)))
    assert report.checkpoints == len(checkpoints) >= 2
    assert report.last_checkpoint == checkpoints[-1]
    # The first append is signed at once; then, with one entry per unit of work, every 8th.
    assert all(b - a == 8 for a, b in zip(checkpoints, checkpoints[1:], strict=False))


def test_tampering_is_caught_and_located(appliance: Appliance) -> None:
    seed_contacts(appliance, 30)
    original = dump(appliance)
    n = len(original["audit_events"])
    checkpoints = [c["seq"] for c in original["audit_checkpoints"]]
    assert len(checkpoints) >= 3, checkpoints
    c0, c1, c2 = checkpoints[:3]
    m = c1 - 3  # a middle entry, between two signed checkpoints
    assert c0 < m < m + 2 < c1 < c2 < n
    assert verify(appliance).ok
    attacker_key = Ed25519PrivateKey.generate()

    def edit(conn: Connection) -> None:
        conn.execute(text("UPDATE audit_events SET actor = 'client:someone-else' "
                          "WHERE seq = :m"), {"m": m})

    def corrupt(conn: Connection) -> None:
        # Not even valid JSON any more: verify must still name the entry, not crash.
        conn.execute(text("UPDATE audit_events SET object_ids = 'not json' WHERE seq = :m"),
                     {"m": m})

    def delete(conn: Connection) -> None:
        conn.execute(text("DELETE FROM audit_events WHERE seq = :m"), {"m": m})

    def reorder(conn: Connection) -> None:
        a, b = m, m + 2
        conn.execute(text("UPDATE audit_events SET seq = -1 WHERE seq = :a"), {"a": a})
        conn.execute(text("UPDATE audit_events SET seq = :a WHERE seq = :b"), {"a": a, "b": b})
        conn.execute(text("UPDATE audit_events SET seq = :b WHERE seq = -1"), {"b": b})

    def insert(conn: Connection) -> None:
        shift_up(conn, m)
        insert_forged(conn, m)
        conn.execute(text("UPDATE audit_head SET seq = seq + 1 WHERE id = 1"))

    def insert_and_rechain(conn: Connection) -> None:
        shift_up(conn, m)
        insert_forged(conn, m)
        rechain(conn, m + 1)

    def edit_and_rechain(conn: Connection) -> None:
        edit(conn)
        rechain(conn, m)

    def truncate(conn: Connection) -> None:
        cut = c2 - 2
        conn.execute(text("DELETE FROM audit_events WHERE seq >= :c"), {"c": cut})
        conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"),
                     {"s": cut - 1, "h": row_hash(conn, cut - 1)})

    def forge_signature(conn: Connection) -> None:
        resign(conn, c1, attacker_key)

    def rewrite_and_forge_checkpoints(conn: Connection) -> None:
        edit(conn)
        rechain(conn, m)
        for c in (c1, c2):
            resign(conn, c, attacker_key)

    def swap_leaf(conn: Connection) -> None:
        # What the next checkpoint is signed from, pointed at another entry's leaf.
        conn.execute(text("UPDATE audit_events SET leaf = (SELECT leaf FROM audit_events "
                          "WHERE seq = :o) WHERE seq = :m"), {"o": m + 1, "m": m})

    def unknown_signing_key(conn: Connection) -> None:
        conn.execute(text("UPDATE audit_checkpoints SET key_version = 99 WHERE seq = :c"),
                     {"c": c1})

    # (attack, expected first bad entry, words in the problem)
    attacks: list[tuple[Callable[[Connection], None], int, str]] = [
        (edit, m, "altered"),
        (corrupt, m, "altered"),
        (delete, m, "missing"),
        (reorder, m, "does not follow"),
        (insert, m + 1, "does not follow"),  # the forged row chains; the next one cannot
        (insert_and_rechain, c0 + 1, "checkpoint"),  # caught by the next signed checkpoint
        (edit_and_rechain, c0 + 1, "differs from its signed checkpoint"),
        (truncate, c2 - 2, "signed checkpoint"),
        (forge_signature, c0 + 1, "bad signature"),
        (rewrite_and_forge_checkpoints, c0 + 1, "bad signature"),
        (unknown_signing_key, c0 + 1, "unknown signing key"),
        (swap_leaf, m, "stored leaf"),
    ]
    for number, (attack, first_bad, words) in enumerate(attacks):
        name = attack.__name__
        # The database refuses the attack as a plain UPDATE/DELETE and nothing changes.
        with pytest.raises(DBAPIError, match="append-only"), appliance.engine.begin() as conn:
            attack(conn)
        assert dump(appliance) == original, name
        assert verify(appliance).ok, name
        # Someone who can switch the triggers off gets further -- and is caught.
        with as_superuser(appliance, "replica" if number % 2 else "disable") as conn:
            attack(conn)
        assert dump(appliance) != original, name
        report = verify(appliance)
        assert not report.ok, name
        assert report.first_bad_seq == first_bad, (name, report)
        assert report.problem and words in report.problem, (name, report.problem)
        restore(appliance, original)
        assert verify(appliance).ok, name
    # The triggers are back in force after all that.
    with pytest.raises(DBAPIError, match="append-only"), appliance.engine.begin() as conn:
        delete(conn)


def test_rewriting_and_deleting_the_later_checkpoints_is_caught(appliance: Appliance) -> None:
    seed_contacts(appliance, 30)
    with appliance.sessions() as session:
        checkpoints = sorted(session.scalars(select(audit.AuditCheckpoint.seq)))
    m = checkpoints[1] - 3
    with as_superuser(appliance, "replica") as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'client:someone-else' "
                          "WHERE seq = :m"), {"m": m})
        rechain(conn, m)
        conn.execute(text("DELETE FROM audit_checkpoints WHERE seq >= :m"), {"m": m})
    report = verify(appliance)
    assert not report.ok, report
    assert report.first_bad_seq == checkpoints[0] + 1, report


def test_checkpoints_signed_from_stored_leaves_sign_the_tree_of_the_entries(
        appliance: Appliance) -> None:
    """Checkpoints are grown from the leaves the appenders stored; the roots they sign are the
    roots of the entries' own canonical bytes, and entries from before leaves were stored
    (leaf NULL) are hashed from their columns."""
    seed_contacts(appliance, 5)
    with as_superuser(appliance, "disable") as conn:  # entries as migration 0007 finds them
        conn.execute(text("UPDATE audit_events SET leaf = NULL"))
    seed_contacts(appliance, 25)
    with appliance.sessions() as session:
        rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        checkpoints = list(session.scalars(select(audit.AuditCheckpoint)
                                           .order_by(audit.AuditCheckpoint.seq)))
    assert any(row.leaf is None for row in rows) and any(row.leaf for row in rows)
    assert len(checkpoints) >= 3
    leaves = [audit.entry_leaf(row) for row in rows]
    for checkpoint in checkpoints:
        assert checkpoint.hash == merkle.root(leaves[:checkpoint.seq]).hex(), checkpoint.seq
    assert verify(appliance).ok
