"""Attacks on authorisation: field grants, record rules, masks, policy changes, the decision cache.

The field matrix is computed from the default policy's rule list (not from the authoriser), then
checked over real HTTP GraphQL for every built-in role: a granted field shows its value, a masked
one its masked form, a refused one is null with a FORBIDDEN error at that field's path, and the
rest of the answer still arrives.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

import pytest
from sqlalchemy import func, select

from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.ops import policies as policy_ops
from schema.runtime import Appliance
from security import authz
from security.authz import Rule
from security.classification import ACCOUNT, CONTACT, FieldSpec, ObjectSpec, mask_value
from security.default_policy import ROLES, default_rules
from security.principal import Principal
from storage.models import Account, AuditEvent, Contact, PolicyRule, SubjectKey

TEAM = "east"

#: Distinctive values, so a leak is visible anywhere in a response body.
CONTACT_INPUT = {
    "lastName": "Marchbanks",
    "firstName": "Quinella",
    "title": "Head of Procurement",
    "email": "qm.private@example.org",
    "phone": "+44 20 7946 0958",
    "address": "12 Hidden Lane, Leeds",
    "birthDate": "1984-07-19",
    "nationalId": "QQ-123456-C",
    "notes": "prefers calls after six",
}
ACCOUNT_INPUT = {"name": "Brightwater Mills", "industry": "Textiles",
                 "website": "https://brightwater.example.com"}

CONTACT_CREATE = """
mutation($input: ContactInput!) { createContact(input: $input) { id } }
"""
ACCOUNT_CREATE = """
mutation($input: AccountInput!) { createAccount(input: $input) { id } }
"""


# -- helpers ------------------------------------------------------------------------------------

def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def expected_field(rules: Iterable[Rule], role: str, obj: str, fspec: FieldSpec) -> str:
    """allow / mask / deny for one field, from the rule list alone."""
    names = {fspec.name, f"class:{fspec.classification.value}"}
    granted = {r.action for r in rules
               if r.role == role and r.object_type == obj and r.field in names}
    if "read" in granted:
        return "allow"
    if "read_masked" in granted:
        return "mask"
    return "deny"


def read_scopes(rules: Iterable[Rule], role: str, obj: str) -> set[str]:
    return {r.field for r in rules if r.role == role and r.object_type == obj
            and r.action == "read" and r.field in ("@own", "@team", "@all")}


def sees_record(rules: Iterable[Rule], role: str, obj: str, *, team: str | None,
                record_team: str, caller_id: str, owner: str) -> bool:
    scopes = read_scopes(rules, role, obj)
    return ("@all" in scopes or ("@team" in scopes and team is not None and team == record_team)
            or ("@own" in scopes and caller_id == owner))


def errors_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body.get("errors") or [])


def no_data(body: dict[str, Any]) -> bool:
    """Nothing came back: `data` is null, or (nullable root fields) every root field is."""
    data = body.get("data")
    return data is None or all(value is None for value in data.values())


def codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in errors_of(body)]


def selection(spec: ObjectSpec, nested_account: str = "id") -> str:
    parts = ["id"]
    for fspec in spec.fields:
        if spec is CONTACT and fspec.name == "account":
            parts.append(f"account {{ {nested_account} }}")
        else:
            parts.append(camel(fspec.name))
    return " ".join(parts)


def count_rows(appliance: Appliance, model: Any) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def iso(value: dt.datetime) -> str:
    return value.isoformat()


def seed_record(caller: Any) -> dict[str, Any]:
    """A sales_manager of team east creates an account and a contact with every field filled."""
    manager = caller("sales_manager", team=TEAM)
    account = manager.gql(ACCOUNT_CREATE, {"input": ACCOUNT_INPUT})
    assert "errors" not in account, account
    account_id = account["data"]["createAccount"]["id"]
    contact = manager.gql(CONTACT_CREATE, {"input": {**CONTACT_INPUT, "accountId": account_id}})
    assert "errors" not in contact, contact
    return {"manager": manager, "account_id": account_id,
            "contact_id": contact["data"]["createContact"]["id"]}


def true_values(appliance: Appliance, seeded: dict[str, Any]) -> tuple[dict[str, Any],
                                                                       dict[str, Any]]:
    """What each field really holds, by GraphQL name: inputs, plus what the row recorded."""
    with appliance.sessions() as session:
        contact = session.get(Contact, seeded["contact_id"])
        account = session.get(Account, seeded["account_id"])
        assert contact is not None and account is not None
        contact_meta = {"createdAt": iso(contact.created_at), "updatedAt": iso(contact.updated_at)}
        account_meta = {"createdAt": iso(account.created_at), "updatedAt": iso(account.updated_at)}
    manager_id = seeded["manager"].client_id
    contact_values = {**CONTACT_INPUT, **contact_meta, "owner": manager_id, "team": TEAM,
                      "account": {"id": seeded["account_id"]}}
    account_values = {**ACCOUNT_INPUT, **account_meta, "owner": manager_id, "team": TEAM}
    return contact_values, account_values


def check_object(body: dict[str, Any], root: tuple[Any, ...], spec: ObjectSpec,
                 values: dict[str, Any], role: str, rules: list[Rule]) -> set[tuple[Any, ...]]:
    """Assert each field of the object at `root` per the policy; return the paths refused."""
    node: Any = body["data"]
    for key in root:
        node = node[key]
    assert node is not None, (role, root, body)
    refused: set[tuple[Any, ...]] = set()
    for fspec in spec.fields:
        name = camel(fspec.name)
        decision = expected_field(rules, role, spec.name, fspec)
        got = node[name]
        if decision == "allow":
            assert got == values[name], (role, spec.name, name, got, values[name])
        elif decision == "mask":
            assert got == mask_value(fspec.mask, str(values[name])), (role, spec.name, name, got)
            assert got != values[name]
        else:
            assert got is None, (role, spec.name, name, got)
            refused.add((*root, name))
    return refused


def refused_paths(body: dict[str, Any]) -> set[tuple[Any, ...]]:
    paths = set()
    for error in errors_of(body):
        assert error["extensions"]["code"] == "FORBIDDEN", error
        assert error.get("path"), error
        paths.add(tuple(error["path"]))
    return paths


def assert_no_leak(text: str, values: dict[str, Any], allowed: set[str]) -> None:
    for name, value in values.items():
        if name in allowed or not isinstance(value, str) or len(value) < 6:
            continue
        assert value not in text, f"{name} ({value!r}) leaked into {text}"


# -- 1. the field matrix ------------------------------------------------------------------------

CONTACT_QUERY = "query($id: ID!) { contact(id: $id) { %s } }"
CONTACTS_QUERY = "{ contacts(first: 20) { edges { node { %s } } } }"
ACCOUNT_QUERY = "query($id: ID!) { account(id: $id) { %s } }"
ACCOUNTS_QUERY = "{ accounts(first: 20) { edges { node { %s } } } }"


def check_role(role: str, appliance: Appliance, caller: Any, seeded: dict[str, Any],
               rules: list[Rule]) -> None:
    contact_values, account_values = true_values(appliance, seeded)
    client = caller(role, team=TEAM)
    for spec, values, one, many, record_id in (
        (CONTACT, contact_values, CONTACT_QUERY, CONTACTS_QUERY, seeded["contact_id"]),
        (ACCOUNT, account_values, ACCOUNT_QUERY, ACCOUNTS_QUERY, seeded["account_id"]),
    ):
        by_id = client.gql(one % selection(spec), {"id": record_id})
        listed = client.gql(many % selection(spec))
        plural = f"{spec.name}s"
        if not read_scopes(rules, role, spec.name):
            # No record rule at all: the record does not exist for them, the list is refused.
            assert no_data(by_id), (role, by_id)
            assert codes(by_id) == ["NOT_FOUND"], (role, by_id)
            assert by_id["errors"][0]["path"] == [spec.name]
            assert no_data(listed), (role, listed)
            assert codes(listed) == ["FORBIDDEN"], (role, listed)
            assert listed["errors"][0]["path"] == [plural]
            for body in (by_id, listed):
                assert_no_leak(json.dumps(body), values, allowed=set())
            continue
        visible = sees_record(rules, role, spec.name, team=TEAM, record_team=TEAM,
                              caller_id=client.client_id, owner=seeded["manager"].client_id)
        assert visible, f"{role} has a record rule on {spec.name} but cannot see team {TEAM}"
        # By id: every field as the policy says, refusals at their own paths, nothing else lost.
        refused = check_object(by_id, (spec.name,), spec, values, role, rules)
        assert by_id["data"][spec.name]["id"] == record_id
        assert refused_paths(by_id) == refused, (role, by_id)
        denied = {p[-1] for p in refused}
        assert_no_leak(json.dumps(by_id), values, allowed=set(values) - denied)
        # In a list: the same decisions, paths through edges/node.
        edges = listed["data"][plural]["edges"]
        assert [e["node"]["id"] for e in edges] == [record_id], (role, listed)
        refused_list = check_object(listed, (plural, "edges", 0, "node"), spec, values, role,
                                    rules)
        assert refused_paths(listed) == refused_list, (role, listed)
        assert {p[-1] for p in refused_list} == denied

    # contact { account { ... } }: the nested object's fields obey the account rules.
    if (expected_field(rules, role, "contact", CONTACT.field("account")) == "allow"
            and sees_record(rules, role, "account", team=TEAM, record_team=TEAM,
                            caller_id=client.client_id, owner=seeded["manager"].client_id)):
        account_fields = " ".join(["id"] + [camel(f.name) for f in ACCOUNT.fields])
        body = client.gql("query($id: ID!) { contact(id: $id) { id account { FIELDS } } }"
                          .replace("FIELDS", account_fields), {"id": seeded["contact_id"]})
        refused = check_object(body, ("contact", "account"), ACCOUNT, account_values, role,
                               rules)
        assert refused_paths(body) == refused, (role, body)


def test_field_matrix_follows_the_policy(appliance: Appliance, caller: Any) -> None:
    """Every built-in role x every contact and account field, decided from the rule list."""
    rules = default_rules()
    seeded = seed_record(caller)
    for role in ROLES:
        check_role(role, appliance, caller, seeded, rules)
    # The matrix is not vacuous: it holds grants, refusals and roles without any record rule.
    decisions = {expected_field(rules, role, spec.name, f)
                 for role in ROLES for spec in (CONTACT, ACCOUNT) for f in spec.fields}
    assert decisions >= {"allow", "deny"}
    assert {r for r in ROLES if not read_scopes(rules, r, "contact")} == \
        {"admin", "security_officer", "auditor", "privacy_officer", "integration"}
    for role in ("sales_rep", "support_agent"):
        assert {expected_field(rules, role, "contact", CONTACT.field(f))
                for f in ("birth_date", "national_id")} == {"deny"}
    assert expected_field(rules, "support_agent", "account", ACCOUNT.field("industry")) == "deny"


# -- 2. record rules ----------------------------------------------------------------------------

UPDATE_CONTACT = """
mutation($id: ID!, $input: ContactPatch!) { updateContact(id: $id, input: $input) { id title } }
"""
DELETE_CONTACT = "mutation($id: ID!) { deleteContact(id: $id) { id } }"


def contact_row(appliance: Appliance, contact_id: str) -> Contact | None:
    with appliance.sessions() as session:
        return session.get(Contact, contact_id)


def test_sales_rep_reads_the_team_but_writes_only_their_own(appliance: Appliance,
                                                            caller: Any) -> None:
    seeded = seed_record(caller)
    rep = caller("sales_rep", team=TEAM)
    other_rep = caller("sales_rep", team=TEAM)
    mine = rep.gql(CONTACT_CREATE, {"input": {"lastName": "Ownrecord", "title": "Buyer"}})
    assert "errors" not in mine, mine
    mine_id = mine["data"]["createContact"]["id"]
    assert contact_row(appliance, mine_id).owner == rep.client_id  # type: ignore[union-attr]

    # Team east records are readable, including the manager's and the other rep's.
    listed = rep.gql("{ contacts { edges { node { id lastName } } } }")
    assert "errors" not in listed, listed
    ids = {e["node"]["id"] for e in listed["data"]["contacts"]["edges"]}
    assert ids == {seeded["contact_id"], mine_id}
    read = other_rep.gql("query($id: ID!) { contact(id: $id) { lastName title } }",
                         {"id": mine_id})
    assert read["data"]["contact"] == {"lastName": "Ownrecord", "title": "Buyer"}

    # ...but another rep's record, or the manager's, cannot be changed or deleted.
    for target in (mine_id, seeded["contact_id"]):
        before = contact_row(appliance, target)
        refused = other_rep.gql(UPDATE_CONTACT, {"id": target, "input": {"title": "Hijacked"}})
        assert codes(refused) == ["FORBIDDEN"], refused
        assert no_data(refused)
        deleted = other_rep.gql(DELETE_CONTACT, {"id": target})
        assert codes(deleted) == ["FORBIDDEN"], deleted
        after = contact_row(appliance, target)
        assert after is not None and before is not None
        assert (after.title, after.updated_at) == (before.title, before.updated_at)

    # The owner can.
    updated = rep.gql(UPDATE_CONTACT, {"id": mine_id, "input": {"title": "Chief Buyer"}})
    assert "errors" not in updated, updated
    assert updated["data"]["updateContact"] == {"id": mine_id, "title": "Chief Buyer"}
    assert contact_row(appliance, mine_id).title == "Chief Buyer"  # type: ignore[union-attr]


def test_other_team_manager_cannot_see_east_records(appliance: Appliance, caller: Any) -> None:
    seeded = seed_record(caller)
    west = caller("sales_manager", team="west")
    own = west.gql(CONTACT_CREATE, {"input": {"lastName": "Westerly"}})
    own_id = own["data"]["createContact"]["id"]
    by_id = west.gql("query($id: ID!) { contact(id: $id) { id lastName email } }",
                     {"id": seeded["contact_id"]})
    assert codes(by_id) == ["NOT_FOUND"], by_id
    assert no_data(by_id)
    assert_no_leak(json.dumps(by_id), CONTACT_INPUT, allowed=set())
    account = west.gql("query($id: ID!) { account(id: $id) { id name } }",
                       {"id": seeded["account_id"]})
    assert codes(account) == ["NOT_FOUND"], account
    listed = west.gql("{ contacts(first: 100) { edges { node { id } } } }")
    assert [e["node"]["id"] for e in listed["data"]["contacts"]["edges"]] == [own_id]
    # Nor through a search on the blind index, nor by writing to it.
    found = west.gql('query($e: String!) { contacts(filter: {email: $e}) { edges { node { id } } } }',
                     {"e": CONTACT_INPUT["email"]})
    assert found["data"]["contacts"]["edges"] == [], found
    hijack = west.gql(UPDATE_CONTACT, {"id": seeded["contact_id"], "input": {"title": "x"}})
    assert codes(hijack) == ["NOT_FOUND"], hijack
    # And the east account cannot be linked to a west contact.
    linked = west.gql(CONTACT_CREATE, {"input": {"lastName": "Linker",
                                                 "accountId": seeded["account_id"]}})
    assert codes(linked) == ["BAD_USER_INPUT"], linked
    assert contact_row(appliance, seeded["contact_id"]).title == CONTACT_INPUT["title"]  # type: ignore[union-attr]


def test_support_agent_cannot_create_update_or_delete(appliance: Appliance, caller: Any) -> None:
    seeded = seed_record(caller)
    agent = caller("support_agent", team=TEAM)
    before = count_rows(appliance, Contact)
    created = agent.gql(CONTACT_CREATE, {"input": {"lastName": "Sneaky"}})
    assert codes(created) == ["FORBIDDEN"], created
    updated = agent.gql(UPDATE_CONTACT, {"id": seeded["contact_id"], "input": {"title": "x"}})
    assert codes(updated) == ["FORBIDDEN"], updated
    deleted = agent.gql(DELETE_CONTACT, {"id": seeded["contact_id"]})
    assert codes(deleted) == ["FORBIDDEN"], deleted
    account = agent.gql(ACCOUNT_CREATE, {"input": {"name": "Sneaky Ltd"}})
    assert codes(account) == ["FORBIDDEN"], account
    assert count_rows(appliance, Contact) == before
    assert count_rows(appliance, Account) == 1
    row = contact_row(appliance, seeded["contact_id"])
    assert row is not None and row.title == CONTACT_INPUT["title"]
    # It can still read what support_agent is granted.
    read = agent.gql("query($id: ID!) { contact(id: $id) { lastName email } }",
                     {"id": seeded["contact_id"]})
    assert read == {"data": {"contact": {"lastName": CONTACT_INPUT["lastName"],
                                         "email": CONTACT_INPUT["email"]}}}


# -- 3. masks and policy changes through the API -----------------------------------------------

GRANT = """
mutation($rule: PolicyRuleInput!) { grantPolicy(rule: $rule) { policyVersion } }
"""
REVOKE = """
mutation($rule: PolicyRuleInput!) { revokePolicy(rule: $rule) { policyVersion } }
"""


def rule_input(role: str, obj: str, field: str, action: str) -> dict[str, str]:
    return {"role": role, "objectType": obj, "field": field, "action": action}


def policy_rows(appliance: Appliance) -> set[tuple[str, str, str, str]]:
    with appliance.sessions() as session:
        return set(session.execute(select(PolicyRule.role, PolicyRule.object_type,
                                          PolicyRule.field, PolicyRule.action)).all())


def test_mask_grant_and_revoke_through_the_api(appliance: Appliance, caller: Any) -> None:
    seeded = seed_record(caller)
    contact_id = seeded["contact_id"]
    admin = caller("admin")
    integration = caller("integration", team=TEAM)
    query = ("query($id: ID!) { contact(id: $id) { id email firstName phone nationalId "
             "account { id } } }")

    # Before any grant: the record does not exist for the integration.
    before = integration.gql(query, {"id": contact_id})
    assert codes(before) == ["NOT_FOUND"], before

    # A non-admin cannot grant, and nothing changes.
    rules_before = policy_rows(appliance)
    manager = seeded["manager"]
    sneaky = manager.gql(GRANT, {"rule": rule_input("sales_manager", "audit", "@all", "read")})
    assert codes(sneaky) == ["FORBIDDEN"], sneaky
    assert no_data(sneaky)
    sneaky = manager.gql(GRANT, {"rule": rule_input("integration", "contact", "@all", "read")})
    assert codes(sneaky) == ["FORBIDDEN"], sneaky
    assert policy_rows(appliance) == rules_before

    # The admin grants a masked email and a record rule.
    first = admin.gql(GRANT, {"rule": rule_input("integration", "contact", "email",
                                                 "read_masked")})
    assert "errors" not in first, first
    second = admin.gql(GRANT, {"rule": rule_input("integration", "contact", "@all", "read")})
    assert "errors" not in second, second
    assert second["data"]["grantPolicy"]["policyVersion"] == \
        first["data"]["grantPolicy"]["policyVersion"] + 1

    seen = integration.gql(query, {"id": contact_id})
    contact = seen["data"]["contact"]
    assert contact["id"] == contact_id
    assert contact["email"] == "q***@example.org"
    assert contact["firstName"] is None and contact["phone"] is None
    assert contact["nationalId"] is None and contact["account"] is None
    assert refused_paths(seen) == {("contact", f) for f in
                                   ("firstName", "phone", "nationalId", "account")}
    assert_no_leak(json.dumps(seen), CONTACT_INPUT, allowed=set())

    # Both grants are in the audit log, by the admin; the refused attempts are too.
    with appliance.sessions() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    grants = [e for e in events if e.action == "policy.grant"]
    assert [json.loads(e.fields) for e in grants] == [["integration|contact|email|read_masked"],
                                                      ["integration|contact|@all|read"]]
    assert {e.actor for e in grants} == {f"client:{admin.client_id}"}
    assert all(e.decision == "allow" for e in grants)
    refusals = [e for e in events if e.action == "policy.refused"
                and e.actor == f"client:{manager.client_id}"]
    assert len(refusals) == 2 and all(e.decision == "deny" and e.reason for e in refusals)
    # The masked read is audited as masked.
    reads = [e for e in events if e.action == "contact.read"
             and e.actor == f"client:{integration.client_id}"]
    assert json.loads(reads[-1].fields) == ["email:masked"]

    # Revoking takes effect on the very next request.
    revoked = admin.gql(REVOKE, {"rule": rule_input("integration", "contact", "email",
                                                    "read_masked")})
    assert "errors" not in revoked, revoked
    after = integration.gql("query($id: ID!) { contact(id: $id) { id email } }",
                            {"id": contact_id})
    assert after["data"]["contact"] == {"id": contact_id, "email": None}
    assert refused_paths(after) == {("contact", "email")}
    revoked = admin.gql(REVOKE, {"rule": rule_input("integration", "contact", "@all", "read")})
    assert "errors" not in revoked, revoked
    gone = integration.gql("query($id: ID!) { contact(id: $id) { id } }", {"id": contact_id})
    assert codes(gone) == ["NOT_FOUND"], gone
    with appliance.sessions() as session:
        actions = list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.action == "policy.revoke")))
    assert len(actions) == 2


def test_a_field_that_may_not_be_read_cannot_be_searched(appliance: Appliance,
                                                         caller: Any) -> None:
    """An equality filter on a refused field would be an oracle for its value."""
    seeded = seed_record(caller)
    admin = caller("admin")
    for rule in (rule_input("integration", "contact", "@all", "read"),
                 rule_input("integration", "contact", "last_name", "read")):
        assert "errors" not in admin.gql(GRANT, {"rule": rule})
    integration = caller("integration", team=TEAM)
    search = ("query($f: ContactFilter) { contacts(filter: $f) "
              "{ edges { node { id lastName } } } }")
    listed = integration.gql(search, {"f": {}})
    assert [e["node"]["lastName"] for e in listed["data"]["contacts"]["edges"]] == \
        [CONTACT_INPUT["lastName"]]
    for flt in ({"email": CONTACT_INPUT["email"]}, {"email": "nobody@example.org"},
                {"phone": CONTACT_INPUT["phone"]}, {"owner": seeded["manager"].client_id},
                {"accountId": seeded["account_id"]}):
        body = integration.gql(search, {"f": flt})
        assert codes(body) == ["FORBIDDEN"], (flt, body)
        assert no_data(body), (flt, body)
    with appliance.sessions() as session:
        refusals = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.refused",
            AuditEvent.actor == f"client:{integration.client_id}")))
    assert {f for e in refusals for f in json.loads(e.fields)} == {"email", "phone", "owner",
                                                                   "account"}
    # A masked grant is a grant: the masked reader may look a contact up by it.
    assert "errors" not in admin.gql(GRANT, {"rule": rule_input("integration", "contact", "email",
                                                                "read_masked")})
    found = integration.gql(search, {"f": {"email": CONTACT_INPUT["email"]}})
    assert [e["node"]["id"] for e in found["data"]["contacts"]["edges"]] == \
        [seeded["contact_id"]], found


def test_policy_grants_are_validated(caller: Any) -> None:
    admin = caller("admin")
    for bad in (rule_input("integration", "contact", "no_such_field", "read"),
                rule_input("integration", "contact", "@all", "read_masked"),
                rule_input("Integration!", "contact", "email", "read"),
                rule_input("integration", "audit", "email", "read")):
        body = admin.gql(GRANT, {"rule": bad})
        assert codes(body) == ["BAD_USER_INPUT"], (bad, body)
    dup = admin.gql(GRANT, {"rule": rule_input("sales_manager", "contact", "@team", "read")})
    assert codes(dup) == ["CONFLICT"], dup


# -- 4. decisions are cached per policy version, not per row -----------------------------------

def _bump_policy(appliance: Appliance, n: int) -> None:
    admin = Principal(id="admin-op", name="admin-op", roles=("admin",), kind="operator")
    with unit_of_work(appliance, admin) as ctx:
        policy_ops.grant(ctx, Rule("integration", "account", "name" if n == 0 else "industry",
                                   "read"))


def test_decisions_are_cached_per_policy_version_not_per_row(
        appliance: Appliance, caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 50
    manager_principal = Principal(id="seed-mgr", name="seed", roles=("sales_manager",),
                                  team=TEAM, kind="operator")
    with unit_of_work(appliance, manager_principal) as ctx:
        for i in range(rows):
            contact_ops.create_contact(ctx, {
                "last_name": f"Row{i:02d}", "first_name": "F", "title": "T",
                "email": f"row{i}@example.com", "phone": f"+1 555 01{i:02d}",
                "address": "A", "birth_date": "1990-01-01", "national_id": f"N-{i}",
                "notes": "n"})
    manager = caller("sales_manager", team=TEAM)

    calls: list[tuple[str, ...]] = []
    real = authz.PolicySnapshot._enforce

    def counting(self: authz.PolicySnapshot, *args: str) -> bool:
        calls.append(args)
        return real(self, *args)

    monkeypatch.setattr(authz.PolicySnapshot, "_enforce", counting)
    fields = selection(CONTACT, nested_account="id name")
    query = ("query($n: Int!) { contacts(first: $n) { edges { node { FIELDS } } } }"
             .replace("FIELDS", fields))

    def run(n: int) -> int:
        before = len(calls)
        body = manager.gql(query, {"n": n})
        assert "errors" not in body, body
        assert len(body["data"]["contacts"]["edges"]) == n
        return len(calls) - before

    _bump_policy(appliance, 0)  # a fresh snapshot: nothing memoised yet
    calls.clear()
    first = run(rows)
    again = run(rows)
    assert again == 0, f"an identical request asked Casbin {again} more times"
    # Upper bound for one role: each queried field at most read + read_masked, each object's
    # record rules at most once per scope for read (and write) -- nothing multiplied by rows.
    queried = len(CONTACT.fields) + 2
    bound = queried * 2 + len(authz.SCOPES) * 2 * 2
    assert 0 < first <= bound, (first, bound)
    assert first < rows, "Casbin was asked about as often as there are rows"

    # The same request over 5 rows on a fresh version costs exactly what 50 rows cost.
    _bump_policy(appliance, 1)
    calls.clear()
    five = run(5)
    assert five == first, (five, first)
    assert run(5) == 0 and run(rows) == 0


# -- 5. refused writes write nothing -------------------------------------------------------------

def test_refused_write_writes_nothing(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team=TEAM)
    contacts_before = count_rows(appliance, Contact)
    keys_before = count_rows(appliance, SubjectKey)
    body = rep.gql(CONTACT_CREATE, {"input": {"lastName": "Forbidden", "email": "f@example.com",
                                              "nationalId": "ZZ-999"}})
    assert codes(body) == ["FORBIDDEN"], body
    assert no_data(body)
    assert "nationalId" in body["errors"][0]["extensions"].get("fields", []), body
    assert count_rows(appliance, Contact) == contacts_before
    assert count_rows(appliance, SubjectKey) == keys_before
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Contact).where(
            Contact.last_name == "Forbidden")) == 0
        refusal = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.refused",
            AuditEvent.actor == f"client:{rep.client_id}")).all()
    assert len(refusal) == 1 and refusal[0].decision == "deny"
    assert json.loads(refusal[0].fields) == ["national_id"]
    assert "ZZ-999" not in (refusal[0].reason or "")

    # In one document, an allowed mutation keeps its write and the refused one leaves none.
    two = rep.gql("""mutation {
      b: createContact(input: {lastName: "Allowed", email: "ok@example.com"}) { id email }
      a: createContact(input: {lastName: "Forbidden", birthDate: "1990-01-01"}) { id }
    }""")
    assert codes(two) == ["FORBIDDEN"], two
    assert two["errors"][0]["path"] == ["a"]
    assert count_rows(appliance, Contact) == contacts_before + 1
    with appliance.sessions() as session:
        names = set(session.scalars(select(Contact.last_name)))
        own_id = session.scalar(select(Contact.id).where(Contact.last_name == "Allowed"))
    assert "Forbidden" not in names and own_id is not None

    # An update with a restricted field is refused whole: the allowed part is not applied.
    mixed = rep.gql(UPDATE_CONTACT, {"id": own_id, "input": {"title": "Changed",
                                                              "nationalId": "YY-1"}})
    assert codes(mixed) == ["FORBIDDEN"], mixed
    row = contact_row(appliance, own_id)
    assert row is not None and row.title is None and row.national_id is None


def test_a_forbidden_write_with_an_invalid_value_is_still_refused_and_audited(
        appliance: Appliance, caller: Any) -> None:
    """Permission is decided before any value is looked at: a bad value must not turn a
    refusal into an unaudited BAD_USER_INPUT (nor teach the rules of a field one may not
    write)."""
    manager = caller("sales_manager", team=TEAM)
    created = manager.gql(CONTACT_CREATE, {"input": {"lastName": "Owned"}})
    contact_id = created["data"]["createContact"]["id"]
    rep, support = caller("sales_rep", team=TEAM), caller("support_agent")
    update = ("mutation($id: ID!, $input: ContactPatch!) { updateContact(id: $id, "
              "input: $input) { id } }")
    attempts = [
        # a field the role may not write, with a value that would not validate either
        (rep, CONTACT_CREATE, {"input": {"lastName": "D", "nationalId": "!!"}}, "FORBIDDEN"),
        # a record the role may not change, with an invalid email
        (support, update, {"id": contact_id, "input": {"lastName": "X", "email": "bad"}},
         "FORBIDDEN"),
        # a role that may not create contacts at all, with an invalid email
        (support, CONTACT_CREATE, {"input": {"lastName": "Y", "email": "bad"}}, "FORBIDDEN"),
    ]
    for who, document, variables, code in attempts:
        before = count_rows(appliance, AuditEvent)
        body = who.gql(document, variables)
        assert codes(body) == [code], (variables, body)
        with appliance.sessions() as session:
            refusals = session.scalars(select(AuditEvent).where(
                AuditEvent.seq > before, AuditEvent.action == "contact.refused",
                AuditEvent.actor == f"client:{who.client_id}")).all()
        assert len(refusals) == 1 and refusals[0].decision == "deny", variables
    # The manager, who may write the contact, still gets the validation error.
    bad = manager.gql(update, {"id": contact_id, "input": {"email": "bad"}})
    assert codes(bad) == ["BAD_USER_INPUT"], bad
