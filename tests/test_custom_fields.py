"""Custom fields: definitions (admin only, audited, policy version bumped), values typed and
validated, encrypted by classification, and covered by the default grants of their class.

Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from schema.context import unit_of_work
from schema.ops import custom_fields as custom_ops
from schema.ops import records
from schema.ops.custom_values import CustomValue, read_custom
from schema.runtime import Appliance
from security.authz import current_policy_version
from security.errors import BadUserInput, Forbidden
from security.guard import FieldForbidden
from security.principal import Principal
from storage.models import AuditEvent, Contact

TEAM = "east"
SECRET_VALUE = "TAXREF-77-QUILLON"

DEFINE = """
mutation($o: String!, $k: String!, $t: String!, $c: String!, $l: String) {
  defineCustomField(objectType: $o, key: $k, type: $t, classification: $c, label: $l) {
    objectType key type classification label
  }
}"""
DEFINITIONS = """
query($o: String!) { customFieldDefinitions(objectType: $o) { key type classification } }"""
REMOVE = """
mutation($o: String!, $k: String!) { removeCustomField(objectType: $o, key: $k) {
  key valuesRemoved } }"""


def _op(*roles: str, team: str | None = TEAM, id: str = "tester") -> Principal:
    return Principal(id=id, name=id, roles=roles, team=team, kind="operator")


def _define(appliance: Appliance, object_type: str, key: str, value_type: str,
            classification: str) -> None:
    with unit_of_work(appliance, _op("admin", team=None)) as ctx:
        custom_ops.define(ctx, object_type=object_type, key=key, value_type=value_type,
                          classification=classification)


def _codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors", [])]


def _contact_with(appliance: Appliance, custom: list[CustomValue]) -> str:
    with unit_of_work(appliance, _op("sales_manager", id="mgr")) as ctx:
        row = records.create_record(ctx, "contact", {"last_name": "Ollerton"}, custom=custom)
        return str(row.id)


def test_admin_defines_over_graphql_policy_version_bumps_and_it_is_audited(
        appliance: Appliance, caller: Any) -> None:
    admin = caller("admin")
    with appliance.sessions() as session:
        before = current_policy_version(session)
    result = admin.gql(DEFINE, {"o": "contact", "k": "loyalty_tier", "t": "text",
                                "c": "internal", "l": "Loyalty tier"})
    assert "errors" not in result, result
    assert result["data"]["defineCustomField"] == {
        "objectType": "contact", "key": "loyalty_tier", "type": "text",
        "classification": "internal", "label": "Loyalty tier"}
    listed = caller("sales_rep", team=TEAM).gql(DEFINITIONS, {"o": "contact"})
    assert listed["data"]["customFieldDefinitions"] == [
        {"key": "loyalty_tier", "type": "text", "classification": "internal"}]
    with appliance.sessions() as session:
        assert current_policy_version(session) == before + 1
        entry = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "custom_field.define")).one()
        assert entry.actor == f"client:{admin.client_id}"
        assert "contact.custom:loyalty_tier" in json.loads(entry.fields)
    # The same key twice is a conflict; a built-in name is refused.
    again = admin.gql(DEFINE, {"o": "contact", "k": "loyalty_tier", "t": "text", "c": "public"})
    assert _codes(again) == ["CONFLICT"]
    builtin = admin.gql(DEFINE, {"o": "contact", "k": "email", "t": "text", "c": "public"})
    assert _codes(builtin) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize("variables, field", [
    ({"o": "contact", "k": "Bad-Key", "t": "text", "c": "public"}, "key"),
    ({"o": "contact", "k": "x" * 42, "t": "text", "c": "public"}, "key"),
    ({"o": "contact", "k": "ok", "t": "float", "c": "public"}, "type"),
    ({"o": "contact", "k": "ok", "t": "text", "c": "secret"}, "classification"),
    ({"o": "spaceship", "k": "ok", "t": "text", "c": "public"}, "objectType"),
])
def test_definition_input_is_validated(caller: Any, variables: dict[str, str],
                                       field: str) -> None:
    result = caller("admin").gql(DEFINE, variables)
    assert result["data"]["defineCustomField"] is None
    assert _codes(result) == ["BAD_USER_INPUT"]
    assert result["errors"][0]["extensions"]["field"] == field


def test_non_admin_cannot_define_or_remove_and_the_refusal_is_audited(
        appliance: Appliance, caller: Any) -> None:
    manager = caller("sales_manager", team=TEAM)
    result = manager.gql(DEFINE, {"o": "contact", "k": "sneaky", "t": "text", "c": "public"})
    assert result["data"]["defineCustomField"] is None
    assert _codes(result) == ["FORBIDDEN"]
    _define(appliance, "contact", "tier", "text", "public")
    removed = manager.gql(REMOVE, {"o": "contact", "k": "tier"})
    assert _codes(removed) == ["FORBIDDEN"]
    with appliance.sessions() as session:
        refusals = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "custom_field.refused",
            AuditEvent.actor == f"client:{manager.client_id}")).all()
        assert refusals and all(r.decision == "deny" for r in refusals)
    nobody = caller("integration")
    assert _codes(nobody.gql(DEFINITIONS, {"o": "contact"})) == ["FORBIDDEN"]


def test_values_are_typed_and_read_back_typed(appliance: Appliance) -> None:
    _define(appliance, "lead", "budget", "number", "internal")
    _define(appliance, "lead", "vip", "boolean", "public")
    _define(appliance, "lead", "renewal", "date", "internal")
    _define(appliance, "lead", "nickname", "text", "public")
    with unit_of_work(appliance, _op("sales_manager", id="mgr")) as ctx:
        lead = records.create_record(ctx, "lead", {"last_name": "Pemberly"}, custom=[
            CustomValue("budget", "1250.50"), CustomValue("vip", True),
            CustomValue("renewal", "2027-03-01"), CustomValue("nickname", "Pem")])
        lead_id = lead.id
    with unit_of_work(appliance, _op("sales_manager", id="mgr")) as ctx:
        row = records.get_visible(ctx, records.model_of("lead"), "lead", lead_id)
        values = {r.key: (r.value_type, r.value) for r in read_custom(ctx, "lead", row)}
    assert values == {"budget": ("number", "1250.50"), "vip": ("boolean", True),
                      "renewal": ("date", "2027-03-01"), "nickname": ("text", "Pem")}
    bad = [("budget", "a lot"), ("vip", "yes"), ("renewal", "2027-13-45"), ("nickname", 5)]
    for key, value in bad:
        with pytest.raises(BadUserInput) as caught, \
                unit_of_work(appliance, _op("sales_manager", id="mgr")) as ctx:
            records.create_record(ctx, "lead", {"last_name": "X"},
                                  custom=[CustomValue(key, value)])
        assert caught.value.extra["field"] == f"customFields.{key}"
    with pytest.raises(BadUserInput), \
            unit_of_work(appliance, _op("sales_manager", id="mgr")) as ctx:
        records.create_record(ctx, "lead", {"last_name": "X"},
                              custom=[CustomValue("undefined_key", "v")])


def test_restricted_value_is_sealed_and_refused_to_sales_rep_but_read_by_manager(
        appliance: Appliance) -> None:
    _define(appliance, "contact", "tax_ref", "text", "restricted")
    _define(appliance, "contact", "segment", "text", "confidential")
    contact_id = _contact_with(appliance, [CustomValue("tax_ref", SECRET_VALUE),
                                           CustomValue("segment", "enterprise")])
    with appliance.engine.connect() as connection:
        raw = connection.exec_driver_sql("SELECT * FROM contacts").fetchall()
    assert SECRET_VALUE not in repr(raw) and "enterprise" not in repr(raw)
    with appliance.sessions() as session:
        row = session.get(Contact, contact_id)
        assert row is not None and row.custom_sealed is not None and not row.custom_plain

    # The manager (every class) reads both.
    with unit_of_work(appliance, _op("sales_manager", id="mgr")) as ctx:
        row = records.get_visible(ctx, Contact, "contact", contact_id)
        assert {r.key: r.value for r in read_custom(ctx, "contact", row)} == {
            "tax_ref": SECRET_VALUE, "segment": "enterprise"}
    # The rep (up to confidential) gets the confidential one; the restricted one is absent from
    # the default list, and asked for by key it is FORBIDDEN and audited.
    with unit_of_work(appliance, _op("sales_rep", id="rep")) as ctx:
        row = records.get_visible(ctx, Contact, "contact", contact_id)
        assert {r.key: r.value for r in read_custom(ctx, "contact", row)} == {
            "segment": "enterprise"}
    with pytest.raises(FieldForbidden), unit_of_work(appliance, _op("sales_rep", id="rep")) as ctx:
        row = records.get_visible(ctx, Contact, "contact", contact_id)
        read_custom(ctx, "contact", row, ["tax_ref"])
    with appliance.sessions() as session:
        refused = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.refused", AuditEvent.actor == "operator:rep")).all()
        assert any("custom:tax_ref" in json.loads(r.fields) for r in refused)
    # Nor may the rep write it.
    with pytest.raises(Forbidden), unit_of_work(appliance, _op("sales_rep", id="rep")) as ctx:
        records.create_record(ctx, "contact", {"last_name": "Y"},
                              custom=[CustomValue("tax_ref", "Z-1")])


def test_removing_a_field_removes_its_values_so_a_new_field_of_that_key_starts_empty(
        appliance: Appliance, caller: Any) -> None:
    _define(appliance, "contact", "tax_ref", "text", "restricted")
    _define(appliance, "contact", "tier", "text", "public")
    contact_id = _contact_with(appliance, [CustomValue("tax_ref", SECRET_VALUE),
                                           CustomValue("tier", "gold")])
    result = caller("admin").gql(REMOVE, {"o": "contact", "k": "tax_ref"})
    assert "errors" not in result, result
    assert result["data"]["removeCustomField"] == {"key": "tax_ref", "valuesRemoved": 1}
    assert caller("admin").gql(REMOVE, {"o": "contact", "k": "tier"})["data"][
        "removeCustomField"]["valuesRemoved"] == 1
    # Redefined with a weaker class, the old value does not come back.
    _define(appliance, "contact", "tax_ref", "text", "confidential")
    with unit_of_work(appliance, _op("sales_rep", id="rep")) as ctx:
        row = records.get_visible(ctx, Contact, "contact", contact_id)
        assert [(r.key, r.value) for r in read_custom(ctx, "contact", row)] == [
            ("tax_ref", None)]
    with appliance.sessions() as session:
        row = session.get(Contact, contact_id)
        assert row is not None and not row.custom_plain
    assert _codes(caller("admin").gql(REMOVE, {"o": "contact", "k": "tier"})) == ["NOT_FOUND"]


CREATE_CONTACT = """
mutation($input: ContactInput!) { createContact(input: $input) { id } }"""
READ_CONTACT = """
query($id: ID!) { contact(id: $id) { lastName
  customFields { key type text number boolean date } } }"""
READ_BY_KEY = """
query($id: ID!) { contact(id: $id) { lastName customFields(keys: ["tax_ref"]) { key text } } }"""


def test_contact_and_account_custom_fields_over_graphql(appliance: Appliance,
                                                        caller: Any) -> None:
    admin = caller("admin")
    for key, kind, cls in (("tax_ref", "text", "restricted"), ("score", "number", "internal"),
                           ("renewal", "date", "confidential")):
        assert "errors" not in admin.gql(DEFINE, {"o": "contact", "k": key, "t": kind, "c": cls})
    assert "errors" not in admin.gql(DEFINE, {"o": "account", "k": "partner", "t": "boolean",
                                              "c": "public"})
    manager = caller("sales_manager", team=TEAM)
    made = manager.gql(CREATE_CONTACT, {"input": {"lastName": "Pennywhistle", "customFields": [
        {"key": "tax_ref", "text": SECRET_VALUE}, {"key": "score", "number": "7.25"},
        {"key": "renewal", "date": "2027-01-31"}]}})
    assert "errors" not in made, made
    contact_id = made["data"]["createContact"]["id"]
    seen = manager.gql(READ_CONTACT, {"id": contact_id})["data"]["contact"]["customFields"]
    assert sorted(seen, key=lambda v: v["key"]) == [
        {"key": "renewal", "type": "date", "text": None, "number": None, "boolean": None,
         "date": "2027-01-31"},
        {"key": "score", "type": "number", "text": None, "number": "7.25", "boolean": None,
         "date": None},
        {"key": "tax_ref", "type": "text", "text": SECRET_VALUE, "number": None,
         "boolean": None, "date": None}]
    # The rep: the restricted value is absent from the list, and FORBIDDEN by key.
    rep = caller("sales_rep", team=TEAM)
    listed = rep.gql(READ_CONTACT, {"id": contact_id})
    assert "errors" not in listed, listed
    assert sorted(v["key"] for v in listed["data"]["contact"]["customFields"]) == [
        "renewal", "score"]
    assert SECRET_VALUE not in json.dumps(listed)
    by_key = rep.gql(READ_BY_KEY, {"id": contact_id})
    # customFields is a non-null list on Contact, so the refusal nulls the contact.
    assert (by_key["data"]["contact"] or {}).get("customFields") is None
    assert _codes(by_key) == ["FORBIDDEN"]
    assert SECRET_VALUE not in json.dumps(by_key)
    # Type errors name the field; nothing is written.
    bad = manager.gql(CREATE_CONTACT, {"input": {"lastName": "Q", "customFields": [
        {"key": "score", "text": "high"}]}})
    assert _codes(bad) == ["BAD_USER_INPUT"]
    assert bad["errors"][0]["extensions"]["field"] == "customFields.score"
    account = manager.gql("mutation { createAccount(input: {name: \"Quarry Works\", "
                          "customFields: [{key: \"partner\", boolean: true}]}) "
                          "{ customFields { key boolean } } }")
    assert account["data"]["createAccount"]["customFields"] == [
        {"key": "partner", "boolean": True}]


def test_removing_a_field_revokes_rules_that_name_it(appliance: Appliance, caller: Any) -> None:
    _define(appliance, "contact", "tax_ref", "text", "restricted")
    admin = caller("admin")
    grant = admin.gql("mutation { grantPolicy(rule: {role: \"sales_rep\", objectType: "
                      "\"contact\", field: \"custom:tax_ref\", action: \"read\"}) "
                      "{ policyVersion } }")
    assert "errors" not in grant, grant
    assert "errors" not in admin.gql(REMOVE, {"o": "contact", "k": "tax_ref"})
    _define(appliance, "contact", "tax_ref", "text", "restricted")
    contact_id = _contact_with(appliance, [CustomValue("tax_ref", SECRET_VALUE)])
    with pytest.raises(FieldForbidden), unit_of_work(appliance, _op("sales_rep", id="rep")) as ctx:
        row = records.get_visible(ctx, Contact, "contact", contact_id)
        read_custom(ctx, "contact", row, ["tax_ref"])
    with appliance.sessions() as session:
        entry = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "custom_field.remove")).one()
        assert "revoked:sales_rep|contact|custom:tax_ref|read" in json.loads(entry.fields)
