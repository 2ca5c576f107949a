"""The role x field matrix for every CRM object beyond accounts and contacts, generated from the
default policy's rule list (not from the authoriser), checked over real HTTP GraphQL.

For each object a record is seeded with every field filled (through the generic record
operations, so sealed fields are sealed as in production); then every built-in role reads it
by id: granted fields show the true value, masked ones the masked form, refused ones (and
`read_consented` fields, since nobody here consented) are null with FORBIDDEN at their own path;
a role with no record rule gets NOT_FOUND; no refused value appears anywhere in the answer.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any

from schema.context import unit_of_work
from schema.ops.records import create_record
from schema.runtime import Appliance
from security.authz import Rule
from security.classification import OBJECTS, FieldSpec, ObjectSpec, mask_value
from security.default_policy import ROLES, default_rules
from tests.conftest import operator
from tests.test_authorisation import (
    assert_no_leak,
    camel,
    codes,
    no_data,
    read_scopes,
    refused_paths,
    sees_record,
)

TEAM = "east"
SEEDER = operator("sales_manager", "support_agent", "marketing", team=TEAM, id="seeder")
NOW = dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.UTC)

#: Values valid for every module's GraphQL types (enums included), distinctive where free text.
VALUES: dict[str, Any] = {
    "first_name": "Quillon", "last_name": "Vantablack-Orr", "company": "Zephyrine Looms",
    "email": "zq.secret@example.org", "phone": "+1 555 0199", "source": "web",
    "score": 73, "name": "Heliotrope Deal", "amount": decimal.Decimal("125000.50"),
    "currency": "EUR", "probability": 40, "expected_close": dt.date(2027, 3, 31),
    "description": "confidential pricing xylograph", "kind": "call",
    "subject": "Quarterly review", "body": "spoke about the merger quietly",
    "occurred_at": NOW, "due_at": NOW + dt.timedelta(days=2), "priority": "high",
    "assignee": "agent-7", "first_response_due": NOW + dt.timedelta(hours=4),
    "resolution_due": NOW + dt.timedelta(days=1), "channel": "email",
    "budget": decimal.Decimal("5000.00"), "starts_on": dt.date(2026, 12, 1),
    "ends_on": dt.date(2026, 12, 31), "purpose": "marketing", "granted": True,
    "recorded_at": NOW, "evidence": "signed form ref 88-kappa",
}
STATUS = {"lead": "working", "case": "open", "campaign": "active", "campaign_member": "added"}
#: Fields left empty on purpose (set by later life-cycle steps, or computed).
LEFT_EMPTY = {"converted_at", "converted_contact", "converted_account", "converted_opportunity",
              "done_at", "closed_at", "first_response_at", "resolved_at", "response_breached",
              "resolution_breached", "owner", "team", "created_at", "updated_at"}
#: Reference fields: the object type they point at (None: a pipeline stage, not a record).
TARGETS = {"account": "account", "contact": "contact", "lead": "lead",
           "opportunity": "opportunity", "case": "case", "campaign": "campaign",
           "stage": None, "converted_contact": "contact", "converted_account": "account",
           "converted_opportunity": "opportunity"}


def _seed(appliance: Appliance) -> dict[str, str]:
    """One record of every object, every field filled, all linked together."""
    ids: dict[str, str] = {}
    order = ("account", "contact", "lead", "opportunity", "case", "activity", "campaign",
             "campaign_member", "consent")
    with unit_of_work(appliance, SEEDER) as ctx:
        for object_type in order:
            spec = OBJECTS[object_type]
            values: dict[str, Any] = {}
            for fspec in spec.fields:
                if fspec.name in LEFT_EMPTY:
                    continue
                if fspec.name in TARGETS:
                    target = TARGETS[fspec.name]
                    values[fspec.attr] = "proposal" if target is None else ids.get(target)
                elif fspec.name == "status":
                    values["status"] = STATUS[object_type]
                elif object_type in ("account", "contact"):
                    values[fspec.attr] = {"name": "Umbra Textiles", "industry": "textiles",
                                          "website": "https://umbra.example.com",
                                          "title": "Buyer", "address": "9 Hidden Row",
                                          "notes": "prefers post", "birth_date": "1979-05-04",
                                          "national_id": "ZZ-998877"}.get(fspec.name,
                                                                          VALUES.get(fspec.name))
                else:
                    values[fspec.attr] = VALUES[fspec.name]
            if object_type == "campaign_member":
                values["lead_id"] = None  # a member is a contact or a lead
            record = create_record(ctx, object_type, values)
            ids[object_type] = record.id
    return ids


def _selection(spec: ObjectSpec) -> str:
    parts = ["id"]
    for fspec in spec.fields:
        name = camel(fspec.name)
        parts.append(f"{name} {{ id }}" if fspec.name in TARGETS else name)
    return " ".join(parts)


def _by_id(obj: str) -> str:
    return f"query($id: ID!) {{ {camel(obj)}(id: $id) {{ {_selection(OBJECTS[obj])} }} }}"


def _expected(rules: list[Rule], role: str, obj: str, fspec: FieldSpec) -> str:
    names = {fspec.name, f"class:{fspec.classification.value}"}
    granted = {r.action for r in rules
               if r.role == role and r.object_type == obj and r.field in names}
    if "read" in granted:
        return "allow"
    if "read_masked" in granted:
        return "mask"
    return "deny"  # including read_consented: nobody seeded here consented


def _truth(caller: Any, ids: dict[str, str], rules: list[Rule]) -> dict[str, dict[str, Any]]:
    """Each object's values as a role allowed every field of it reads them (checked against
    the seeded values where those are free text)."""
    truth: dict[str, dict[str, Any]] = {}
    for obj, record_id in ids.items():
        spec = OBJECTS[obj]
        found: dict[str, Any] = {}
        for role in ROLES:
            if not read_scopes(rules, role, obj):
                continue
            allowed = [f for f in spec.fields if _expected(rules, role, obj, f) == "allow"]
            if not allowed:
                continue
            body = caller(role, team=TEAM).gql(_by_id(obj), {"id": record_id})
            assert body.get("data") and body["data"][camel(obj)], (obj, role, body)
            node = body["data"][camel(obj)]
            for f in allowed:
                found.setdefault(camel(f.name), node[camel(f.name)])
        missing = {camel(f.name) for f in spec.fields} - set(found)
        assert not missing, f"no role reads {obj}.{missing} in full: the matrix cannot check it"
        for fspec in spec.sealed_fields:
            assert found[camel(fspec.name)] == VALUES.get(fspec.name, found[camel(fspec.name)])
        truth[obj] = found
    return truth


def test_crm_field_matrix_follows_the_policy(appliance: Appliance, caller: Any) -> None:
    rules = default_rules()
    ids = _seed(appliance)
    truth = _truth(caller, ids, rules)
    checked = {"allow": 0, "mask": 0, "deny": 0, "not_found": 0}
    for role in ROLES:
        client = caller(role, team=TEAM)
        for obj, record_id in ids.items():
            if obj in ("account", "contact"):
                continue  # tests/test_authorisation.py covers these two in depth
            spec = OBJECTS[obj]
            body = client.gql(_by_id(obj), {"id": record_id})
            values = truth[obj]
            secrets = {k: v for k, v in values.items() if isinstance(v, str)}
            if not sees_record(rules, role, obj, team=TEAM, record_team=TEAM,
                               caller_id=client.client_id, owner=SEEDER.id):
                assert no_data(body), (role, obj, body)
                assert codes(body) in (["NOT_FOUND"], ["FORBIDDEN"]), (role, obj, body)
                assert_no_leak(json.dumps(body), secrets, allowed=set())
                checked["not_found"] += 1
                continue
            node = body["data"][camel(obj)]
            assert node is not None and node["id"] == record_id, (role, obj, body)
            refused: set[tuple[Any, ...]] = set()
            for fspec in spec.fields:
                name = camel(fspec.name)
                decision = _expected(rules, role, obj, fspec)
                got, true_value = node[name], values[name]
                if decision == "allow":
                    if fspec.name in TARGETS and TARGETS[fspec.name] is not None \
                            and true_value is not None:
                        target = TARGETS[fspec.name]
                        assert target is not None
                        visible = sees_record(rules, role, target, team=TEAM, record_team=TEAM,
                                              caller_id=client.client_id, owner=SEEDER.id)
                        assert got == (true_value if visible else None), (role, obj, name, got)
                    else:
                        assert got == true_value, (role, obj, name, got, true_value)
                elif decision == "mask":
                    assert got == mask_value(fspec.mask, str(true_value)), (role, obj, name)
                else:
                    assert got is None, (role, obj, name, got)
                    if true_value is not None or fspec.sealed:
                        refused.add((camel(obj), name))
                checked[decision] += 1
            assert refused <= refused_paths(body), (role, obj, body)
            denied = {p[-1] for p in refused}
            assert_no_leak(json.dumps(body), secrets, allowed=set(secrets) - denied)
    # The matrix is not vacuous.
    assert checked["allow"] > 100 and checked["deny"] >= 10 and checked["not_found"] > 20, checked
