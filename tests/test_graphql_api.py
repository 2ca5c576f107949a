"""The GraphQL API over real HTTP: validation, CRUD, paging, no N+1, hardening, headers.

Every test runs on SQLite and PostgreSQL (the `caller` fixture brings both).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select
from starlette.testclient import TestClient

from schema.context import unit_of_work
from schema.graphql import execution
from schema.ops import accounts as account_ops
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance
from security.principal import Principal
from storage.models import Account, Contact, SubjectKey

TEAM = "east"

CONTACT_FIELDS = "id firstName lastName title email phone birthDate nationalId notes"

CREATE_CONTACT = ("mutation($input: ContactInput!) { createContact(input: $input) { "
                  + CONTACT_FIELDS + " account { id name } } }")
CREATE_ACCOUNT = ("mutation($input: AccountInput!) { createAccount(input: $input) "
                  "{ id name industry website } }")


# -- helpers ------------------------------------------------------------------------------------

def _counts(appliance: Appliance) -> dict[str, int]:
    with appliance.sessions() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
                for model in (Account, Contact, SubjectKey)}


def _codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors", [])]


def _only_error(result: dict[str, Any]) -> dict[str, Any]:
    errors = result.get("errors") or []
    assert len(errors) == 1, result
    return dict(errors[0])


def _manager_principal(caller: Any) -> Principal:
    """The API client as an in-process principal, to seed records it owns quickly."""
    return Principal(id=caller.client_id, name=caller.client_id, roles=caller.roles,
                     team=caller.team, kind="client")


def _seed(appliance: Appliance, principal: Principal, *, accounts: int,
          contacts: int) -> tuple[list[str], list[str]]:
    with unit_of_work(appliance, principal) as ctx:
        account_ids = [account_ops.create_account(ctx, {"name": f"Account {i}"}).id
                       for i in range(accounts)]
        contact_ids = [contact_ops.create_contact(ctx, {
            "last_name": f"Person{i:03d}", "email": f"p{i}@example.com",
            "account_id": account_ids[i % accounts] if accounts else None}).id
            for i in range(contacts)]
    return account_ids, contact_ids


@contextmanager
def _statements(appliance: Appliance) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(appliance.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(appliance.engine, "before_cursor_execute", record)


@pytest.fixture
def manager(caller: Any) -> Any:
    return caller("sales_manager", team=TEAM)


# -- 1. validation ------------------------------------------------------------------------------

INVALID_CONTACTS: list[tuple[dict[str, Any], str]] = [
    ({"lastName": "Doe", "email": "not-an-email"}, "email"),
    ({"lastName": "Doe", "email": "a@b"}, "email"),
    ({"lastName": "x" * 101}, "lastName"),
    ({"lastName": "   "}, "lastName"),
    ({"lastName": "Doe", "accountId": str(uuid.uuid4())}, "accountId"),
    ({"lastName": "Doe", "accountId": "not-an-id"}, "accountId"),
    ({"lastName": "Doe", "birthDate": (dt.date.today() + dt.timedelta(days=2)).isoformat()},
     "birthDate"),
    ({"lastName": "Doe", "birthDate": "1980-13-45"}, "birthDate"),
    ({"lastName": "Do\u0000e"}, "lastName"),
    ({"lastName": "Do\u007fe"}, "lastName"),   # DEL
    ({"lastName": "Do\u0085e"}, "lastName"),   # a C1 control (NEL)
]


def test_invalid_contact_is_refused_and_nothing_written(manager: Any,
                                                        appliance: Appliance) -> None:
    before = _counts(appliance)
    for bad_input, field in INVALID_CONTACTS:
        result = manager.gql(CREATE_CONTACT, {"input": bad_input})
        error = _only_error(result)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (bad_input, result)
        assert error["extensions"].get("field") == field, (bad_input, result)
        assert error["path"] == ["createContact"]
        assert result["data"] == {"createContact": None}
        assert _counts(appliance) == before, bad_input


def test_exactly_100_characters_is_accepted(manager: Any, appliance: Appliance) -> None:
    """The boundary of the lastName check: 100 passes, 101 (above) does not."""
    before = _counts(appliance)
    result = manager.gql(CREATE_CONTACT, {"input": {"lastName": "y" * 100}})
    assert "errors" not in result, result
    assert result["data"]["createContact"]["lastName"] == "y" * 100
    assert _counts(appliance)["contacts"] == before["contacts"] + 1


def test_invalid_account_is_refused(manager: Any, appliance: Appliance) -> None:
    before = _counts(appliance)
    for bad in ({"name": "Acme", "website": "javascript:alert(1)"}, {"name": ""},
                {"name": "n" * 201}):
        result = manager.gql(CREATE_ACCOUNT, {"input": bad})
        assert _codes(result) == ["BAD_USER_INPUT"], result
    assert _counts(appliance) == before


BAD_ARGUMENTS: list[tuple[str, dict[str, Any] | None, str]] = [
    ("query($id: ID!) { contact(id: $id) { id } }", {"id": "12345"}, "id"),
    ("query($id: ID!) { contact(id: $id) { id } }", {"id": "'; DROP TABLE contacts; --"}, "id"),
    ("query($id: ID!) { account(id: $id) { id } }", {"id": "x" * 36}, "id"),
    ("query($a: String) { contacts(first: 5, after: $a) { edges { cursor } } }",
     {"a": "not base64 at all!"}, "after"),
    ("query($a: String) { contacts(first: 5, after: $a) { edges { cursor } } }",
     {"a": base64.urlsafe_b64encode(b"seq:12").decode()}, "after"),
    ("query($a: String) { accounts(first: 5, after: $a) { edges { cursor } } }",
     {"a": base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode()}, "after"),
    ("{ contacts(first: 0) { edges { cursor } } }", None, "first"),
    ("{ contacts(first: -1) { edges { cursor } } }", None, "first"),
    ("{ contacts(first: 1000) { edges { cursor } } }", None, "first"),
    ("{ accounts(first: 101) { edges { cursor } } }", None, "first"),
]


def test_bad_arguments_are_bad_user_input(manager: Any, appliance: Appliance) -> None:
    _seed(appliance, _manager_principal(manager), accounts=1, contacts=2)
    before = _counts(appliance)
    for query, variables, field in BAD_ARGUMENTS:
        result = manager.gql(query, variables)
        error = _only_error(result)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (query, variables, result)
        assert error["extensions"].get("field") == field, (query, variables, result)
        assert all(value is None for value in (result["data"] or {}).values()), result
    assert _counts(appliance) == before


def test_page_size_boundaries_are_accepted(manager: Any, appliance: Appliance) -> None:
    _seed(appliance, _manager_principal(manager), accounts=1, contacts=2)
    for first in (1, 100):
        result = manager.gql("query($f: Int) { contacts(first: $f) { edges { cursor } } }",
                             {"f": first})
        assert "errors" not in result, result
        assert len(result["data"]["contacts"]["edges"]) == min(first, 2)


def test_failed_mutation_in_a_document_keeps_the_other_mutations_write(
        manager: Any, appliance: Appliance) -> None:
    """Mutations run in order, each in its own savepoint; the unit of work still commits.

    The failing createContact is rolled back alone and comes back null with its error; the
    account made by the first mutation stays and its result still arrives (root fields are
    nullable so one failure does not hide the others' results).
    """
    before = _counts(appliance)
    result = manager.gql(
        'mutation { first: createAccount(input: {name: "Kept Ltd"}) { id name } '
        'second: createContact(input: {lastName: "Doe", email: "broken"}) { id } }')
    error = _only_error(result)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["path"] == ["second"]
    assert result["data"]["second"] is None
    assert result["data"]["first"]["name"] == "Kept Ltd"
    after = _counts(appliance)
    assert after["accounts"] == before["accounts"] + 1
    assert after["contacts"] == before["contacts"]
    with appliance.sessions() as session:
        assert session.scalar(select(Account.id).where(Account.name == "Kept Ltd")) \
            == result["data"]["first"]["id"]


def test_a_failed_mutation_undoes_only_its_own_writes(manager: Any, appliance: Appliance) -> None:
    """Serial mutations: the bad one in the middle writes nothing (no row, no subject key);
    the ones before and after it are committed and their results arrive."""
    before = _counts(appliance)
    result = manager.gql(
        'mutation { a: createContact(input: {lastName: "Good", email: "good@example.com"}) { id } '
        'b: createContact(input: {lastName: "Bad", birthDate: "1800-01-01"}) { id } '
        'c: createContact(input: {lastName: "After"}) { id } }')
    error = _only_error(result)
    assert error["extensions"]["code"] == "BAD_USER_INPUT" and error["path"] == ["b"]
    assert result["data"]["b"] is None and result["data"]["a"] and result["data"]["c"]
    after = _counts(appliance)
    assert after["contacts"] == before["contacts"] + 2
    assert after["subject_keys"] == before["subject_keys"] + 2
    with appliance.sessions() as session:
        assert sorted(session.scalars(select(Contact.last_name))) == ["After", "Good"]


def test_bad_variable_values_are_bad_user_input(manager: Any) -> None:
    for value in ("abc", 2**40, 1.5, [1]):
        result = manager.gql("query($f: Int) { contacts(first: $f) { edges { cursor } } }",
                             {"f": value})
        error = _only_error(result)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (value, result)
        assert error["message"].startswith("Variable '$f'")
        assert result.get("data") is None


def test_missing_required_variable_is_bad_user_input(manager: Any) -> None:
    result = manager.gql("mutation($i: ContactInput!) { createContact(input: $i) { id } }",
                         {"i": {"firstName": "No last name"}})
    error = _only_error(result)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", result
    assert "requestId" not in error["extensions"]


# -- 2. CRUD ------------------------------------------------------------------------------------

def test_account_crud(manager: Any) -> None:
    created = manager.gql(CREATE_ACCOUNT, {"input": {"name": "Acme", "industry": "Tools",
                                                     "website": "https://acme.example"}})
    assert "errors" not in created, created
    account = created["data"]["createAccount"]
    assert account["name"] == "Acme" and account["industry"] == "Tools"
    account_id = account["id"]

    updated = manager.gql(
        "mutation($id: ID!) { updateAccount(id: $id, input: {industry: \"Rockets\"}) "
        "{ id name industry website } }", {"id": account_id})
    assert "errors" not in updated, updated
    assert updated["data"]["updateAccount"] == {
        "id": account_id, "name": "Acme", "industry": "Rockets",
        "website": "https://acme.example"}

    cleared = manager.gql(
        "mutation($id: ID!) { updateAccount(id: $id, input: {website: null}) { website name } }",
        {"id": account_id})
    assert cleared["data"]["updateAccount"] == {"website": None, "name": "Acme"}

    listed = manager.gql("{ accounts { edges { node { id name } } } }")
    assert [e["node"] for e in listed["data"]["accounts"]["edges"]] == [
        {"id": account_id, "name": "Acme"}]

    deleted = manager.gql("mutation($id: ID!) { deleteAccount(id: $id) { id } }",
                          {"id": account_id})
    assert deleted["data"]["deleteAccount"] == {"id": account_id}
    gone = manager.gql("query($id: ID!) { account(id: $id) { id } }", {"id": account_id})
    assert _codes(gone) == ["NOT_FOUND"]
    again = manager.gql("mutation($id: ID!) { deleteAccount(id: $id) { id } }",
                        {"id": account_id})
    assert _codes(again) == ["NOT_FOUND"]


def test_contact_crud_with_nested_account(manager: Any, appliance: Appliance) -> None:
    account = manager.gql(CREATE_ACCOUNT, {"input": {"name": "Globex"}})["data"]["createAccount"]
    created = manager.gql(CREATE_CONTACT, {"input": {
        "lastName": "Doe", "firstName": "Jane", "title": "CTO", "email": "jane@example.com",
        "phone": "+44 20 7946 0000", "birthDate": "1980-02-29", "nationalId": "AB-123",
        "notes": "met at the fair", "accountId": account["id"]}})
    assert "errors" not in created, created
    contact = created["data"]["createContact"]
    contact_id = contact["id"]
    assert contact["account"] == {"id": account["id"], "name": "Globex"}
    assert contact["email"] == "jane@example.com" and contact["birthDate"] == "1980-02-29"

    # Only the given fields change.
    updated = manager.gql(
        "mutation($id: ID!, $p: ContactPatch!) { updateContact(id: $id, input: $p) { "
        + CONTACT_FIELDS + " account { name } } }",
        {"id": contact_id, "p": {"title": "CEO", "phone": "+44 20 7946 1111"}})
    assert "errors" not in updated, updated
    expected = {**{k: v for k, v in contact.items() if k != "account"},
                "title": "CEO", "phone": "+44 20 7946 1111", "account": {"name": "Globex"}}
    assert updated["data"]["updateContact"] == expected

    def by_email(address: str) -> list[str]:
        found = manager.gql("query($e: String) { contacts(filter: {email: $e}) "
                            "{ edges { node { id } } } }", {"e": address})
        assert "errors" not in found, found
        return [e["node"]["id"] for e in found["data"]["contacts"]["edges"]]

    assert by_email("jane@example.com") == [contact_id]

    # Setting email to null clears the value and its blind index.
    cleared = manager.gql(
        "mutation($id: ID!) { updateContact(id: $id, input: {email: null}) "
        "{ email lastName phone } }", {"id": contact_id})
    assert "errors" not in cleared, cleared
    assert cleared["data"]["updateContact"] == {"email": None, "lastName": "Doe",
                                                "phone": "+44 20 7946 1111"}
    with appliance.sessions() as session:
        row = session.get(Contact, contact_id)
        assert row is not None
        assert row.email is None and row.email_bidx is None
        assert row.phone is not None and row.phone_bidx is not None
    assert by_email("jane@example.com") == []

    # Unlinking the account: account becomes null.
    unlinked = manager.gql(
        "mutation($id: ID!) { updateContact(id: $id, input: {accountId: null}) "
        "{ account { id } } }", {"id": contact_id})
    assert unlinked["data"]["updateContact"] == {"account": None}

    # An invalid patch changes nothing.
    bad = manager.gql(
        "mutation($id: ID!) { updateContact(id: $id, input: {lastName: \"\", title: \"X\"}) "
        "{ id } }", {"id": contact_id})
    assert _codes(bad) == ["BAD_USER_INPUT"]
    still = manager.gql("query($id: ID!) { contact(id: $id) { lastName title } }",
                        {"id": contact_id})
    assert still["data"]["contact"] == {"lastName": "Doe", "title": "CEO"}

    deleted = manager.gql("mutation($id: ID!) { deleteContact(id: $id) { id } }",
                          {"id": contact_id})
    assert deleted["data"]["deleteContact"] == {"id": contact_id}
    gone = manager.gql("query($id: ID!) { contact(id: $id) { id lastName } }", {"id": contact_id})
    assert _codes(gone) == ["NOT_FOUND"] and gone["data"] == {"contact": None}
    patch_gone = manager.gql(
        "mutation($id: ID!) { updateContact(id: $id, input: {title: \"x\"}) { id } }",
        {"id": contact_id})
    assert _codes(patch_gone) == ["NOT_FOUND"]


def test_deleting_an_account_unlinks_its_contacts(manager: Any) -> None:
    account = manager.gql(CREATE_ACCOUNT, {"input": {"name": "Initech"}})["data"]["createAccount"]
    contact = manager.gql(CREATE_CONTACT, {"input": {"lastName": "Lumbergh",
                                                     "accountId": account["id"]}})
    contact_id = contact["data"]["createContact"]["id"]
    manager.gql("mutation($id: ID!) { deleteAccount(id: $id) { id } }", {"id": account["id"]})
    read = manager.gql("query($id: ID!) { contact(id: $id) { lastName account { id } } }",
                       {"id": contact_id})
    assert read == {"data": {"contact": {"lastName": "Lumbergh", "account": None}}}


def test_other_teams_records_are_not_found(caller: Any, manager: Any) -> None:
    other = caller("sales_manager", team="west")
    made = manager.gql(CREATE_CONTACT, {"input": {"lastName": "Private"}})
    contact_id = made["data"]["createContact"]["id"]
    read = other.gql("query($id: ID!) { contact(id: $id) { lastName } }", {"id": contact_id})
    assert _codes(read) == ["NOT_FOUND"]
    listed = other.gql("{ contacts { edges { node { id } } } }")
    assert listed["data"]["contacts"]["edges"] == []
    linked = other.gql(CREATE_CONTACT, {"input": {"lastName": "x", "accountId": manager.gql(
        CREATE_ACCOUNT, {"input": {"name": "East Co"}})["data"]["createAccount"]["id"]}})
    assert _codes(linked) == ["BAD_USER_INPUT"]


# -- 3. Relay pagination ------------------------------------------------------------------------

def test_relay_pagination_visits_every_contact_once_in_creation_order(manager: Any) -> None:
    made = []
    for i in range(7):
        result = manager.gql(CREATE_CONTACT, {"input": {"lastName": f"Page{i}"}})
        assert "errors" not in result, result
        made.append(result["data"]["createContact"]["id"])

    query = ("query($after: String) { contacts(first: 3, after: $after) { "
             "edges { cursor node { id lastName } } "
             "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }")
    seen: list[str] = []
    pages = []
    after = None
    while True:
        result = manager.gql(query, {"after": after})
        assert "errors" not in result, result
        connection = result["data"]["contacts"]
        pages.append(connection)
        info = connection["pageInfo"]
        edges = connection["edges"]
        seen += [e["node"]["id"] for e in edges]
        assert info["startCursor"] == edges[0]["cursor"]
        assert info["endCursor"] == edges[-1]["cursor"]
        assert info["hasPreviousPage"] is (after is not None)
        if not info["hasNextPage"]:
            break
        after = info["endCursor"]
        assert len(pages) < 10, "pagination does not end"

    assert [len(p["edges"]) for p in pages] == [3, 3, 1]
    assert [p["pageInfo"]["hasNextPage"] for p in pages] == [True, True, False]
    assert seen == made
    assert [e["node"]["lastName"] for p in pages for e in p["edges"]] == \
        [f"Page{i}" for i in range(7)]

    # Exactly a page's worth: hasNextPage is false on the last full page, and past the end is empty.
    six = manager.gql("query($a: String) { contacts(first: 6, after: $a) { edges { cursor } "
                      "pageInfo { hasNextPage endCursor } } }", {"a": pages[0]["edges"][0]["cursor"]})
    assert len(six["data"]["contacts"]["edges"]) == 6
    assert six["data"]["contacts"]["pageInfo"]["hasNextPage"] is False
    past = manager.gql(query, {"after": six["data"]["contacts"]["pageInfo"]["endCursor"]})
    assert past["data"]["contacts"]["edges"] == []
    assert past["data"]["contacts"]["pageInfo"] == {
        "hasNextPage": False, "hasPreviousPage": True, "startCursor": None, "endCursor": None}


# -- 4. no N+1 ----------------------------------------------------------------------------------

NESTED = "{ contacts(first: 30) { edges { node { lastName account { name } } } } }"


def _measure(manager: Any, appliance: Appliance) -> tuple[list[str], dict[str, Any]]:
    with _statements(appliance) as statements:
        result = manager.gql(NESTED)
    assert "errors" not in result, result
    # The audit append may or may not sign a checkpoint depending on where the log stands;
    # that is not a per-contact cost, so statements on the audit tables are left out.
    return [s for s in statements if "audit_" not in s], result


def test_nested_account_is_loaded_without_n_plus_1(manager: Any, appliance: Appliance) -> None:
    principal = _manager_principal(manager)
    account_ids, _ = _seed(appliance, principal, accounts=5, contacts=5)
    small, small_result = _measure(manager, appliance)
    assert len(small_result["data"]["contacts"]["edges"]) == 5

    with unit_of_work(appliance, principal) as ctx:
        for i in range(5, 30):
            contact_ops.create_contact(ctx, {"last_name": f"Person{i:03d}",
                                             "account_id": account_ids[i % 5]})
    large, large_result = _measure(manager, appliance)
    edges = large_result["data"]["contacts"]["edges"]
    assert len(edges) == 30
    assert {e["node"]["account"]["name"] for e in edges} == {f"Account {i}" for i in range(5)}
    assert [e["node"]["account"]["name"] for e in edges] == [f"Account {i % 5}" for i in range(30)]

    assert len(large) == len(small), (small, large)
    account_selects = [s for s in large if "FROM accounts" in s]
    assert len(account_selects) == 1, account_selects


# -- 5. hardening -------------------------------------------------------------------------------

def _nested(levels: int) -> str:
    body = "leaf"
    for i in range(levels - 1, 0, -1):
        body = f"f{i} {{ {body} }}"
    return "{ " + body + " }"


def test_depth_over_the_limit_is_refused(manager: Any) -> None:
    too_deep = manager.gql(_nested(execution.MAX_DEPTH + 3))
    messages = [e["message"] for e in too_deep["errors"]]
    assert any(f"exceeds maximum operation depth of {execution.MAX_DEPTH}" in m
               for m in messages), messages
    assert too_deep.get("data") is None
    shallow = manager.gql(_nested(3))
    assert not any("depth" in e["message"] for e in shallow["errors"]), shallow


def test_depth_limit_is_enforced_through_fragments(manager: Any) -> None:
    fragments = "".join(f"fragment F{i} on Query {{ f{i} {{ ...F{i + 1} }} }} "
                        for i in range(execution.MAX_DEPTH + 3))
    document = f"{{ ...F0 }} {fragments} fragment F{execution.MAX_DEPTH + 3} on Query {{ me {{ id }} }}"
    result = manager.gql(document)
    assert any("maximum operation depth" in e["message"] for e in result["errors"]), result


def test_aliases_over_the_limit_are_refused(manager: Any) -> None:
    def aliased(n: int) -> str:
        return "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(n)) + " }"

    allowed = manager.gql(aliased(execution.MAX_ALIASES))
    assert "errors" not in allowed, allowed
    assert len(allowed["data"]) == execution.MAX_ALIASES
    refused = manager.gql(aliased(execution.MAX_ALIASES + 1))
    error = _only_error(refused)
    assert "aliases" in error["message"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert refused.get("data") is None


def test_aliased_mutations_over_the_limit_write_nothing(manager: Any, appliance: Appliance) -> None:
    before = _counts(appliance)
    document = "mutation { " + " ".join(
        f'm{i}: createAccount(input: {{name: "A{i}"}}) {{ id }}'
        for i in range(execution.MAX_ALIASES + 1)) + " }"
    refused = manager.gql(document)
    assert refused.get("data") is None and refused["errors"]
    assert _counts(appliance) == before


def test_document_over_the_token_limit_is_refused(manager: Any) -> None:
    document = "{ me { " + " ".join(["id"] * (execution.MAX_TOKENS + 10)) + " } }"
    refused = manager.gql(document)
    error = _only_error(refused)
    assert error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED", refused
    assert "tokens" in error["message"]
    assert refused.get("data") is None
    small = manager.gql("{ me { " + " ".join(["id"] * 100) + " } }")
    assert "errors" not in small, small


MISSPELLINGS: list[tuple[str, dict[str, Any] | None]] = [
    ("{ contats { edges { cursor } } }", None),
    ("{ me { nmae } }", None),
    ("{ contacts(frist: 3) { edges { cursor } } }", None),
    ('mutation { createContact(input: {lastNmae: "x"}) { id } }', None),
    ("mutation($i: ContactInput!) { createContact(input: $i) { id } }", {"i": {"lastNmae": "x"}}),
    ("query($x: Strin) { me { id } }", {"x": "y"}),
    ("{ contacts { edges { node { ... on Contct { id } } } } }", None),
]


def test_misspellings_do_not_suggest_schema_names(manager: Any) -> None:
    for document, variables in MISSPELLINGS:
        result = manager.gql(document, variables)
        assert result["errors"], result
        for error in result["errors"]:
            assert "Did you mean" not in error["message"], (document, error)
            assert error["extensions"]["code"] in ("GRAPHQL_VALIDATION_FAILED",
                                                   "BAD_USER_INPUT"), (document, error)
        assert result.get("data") is None


INTROSPECTION = "{ __schema { types { name } } }"


def test_introspection_is_for_admins_only(caller: Any, manager: Any) -> None:
    refused = manager.gql(INTROSPECTION)
    assert refused.get("data") is None
    assert refused["errors"] and "ContactConnection" not in json.dumps(refused)
    type_probe = manager.gql('{ __type(name: "Contact") { fields { name } } }')
    assert type_probe.get("data") is None and "nationalId" not in json.dumps(type_probe)

    admin = caller("admin")
    allowed = admin.gql(INTROSPECTION)
    assert "errors" not in allowed, allowed
    names = {t["name"] for t in allowed["data"]["__schema"]["types"]}
    assert {"Contact", "Account", "ContactConnection", "Query", "Mutation"} <= names
    # __typename is not introspection of the schema and stays available to everyone.
    typename = manager.gql("{ __typename }")
    assert typename == {"data": {"__typename": "Query"}}


def test_unexpected_error_is_masked(manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(contact_ops, "list_contacts", explode)
    response = manager.http.post("/graphql", json={"query": "{ contacts { edges { cursor } } }"},
                                 headers={"Authorization": f"Bearer {manager.token}"})
    assert response.status_code == 200
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text and "RuntimeError" not in response.text
    error = _only_error(response.json())
    assert error["message"] == "Internal error"
    assert error["extensions"]["code"] == "INTERNAL"
    request_id = error["extensions"]["requestId"]
    assert request_id and request_id == response.headers["x-request-id"]
    assert set(error["extensions"]) == {"code", "requestId"}
    # The rest of the answer still arrives alongside the masked field.
    # Root fields are nullable: the failed one is null, the others still arrive.
    mixed = manager.gql("{ me { team } contacts { edges { cursor } } }")
    assert mixed["data"] == {"me": {"team": manager.team}, "contacts": None}
    assert [e["message"] for e in mixed["errors"]] == ["Internal error"]
    assert "secret detail" not in json.dumps(mixed)


def _post(manager: Any, content: bytes, **headers: str) -> Any:
    return manager.http.post("/graphql", content=content, headers={
        "Authorization": f"Bearer {manager.token}", "Content-Type": "application/json",
        **headers})


def test_invalid_json_body_is_400(manager: Any) -> None:
    for body in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"query": 5}', b"",
                 b'{"query": "{ me { id } }", "variables": [1]}'):
        response = _post(manager, body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def test_body_over_the_limit_is_413(manager: Any, appliance: Appliance) -> None:
    limit = appliance.settings.max_body_bytes
    padding = " " * (limit + 1 - len(b'{"query": "{ me { id } }"}'))
    too_big = ('{"query": "{ me { id } }"}' + padding).encode()
    assert len(too_big) == limit + 1
    response = _post(manager, too_big)
    assert response.status_code == 413, response.text
    # Exactly at the limit is still served.
    at_limit = too_big[:-1]
    assert len(at_limit) == limit
    ok = _post(manager, at_limit)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"data": {"me": {"id": manager.client_id}}}


def test_body_over_the_limit_without_content_length_is_413(manager: Any,
                                                           appliance: Appliance) -> None:
    limit = appliance.settings.max_body_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "{ me { id } }"'
        for _ in range(limit // 65_536 + 2):
            yield b" " * 65_536
        yield b"}"

    response = manager.http.post("/graphql", content=chunks(), headers={
        "Authorization": f"Bearer {manager.token}", "Content-Type": "application/json"})
    assert response.status_code == 413, response.text


def test_get_graphql_is_405(http: TestClient) -> None:
    response = http.get("/graphql", params={"query": "{ me { id } }"})
    assert response.status_code == 405


def test_other_methods_are_405_with_the_methods_allowed(http: TestClient) -> None:
    for method in ("PUT", "DELETE", "PATCH", "HEAD"):
        response = http.request(method, "/graphql", json={"query": "{ me { id } }"})
        assert response.status_code == 405, method
        assert response.headers["allow"] == "GET, POST", method
        assert response.headers["x-frame-options"] == "DENY", method
        if method != "HEAD":
            assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def test_a_get_with_anything_but_the_document_parameters_is_400(manager: Any) -> None:
    auth = {"Authorization": f"Bearer {manager.token}"}
    for params in ("documentId=sha256:00&extra=1", "documentId=a&documentId=b",
                   "documentId=a&variables=%7Bnot-json"):
        response = manager.http.get(f"/graphql?{params}", headers=auth)
        assert response.status_code == 400, params
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST", params


def test_an_unexpected_failure_before_execution_is_a_generic_500(
        manager: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from api import graphql_http

    def broken(*args: Any) -> Any:
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr(graphql_http, "principal_from_token", broken)
    response = manager.http.post("/graphql", json={"query": "{ me { id } }"},
                                 headers={"Authorization": f"Bearer {manager.token}"})
    assert response.status_code == 500
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "INTERNAL"
    assert len(error["extensions"]["requestId"]) == 32
    assert "secret detail" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "secret detail of a bug" in caplog.text  # in the server's log only


def test_missing_or_bad_token_is_401(http: TestClient) -> None:
    response = http.post("/graphql", json={"query": "{ me { id } }"})
    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    bad = http.post("/graphql", json={"query": "{ me { id } }"},
                    headers={"Authorization": "Bearer not.a.token"})
    assert bad.status_code == 401


# -- 6. security headers on every response -------------------------------------------------------

def test_every_response_carries_the_security_headers(manager: Any, http: TestClient) -> None:
    auth = {"Authorization": f"Bearer {manager.token}"}
    responses = {
        "graphql ok": http.post("/graphql", json={"query": "{ me { id } }"}, headers=auth),
        "graphql error": http.post("/graphql", json={"query": "{ nope }"}, headers=auth),
        "graphql 400": http.post("/graphql", content=b"{", headers=auth),
        "graphql 401": http.post("/graphql", json={"query": "{ me { id } }"}),
        "graphql 405": http.get("/graphql"),
        "404": http.get("/no-such-page"),
        "token 401": http.post("/oauth/token", data={"grant_type": "client_credentials"},
                               auth=("nobody", "wrong")),
        "healthz": http.get("/healthz"),
        "readyz": http.get("/readyz"),
    }
    for name, response in responses.items():
        assert response.headers.get("x-content-type-options") == "nosniff", name
        cache_control = response.headers.get("cache-control", "")
        assert "no-store" in cache_control, (name, cache_control)
        assert response.headers.get("x-frame-options") == "DENY", name
        assert "default-src 'none'" in response.headers.get("content-security-policy", ""), name
    assert responses["graphql ok"].status_code == 200
    assert responses["graphql 405"].status_code == 405
    # The public discovery documents may be cached (they say so), but keep the other headers.
    for path in ("/.well-known/openid-configuration", "/.well-known/jwks.json"):
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers.get("x-content-type-options") == "nosniff", path
        assert response.headers.get("x-frame-options") == "DENY", path
        assert response.headers.get("cache-control") == "public, max-age=300", path
    assert responses["404"].status_code == 404
    assert responses["token 401"].status_code in (400, 401)


def test_malformed_requests_are_clear_errors_not_server_failures(
        manager: Any, appliance: Appliance) -> None:
    """Each of these was an HTTP 500 or 503, or an INTERNAL error."""
    http, auth = manager.http, {"Authorization": f"Bearer {manager.token}",
                                "Content-Type": "application/json"}

    def post(raw: bytes) -> Any:
        return http.post("/graphql", content=raw, headers=auth)

    # A lone surrogate in the variables is valid JSON but not Unicode text.
    lone = post(b'{"query": "{ me { __typename } }", "variables": {"a": "\\ud800"}}')
    assert lone.status_code == 400 and _codes(lone.json()) == ["BAD_REQUEST"], lone.text
    # Arrays nested past the interpreter's recursion limit, as the body or in the variables.
    deep = post(b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and _codes(deep.json()) == ["BAD_REQUEST"], deep.text
    nested = post(b'{"query": "{ me { __typename } }", "variables": {"a": '
                  + b"[" * 5000 + b"]" * 5000 + b"}}")
    assert nested.status_code == 400 and _codes(nested.json()) == ["BAD_REQUEST"], nested.text
    # An operationName the document does not hold is the client's mistake, not an outage.
    unknown = http.post("/graphql", headers=auth, json={
        "query": "query A { me { __typename } }", "operationName": "B"})
    assert unknown.status_code == 200 and _codes(unknown.json()) == ["BAD_REQUEST"], unknown.text
    assert "Unknown operation named" in unknown.json()["errors"][0]["message"]
    # More search conditions than SQL will take.
    many = manager.gql("query($f: [RecordFilter!]) { contacts(first: 1, filters: $f) { "
                       "edges { node { id } } } }",
                       {"f": [{"field": "lastName", "eq": "a"}] * 1000})
    assert _codes(many) == ["BAD_USER_INPUT"], many
    # A date that is out of range once put in UTC.
    before = _counts(appliance)
    account = manager.gql('mutation { createAccount(input: {name: "Dates Ltd"}) { id } }')
    account_id = account["data"]["createAccount"]["id"]
    early = manager.gql("mutation($a: ID!) { logActivity(input: {kind: \"call\", subject: \"s\", "
                        "accountId: $a, occurredAt: \"0001-01-01T00:00:00+14:00\"}) { id } }",
                        {"a": account_id})
    assert _codes(early) == ["BAD_USER_INPUT"], early
    assert _counts(appliance)["accounts"] == before["accounts"] + 1  # only the account


def test_token_request_with_basic_credentials_that_are_not_utf8(manager: Any) -> None:
    import base64
    garbled = base64.b64encode(b"\xff:x").decode()
    response = manager.http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                 headers={"Authorization": f"Basic {garbled}"})
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"


def test_token_request_with_two_authentication_methods_is_refused(manager: Any) -> None:
    """RFC 6749 §2.3: one method per request; the body's secret used to be ignored."""
    response = manager.http.post(
        "/oauth/token", auth=(manager.client_id, manager.secret),
        data={"grant_type": "client_credentials", "client_id": manager.client_id,
              "client_secret": "not-the-secret"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
