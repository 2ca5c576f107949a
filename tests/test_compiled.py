"""The compiled path answers byte for byte as the ordinary executor does (issue 7).

Every registered document of this module, every built-in role, on SQLite and PostgreSQL: the
same document is sent once by `documentId` (compiled) and once as a query string (strawberry's
executor), and the two response bodies must be the same bytes, with the same audit entries.
Variables (page sizes, cursors good and bad, filters) come from hypothesis.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from schema.compiled.cache import PLANS
from schema.context import unit_of_work
from schema.graphql import execution
from schema.ops import accounts as account_ops
from schema.ops import contacts as contact_ops
from schema.ops import documents
from schema.ops.validation import encode_cursor
from schema.runtime import Appliance
from security.default_policy import ROLES
from storage.models import AuditEvent
from tests.conftest import operator

NODE = ("id firstName lastName title email phone address birthDate nationalId notes owner team "
        "createdAt updatedAt __typename")
ACCOUNT = "id name industry website owner team createdAt updatedAt __typename"

DOCUMENTS = [
    # The benchmark query.
    "query { contacts(first: 50) { edges { node { id firstName lastName email phone title "
    "account { id name } } } } }",
    f"query Page($first: Int, $after: String) {{ contacts(first: $first, after: $after) {{ "
    f"__typename edges {{ __typename cursor node {{ {NODE} account {{ {ACCOUNT} }} }} }} "
    f"pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor __typename }} }} }}",
    "query Filtered($first: Int, $after: String, $filter: ContactFilter) { "
    "contacts(first: $first, after: $after, filter: $filter) { edges { cursor node { "
    "id mail: email nationalId birthDate who: owner account { name } } } "
    "pageInfo { endCursor hasNextPage } } }",
    "query One($id: ID!) { contact(id: $id) { id lastName email notes nationalId account { "
    "id name industry } } }",
    f"query Accounts($first: Int, $after: String) {{ accounts(first: $first, after: $after) {{ "
    f"edges {{ cursor node {{ {ACCOUNT} }} }} pageInfo {{ hasNextPage endCursor }} }} }}",
    "query Acc($id: ID!) { account(id: $id) { id name website } __typename }",
    "query Two($id: ID!) { a: account(id: $id) { name } c: contacts(first: 3) { edges { node "
    "{ lastName } } } n: accounts(first: 2) { edges { cursor } } }",
]
# Not compiled (fragments; a root the compiler does not know): still trusted, still equal.
FALLBACK = [
    "query { contacts(first: 5) { edges { node { ...C } } } } fragment C on Contact { id email }",
    "query { me { id } contacts(first: 2) { edges { cursor } } }",
]


def _seed(appliance: Appliance) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"account": [], "contact": [], "email": []}
    for team in ("east", "west"):
        with unit_of_work(appliance, operator("sales_manager", team=team, id=f"m-{team}")) as ctx:
            for i in range(3):
                account = account_ops.create_account(ctx, {"name": f"{team} Co {i}",
                                                           "industry": "retail",
                                                           "website": "https://example.com"})
                ids["account"].append(account.id)
        with unit_of_work(appliance, operator("sales_manager", team=team, id=f"r-{team}")) as ctx:
            for i in range(7):
                email = f"p{i}.{team}@example.org"
                contact = contact_ops.create_contact(ctx, {
                    "last_name": f"Person {i}", "first_name": "Sam", "title": "Buyer",
                    "email": email, "phone": f"+1 555 01{i:02d}",
                    "address": "1 Example Street", "birth_date": "1980-05-0" + str(i + 1),
                    "national_id": f"AB12345{i}" if i % 2 else None,
                    "notes": "synthetic" if i % 3 else None,
                    "account_id": ids["account"][-1 - (i % 3)] if i != 6 else None})
                ids["contact"].append(contact.id)
                ids["email"].append(email)
    return ids


@pytest.fixture
def world(appliance: Appliance, caller: Any) -> dict[str, Any]:
    return make_world(appliance, caller)


def make_world(appliance: Appliance, caller: Any) -> dict[str, Any]:
    """Seeded records, a caller per role, every document registered for all of them."""
    ids = _seed(appliance)
    callers = {role: caller(role, team="east") for role in ROLES}
    callers["sales_rep_nt"] = caller("sales_rep")  # no team
    with unit_of_work(appliance, operator("admin")) as ctx:
        registered = [documents.add_document(ctx, body, clients=[c.client_id for c in
                                                                 callers.values()],
                                             validate=execution.validate_document).id
                      for body in DOCUMENTS + FALLBACK]
    return {"ids": ids, "callers": callers, "docs": dict(zip(DOCUMENTS + FALLBACK, registered,
                                                             strict=True))}


def _audit_tail(appliance: Appliance, after: int) -> list[tuple[Any, ...]]:
    with appliance.sessions() as session:
        return [(e.action, e.object_type, e.object_ids, e.fields, e.decision, e.reason, e.actor)
                for e in session.scalars(select(AuditEvent).where(AuditEvent.seq > after)
                                         .order_by(AuditEvent.seq))]


def _last_seq(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc())
                                  .limit(1)) or 0)


def _both(appliance: Appliance, who: Any, body: str, doc_id: str,
          variables: dict[str, Any]) -> tuple[bytes, bytes]:
    headers = {"Authorization": f"Bearer {who.token}"}
    start = _last_seq(appliance)
    compiled = who.http.post("/graphql", json={"documentId": doc_id, "variables": variables},
                             headers=headers)
    middle = _last_seq(appliance)
    ordinary = who.http.post("/graphql", json={"query": body, "variables": variables},
                             headers=headers)
    assert compiled.status_code == ordinary.status_code == 200
    first, second = _audit_tail(appliance, start), _audit_tail(appliance, middle)
    assert first[:len(first) - len(second)] == second, (body, variables)
    return compiled.content, ordinary.content


def _variables(ids: dict[str, list[str]]) -> st.SearchStrategy[dict[str, Any]]:
    cursor = st.one_of(st.none(), st.sampled_from(ids["contact"] + ids["account"]).map(
        encode_cursor), st.text(max_size=12))
    record_id = st.one_of(st.sampled_from(ids["contact"] + ids["account"]),
                          st.just("00000000-0000-0000-0000-000000000000"), st.text(max_size=8))
    contact_filter = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "accountId": st.sampled_from(ids["account"]),
        "owner": st.sampled_from(["r-east", "r-west", "nobody"]),
        "email": st.one_of(st.sampled_from(ids["email"]), st.just("not-an-email")),
        "phone": st.just("+1 555 0101")}))
    return st.fixed_dictionaries({}, optional={
        "first": st.one_of(st.none(), st.integers(min_value=-1, max_value=120)),
        "after": cursor, "filter": contact_filter, "id": record_id})


def test_every_document_and_role_answers_the_same(appliance: Appliance,
                                                   world: dict[str, Any]) -> None:
    ids = world["ids"]
    for body, doc_id in world["docs"].items():
        for role, who in world["callers"].items():
            variables: dict[str, Any] = {"id": ids["contact"][0] if "One" in body
                                         else ids["account"][0]}
            a, b = _both(appliance, who, body, doc_id, variables)
            assert a == b, (role, body, a, b)
    # The compiled documents did compile; the fallbacks did not.
    schema = execution.schema_for(introspection=False)._schema
    for body, doc_id in world["docs"].items():
        plan = PLANS.get(schema, doc_id, body, None)
        assert (plan is not None) == (body in DOCUMENTS), body


def test_refusals_and_masks_come_out_the_same(appliance: Appliance,
                                              world: dict[str, Any]) -> None:
    """Roles that may not read some fields get nulls and FORBIDDEN errors: the same ones, in
    the same order, with the same paths; masked values the same."""
    body = DOCUMENTS[1]
    for role in ("support_agent", "marketing", "auditor", "sales_rep"):
        a, b = _both(appliance, world["callers"][role], body, world["docs"][body], {"first": 20})
        assert a == b
    # The attack shows something: some role is refused some field on this page.
    refused = world["callers"]["marketing"].http.post(
        "/graphql", json={"documentId": world["docs"][body]},
        headers={"Authorization": f"Bearer {world['callers']['marketing'].token}"}).json()
    assert refused.get("errors") and all(e["extensions"]["code"] in ("FORBIDDEN", "NOT_FOUND")
                                         for e in refused["errors"])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_variables_answer_the_same(appliance: Appliance, world: dict[str, Any],
                                             data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(DOCUMENTS))
    role = data.draw(st.sampled_from(sorted(world["callers"])))
    variables = data.draw(_variables(world["ids"]))
    if "$id" in body and "id" not in variables:
        variables["id"] = world["ids"]["contact"][0]
    a, b = _both(appliance, world["callers"][role], body, world["docs"][body], variables)
    assert a == b, (role, body, variables)


def test_a_policy_change_applies_to_the_next_compiled_request(appliance: Appliance,
                                                             world: dict[str, Any]) -> None:
    from schema.ops import policies
    from security.authz import Rule
    body = DOCUMENTS[1]
    who = world["callers"]["marketing"]

    def titles() -> tuple[list[Any], list[str]]:
        answer = who.http.post("/graphql", json={"documentId": world["docs"][body]},
                               headers={"Authorization": f"Bearer {who.token}"}).json()
        return ([e["node"]["title"] for e in answer["data"]["contacts"]["edges"]],
                [e["path"][-1] for e in answer.get("errors", [])])

    before, refused = titles()
    assert set(before) == {None} and "title" in refused
    with unit_of_work(appliance, operator("admin")) as ctx:
        policies.grant(ctx, Rule("marketing", "contact", "title", "read"))
    after, refused = titles()
    assert set(after) == {"Buyer"} and "title" not in refused
    a, b = _both(appliance, who, body, world["docs"][body], {})
    assert a == b


def move_email(appliance: Appliance, world: dict[str, Any]) -> None:
    """Copy the first contact's sealed email onto the second contact's row."""
    from sqlalchemy import text
    first, second = world["ids"]["contact"][:2]
    with appliance.engine.begin() as connection:
        blob = connection.execute(text("SELECT email FROM contacts WHERE id = :id"),
                                  {"id": first}).scalar_one()
        connection.execute(text("UPDATE contacts SET email = :blob WHERE id = :id"),
                           {"blob": blob, "id": second})


def test_a_moved_ciphertext_fails_the_same(appliance: Appliance, world: dict[str, Any]) -> None:
    """A sealed value copied onto another row does not open on either path: the same null,
    the same DATA_INTEGRITY error at the same path, the same audit entries."""
    move_email(appliance, world)
    for body in DOCUMENTS[:3]:
        who = world["callers"]["sales_manager"]
        a, b = _both(appliance, who, body, world["docs"][body], {"first": 10})
        assert a == b, (body, a, b)
        assert b"DATA_INTEGRITY" in a


def test_a_moved_subject_key_fails_the_same(appliance: Appliance, world: dict[str, Any]) -> None:
    """A subject's wrapped key copied onto another subject does not open there on either path
    (nor from the keys kept opened for reuse): DATA_INTEGRITY at the same paths, same entries."""
    from sqlalchemy import text
    first, second = world["ids"]["contact"][:2]
    for body in DOCUMENTS[:1]:  # both subjects' keys opened (and kept) first
        who = world["callers"]["sales_manager"]
        a, b = _both(appliance, who, body, world["docs"][body], {})
        assert a == b and b"DATA_INTEGRITY" not in a
    with appliance.engine.begin() as connection:
        wrapped = connection.execute(text("SELECT wrapped FROM subject_keys WHERE subject_id = :id"),
                                     {"id": first}).scalar_one()
        connection.execute(text("UPDATE subject_keys SET wrapped = :blob WHERE subject_id = :id"),
                           {"blob": wrapped, "id": second})
    for body in DOCUMENTS[:3]:
        who = world["callers"]["sales_manager"]
        a, b = _both(appliance, who, body, world["docs"][body], {"first": 10})
        assert a == b, (body, a, b)
        assert b"DATA_INTEGRITY" in a and b"INTERNAL" not in a
