"""Leads, their conversion, exact search for people, and custom fields/events on contacts and
accounts, through GraphQL over real HTTP (every test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text

from schema.context import EVENT_SINKS, RecordEvent, RequestContext, unit_of_work
from schema.ops import accounts as account_ops
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance
from security.authz import bump_policy_version
from security.principal import Principal
from storage.crm_models import CustomFieldDef, Lead, Opportunity, PipelineStage, StageChange
from storage.ids import new_id
from storage.models import Account, AuditEvent, Contact, Erasure, SubjectKey

LEAD_FIELDS = ("id firstName lastName company email phone source status score owner team "
               "convertedAt convertedContact { id } convertedAccount { id } "
               "convertedOpportunity { id }")
CREATE = f"mutation($i: LeadInput!) {{ createLead(input: $i) {{ {LEAD_FIELDS} }} }}"
UPDATE = (f"mutation($id: ID!, $i: LeadPatch!) {{ updateLead(id: $id, input: $i) "
          f"{{ {LEAD_FIELDS} }} }}")
GET = f"query($id: ID!) {{ lead(id: $id) {{ {LEAD_FIELDS} }} }}"
LIST = "query { leads(first: 100) { edges { node { id lastName } } } }"
CONVERT = ("mutation($id: ID!, $i: ConvertLeadInput) { convertLead(id: $id, input: $i) { "
           "lead { id status convertedAt convertedContact { id } convertedAccount { id } "
           "convertedOpportunity { id } } "
           "contact { id firstName lastName email phone account { id } } account { id name } "
           "opportunity { id name amount currency probability stage { id } "
           "account { id } contact { id } } } }")
FIND = ("query($e: String, $p: String) { findPeople(email: $e, phone: $p) { "
        "contacts { id lastName } leads { id lastName } } }")
ANN = {"firstName": "Ann", "lastName": "Example", "company": "Example Ltd",
       "email": "ann.example@example.com", "phone": "+1 555 0101", "source": "web", "score": 40}


def _codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


def _error(result: dict[str, Any]) -> dict[str, Any]:
    errors = result.get("errors") or []
    assert len(errors) == 1, result
    return dict(errors[0])


def _create(who: Any, **overrides: Any) -> dict[str, Any]:
    result = who.gql(CREATE, {"i": {**ANN, **overrides}})
    assert "errors" not in result, result
    return dict(result["data"]["createLead"])


def _count(appliance: Appliance, model: Any) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _counts(appliance: Appliance) -> dict[str, int]:
    return {m.__tablename__: _count(appliance, m)
            for m in (Lead, Contact, Account, Opportunity, StageChange, SubjectKey)}


def _audit(appliance: Appliance, action: str) -> list[AuditEvent]:
    with appliance.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# -- CRUD and validation ---------------------------------------------------------------------------

def test_lead_crud(caller: Any) -> None:
    manager = caller("sales_manager", team="east")
    lead = _create(manager)
    assert {k: lead[k] for k in ANN} == ANN
    assert lead["status"] == "new" and lead["team"] == "east" and lead["convertedAt"] is None
    assert manager.gql(GET, {"id": lead["id"]})["data"]["lead"] == lead

    changed = manager.gql(UPDATE, {"id": lead["id"], "i": {"status": "qualified", "score": 85,
                                                          "phone": None}})
    assert "errors" not in changed, changed
    updated = changed["data"]["updateLead"]
    assert (updated["status"], updated["score"], updated["phone"]) == ("qualified", 85, None)
    assert updated["email"] == ANN["email"]  # untouched sealed field survives the re-seal

    listed = manager.gql(LIST)["data"]["leads"]["edges"]
    assert [e["node"]["id"] for e in listed] == [lead["id"]]

    deleted = manager.gql("mutation($id: ID!) { deleteLead(id: $id) { id } }", {"id": lead["id"]})
    assert deleted["data"]["deleteLead"]["id"] == lead["id"]
    gone = manager.gql(GET, {"id": lead["id"]})
    assert gone["data"]["lead"] is None and _codes(gone) == ["NOT_FOUND"]


@pytest.mark.parametrize(("patch", "field"), [
    ({"score": 101}, "score"),
    ({"score": -1}, "score"),
    ({"status": "converted"}, "status"),
    ({"status": "won"}, "status"),
    ({"email": "not-an-email"}, "email"),
    ({"phone": "call me"}, "phone"),
    ({"lastName": "   "}, "lastName"),
    ({"source": "x" * 51}, "source"),
])
def test_invalid_leads_are_refused_naming_the_field(caller: Any, appliance: Appliance,
                                                    patch: dict[str, Any], field: str) -> None:
    manager = caller("sales_manager", team="east")
    before = _count(appliance, Lead)
    created = manager.gql(CREATE, {"i": {**ANN, **patch}})
    error = _error(created)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["field"] == field
    assert created["data"]["createLead"] is None
    assert _count(appliance, Lead) == before

    lead = _create(manager)
    updated = manager.gql(UPDATE, {"id": lead["id"], "i": patch})
    assert _error(updated)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    assert manager.gql(GET, {"id": lead["id"]})["data"]["lead"] == lead


def test_raw_lead_rows_hold_no_plaintext_email_or_phone(caller: Any,
                                                        appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    lead = _create(manager, email="secret.person@example.org", phone="+1 555 0199")
    with appliance.engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM leads WHERE id = :id"),
                                 {"id": lead["id"]}).mappings().one()
    dump = repr(dict(row)).encode()
    assert b"secret.person" not in dump and b"555 0199" not in dump and b"5550199" not in dump
    assert row["email"] is not None and row["email_bidx"] and row["phone_bidx"]
    assert row["key_version"] is not None


# -- who sees which leads ------------------------------------------------------------------------

def test_sales_rep_sees_own_and_team_leads_never_other_teams(caller: Any) -> None:
    rep = caller("sales_rep", team="east")
    manager = caller("sales_manager", team="east")
    west = caller("sales_rep", team="west")
    own = _create(rep, lastName="Own")
    team = _create(manager, lastName="Team")
    other = _create(west, lastName="Other")

    seen = {e["node"]["lastName"] for e in rep.gql(LIST)["data"]["leads"]["edges"]}
    assert seen == {"Own", "Team"}
    hidden = rep.gql(GET, {"id": other["id"]})
    assert hidden["data"]["lead"] is None and _codes(hidden) == ["NOT_FOUND"]
    # A team mate's lead is readable, not writable; another team's does not exist for them.
    refused = rep.gql(UPDATE, {"id": team["id"], "i": {"score": 1}})
    assert _codes(refused) == ["FORBIDDEN"]
    assert _codes(rep.gql(UPDATE, {"id": other["id"], "i": {"score": 1}})) == ["NOT_FOUND"]
    assert _codes(west.gql(CONVERT, {"id": own["id"]})) == ["NOT_FOUND"]
    assert rep.gql(UPDATE, {"id": own["id"], "i": {"score": 9}})["data"]["updateLead"]["score"] == 9


def test_support_agent_gets_nothing_on_leads(caller: Any, appliance: Appliance) -> None:
    _create(caller("sales_manager", team="east"))
    support = caller("support_agent", team="east")
    listed = support.gql(LIST)
    assert listed["data"]["leads"] is None and _codes(listed) == ["FORBIDDEN"]
    created = support.gql(CREATE, {"i": ANN})
    assert created["data"]["createLead"] is None and _codes(created) == ["FORBIDDEN"]
    refusals = [e for e in _audit(appliance, "lead.refused") if support.client_id in e.actor]
    assert refusals, "the refusals are audited"


def test_marketing_sees_lead_email_only_with_consent(caller: Any) -> None:
    lead = _create(caller("sales_manager", team="east"))
    marketing = caller("marketing")
    result = marketing.gql("query { leads { edges { node { id lastName company email } } } }")
    node = result["data"]["leads"]["edges"][0]["node"]
    assert (node["id"], node["lastName"], node["company"]) == (lead["id"], "Example",
                                                                "Example Ltd")
    assert node["email"] is None  # a lead has no consent record, so never consent in force
    error = _error(result)
    assert error["path"] == ["leads", "edges", 0, "node", "email"]
    assert error["extensions"]["code"] == "FORBIDDEN"
    refused = marketing.gql(UPDATE, {"id": lead["id"], "i": {"score": 1}})
    assert _codes(refused) == ["FORBIDDEN"]


def test_list_filters_and_sort(caller: Any) -> None:
    manager = caller("sales_manager", team="east")
    for name, score, status in (("A", 10, "new"), ("B", 90, "qualified"), ("C", 50, "working")):
        lead = _create(manager, lastName=name, score=score)
        manager.gql(UPDATE, {"id": lead["id"], "i": {"status": status}})
    query = ("query($f: [RecordFilter!], $s: [RecordSort!]) { leads(filter: $f, sort: $s) "
             "{ edges { node { lastName } } } }")

    def names(filters: list[dict[str, Any]], sort: list[dict[str, Any]]) -> list[str]:
        result = manager.gql(query, {"f": filters, "s": sort})
        assert "errors" not in result, result
        return [e["node"]["lastName"] for e in result["data"]["leads"]["edges"]]

    assert names([], [{"field": "score", "direction": "DESC"}]) == ["B", "C", "A"]
    assert names([{"field": "score", "gte": "50"}], [{"field": "score"}]) == ["C", "B"]
    assert names([{"field": "status", "in": ["new", "working"]}], [{"field": "lastName"}]) \
        == ["A", "C"]
    assert names([{"field": "email", "eq": "ANN.EXAMPLE@example.com"}], []) != []


# -- conversion ----------------------------------------------------------------------------------

def _first_stage(appliance: Appliance) -> PipelineStage:
    with appliance.sessions() as session:
        stage = session.scalars(select(PipelineStage).order_by(PipelineStage.position)).first()
        assert stage is not None
        session.expunge(stage)
        return stage


def test_conversion_end_to_end(caller: Any, appliance: Appliance) -> None:
    rep = caller("sales_rep", team="east")
    manager = caller("sales_manager", team="east")
    lead = _create(rep)
    result = rep.gql(CONVERT, {"id": lead["id"], "i": {"createOpportunity": {
        "name": "Example Ltd pilot", "amount": "12345.50", "currency": "USD",
        "expectedClose": "2027-03-31"}}})
    assert "errors" not in result, result
    done = result["data"]["convertLead"]
    contact, account = done["contact"], done["account"]
    assert done["lead"]["status"] == "converted" and done["lead"]["convertedAt"]
    assert done["lead"]["convertedContact"]["id"] == contact["id"]
    assert done["lead"]["convertedAccount"]["id"] == account["id"]
    opp = done["opportunity"]
    assert done["lead"]["convertedOpportunity"]["id"] == opp["id"]
    assert (opp["name"], opp["amount"], opp["currency"]) == ("Example Ltd pilot", "12345.50",
                                                             "USD")
    assert (opp["account"]["id"], opp["contact"]["id"]) == (account["id"], contact["id"])
    assert account["name"] == "Example Ltd" and contact["account"]["id"] == account["id"]
    assert (contact["firstName"], contact["lastName"], contact["email"], contact["phone"]) == (
        "Ann", "Example", ANN["email"], ANN["phone"])

    # The contact's email is sealed under the contact's own key and readable by the manager.
    seen = manager.gql("query($id: ID!) { contact(id: $id) { email phone } }",
                       {"id": contact["id"]})
    assert seen["data"]["contact"] == {"email": ANN["email"], "phone": ANN["phone"]}
    stage = _first_stage(appliance)
    assert (opp["stage"]["id"], opp["probability"]) == (stage.id, stage.probability)
    with appliance.sessions() as session:
        keys = set(session.scalars(select(SubjectKey.subject_id)))
        assert {lead["id"], contact["id"]} <= keys
        opportunity = session.get(Opportunity, opp["id"])
        assert opportunity is not None
        assert (opportunity.stage_id, opportunity.probability) == (stage.id, stage.probability)
        assert str(opportunity.amount) == "12345.50" and opportunity.currency == "USD"
        assert (opportunity.account_id, opportunity.contact_id) == (account["id"],
                                                                    contact["id"])
        changes = list(session.scalars(select(StageChange).where(
            StageChange.opportunity_id == opportunity.id)))
        assert [(c.from_stage, c.to_stage) for c in changes] == [(None, stage.id)]
        assert rep.client_id in changes[0].changed_by
    entries = _audit(appliance, "lead.convert")
    assert len(entries) == 1 and json.loads(entries[0].object_ids) == [lead["id"]]
    assert rep.client_id in entries[0].actor


def test_conversion_links_existing_account_and_contact(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    account = manager.gql('mutation { createAccount(input: {name: "Existing"}) { id } }')
    account_id = account["data"]["createAccount"]["id"]
    lead = _create(manager, company=None)
    before = _counts(appliance)
    done = manager.gql(CONVERT, {"id": lead["id"], "i": {"accountId": account_id}})
    assert "errors" not in done, done
    assert done["data"]["convertLead"]["account"] == {"id": account_id, "name": "Existing"}
    after = _counts(appliance)
    assert (after["accounts"], after["contacts"]) == (before["accounts"], before["contacts"] + 1)

    other = _create(manager, company=None, lastName="NoCompany")
    refused = manager.gql(CONVERT, {"id": other["id"]})
    assert _error(refused)["extensions"] == {"code": "BAD_USER_INPUT", "field": "accountName"}
    west_account = caller("sales_manager", team="west").gql(
        'mutation { createAccount(input: {name: "West"}) { id } }')["data"]["createAccount"]["id"]
    hidden = manager.gql(CONVERT, {"id": other["id"], "i": {"accountId": west_account}})
    assert _error(hidden)["extensions"] == {"code": "BAD_USER_INPUT", "field": "accountId"}


def test_converting_twice_is_a_conflict_and_writes_nothing(caller: Any,
                                                          appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    lead = _create(manager)
    first = manager.gql(CONVERT, {"id": lead["id"], "i": {"createOpportunity": {"name": "Deal"}}})
    assert "errors" not in first, first
    before = _counts(appliance)
    again = manager.gql(CONVERT, {"id": lead["id"], "i": {"createOpportunity": {"name": "Deal"}}})
    assert again["data"]["convertLead"] is None and _codes(again) == ["CONFLICT"]
    assert _counts(appliance) == before
    assert len(_audit(appliance, "lead.convert")) == 1
    # Nor can the status be moved off converted by an update.
    moved = manager.gql(UPDATE, {"id": lead["id"], "i": {"status": "working"}})
    assert _codes(moved) == ["CONFLICT"]


def test_invalid_opportunity_leaves_nothing_written(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    lead = _create(manager)
    before = _counts(appliance)
    for bad, field in (({"name": "Deal", "amount": "-5"}, "createOpportunity.amount"),
                       ({"name": "Deal", "amount": "1.234"}, "createOpportunity.amount"),
                       ({"name": "Deal", "currency": "euro"}, "createOpportunity.currency"),
                       ({"name": "Deal", "stageId": "nope"}, "createOpportunity.stageId"),
                       ({"name": " "}, "createOpportunity.name")):
        result = manager.gql(CONVERT, {"id": lead["id"], "i": {"createOpportunity": bad}})
        assert _error(result)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    assert _counts(appliance) == before
    assert manager.gql(GET, {"id": lead["id"]})["data"]["lead"]["status"] == "new"


def test_conversion_failing_midway_rolls_back_contact_and_account(
        caller: Any, appliance: Appliance) -> None:
    """The rep may create contacts and accounts but (after the admin's change) not
    opportunities: the refusal comes after the contact and account were written, and undoes
    them."""
    rep = caller("sales_rep", team="east")
    lead = _create(rep)
    admin = caller("admin")
    revoked = admin.gql("mutation($r: PolicyRuleInput!) { revokePolicy(rule: $r) "
                        "{ policyVersion } }", {"r": {"role": "sales_rep",
                                                      "objectType": "opportunity",
                                                      "field": "@own", "action": "write"}})
    assert "errors" not in revoked, revoked
    before = _counts(appliance)
    result = rep.gql(CONVERT, {"id": lead["id"], "i": {"createOpportunity": {"name": "Deal"}}})
    assert result["data"]["convertLead"] is None and _codes(result) == ["FORBIDDEN"]
    assert _counts(appliance) == before
    assert _audit(appliance, "contact.create") == [] and _audit(appliance, "lead.convert") == []
    assert _audit(appliance, "opportunity.refused")
    status = rep.gql(GET, {"id": lead["id"]})["data"]["lead"]
    assert (status["status"], status["convertedContact"]) == ("new", None)
    # Without the opportunity, the same rep converts fine.
    assert "errors" not in rep.gql(CONVERT, {"id": lead["id"]})


# -- exact search across people ------------------------------------------------------------------

def test_find_people_by_email_and_phone(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    contact = manager.gql('mutation { createContact(input: {lastName: "Contact", '
                          'email: "Ann.Example@Example.com", phone: "+1 (555) 0101"}) { id } }')
    contact_id = contact["data"]["createContact"]["id"]
    lead = _create(manager, lastName="Lead")
    _create(caller("sales_manager", team="west"), lastName="WestLead")  # never visible to east
    _create(manager, lastName="Other", email="someone.else@example.net", phone="+1 555 0102")

    for variables in ({"e": "ANN.EXAMPLE@EXAMPLE.COM"}, {"e": " ann.example@example.com "},
                      {"p": "+1-555-0101"}, {"p": "+15550101"},
                      {"e": "ann.example@example.com", "p": "+1 555 0101"}):
        found = manager.gql(FIND, variables)
        assert "errors" not in found, found
        people = found["data"]["findPeople"]
        assert people == {"contacts": [{"id": contact_id, "lastName": "Contact"}],
                          "leads": [{"id": lead["id"], "lastName": "Lead"}]}, variables
    nobody = manager.gql(FIND, {"e": "ann.example@example.com", "p": "+1 555 0102"})
    assert nobody["data"]["findPeople"] == {"contacts": [], "leads": []}
    invalid = manager.gql(FIND, {})
    assert set(_codes(invalid)) == {"BAD_USER_INPUT"}

    searches = _audit(appliance, "lead.search")
    assert searches and json.loads(searches[-1].object_ids) == []
    assert json.loads(searches[0].object_ids) == [lead["id"]]
    assert json.loads(searches[0].fields) == ["email"]

    # Erased people are not found, even while a row of theirs lingers; deleted ones neither.
    with appliance.sessions() as session, session.begin():
        session.add(Erasure(subject_id=lead["id"], by="test"))
    erased = manager.gql(FIND, {"e": "ann.example@example.com"})["data"]["findPeople"]
    assert erased == {"contacts": [{"id": contact_id, "lastName": "Contact"}], "leads": []}
    manager.gql("mutation($id: ID!) { deleteContact(id: $id) { id } }", {"id": contact_id})
    manager.gql("mutation($id: ID!) { deleteLead(id: $id) { id } }", {"id": lead["id"]})
    gone = manager.gql(FIND, {"e": "ann.example@example.com"})
    assert gone["data"]["findPeople"] == {"contacts": [], "leads": []}


def test_find_people_refuses_roles_that_may_not_read_the_field(caller: Any,
                                                               appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    manager.gql('mutation { createContact(input: {lastName: "Contact", '
                'email: "ann.example@example.com"}) { id } }')
    _create(manager)
    # support_agent reads contacts' email, never leads: contacts answer, leads are refused.
    support = caller("support_agent")
    found = support.gql(FIND, {"e": "ann.example@example.com"})
    people = found["data"]["findPeople"]
    assert [c["lastName"] for c in people["contacts"]] == ["Contact"]
    assert people["leads"] is None
    error = _error(found)
    assert error["path"] == ["findPeople", "leads"]
    assert error["extensions"]["code"] == "FORBIDDEN"
    # marketing sees email only with consent, so may not search by it at all.
    marketing = caller("marketing").gql(FIND, {"e": "ann.example@example.com"})
    assert marketing["data"]["findPeople"] == {"contacts": None, "leads": None}
    assert _codes(marketing) == ["FORBIDDEN", "FORBIDDEN"]
    refused = {e.object_type for e in _audit(appliance, "lead.refused")
               + _audit(appliance, "contact.refused") if "searched" in (e.reason or "")}
    assert refused == {"lead", "contact"}


# -- custom fields and events on contacts and accounts -------------------------------------------

def _define(appliance: Appliance, object_type: str, key: str, value_type: str,
            classification: str) -> None:
    with appliance.sessions() as session, session.begin():
        session.add(CustomFieldDef(id=new_id(), object_type=object_type, key=key,
                                   value_type=value_type, classification=classification))
        bump_policy_version(session)


def test_custom_fields_on_contacts_and_accounts(caller: Any, appliance: Appliance) -> None:
    _define(appliance, "contact", "tier", "text", "internal")
    _define(appliance, "contact", "salary", "number", "restricted")
    _define(appliance, "account", "employees", "number", "public")
    _define(appliance, "account", "revenue", "number", "confidential")
    manager = caller("sales_manager", team="east")
    account = manager.gql(
        'mutation { createAccount(input: {name: "Acme", customFields: ['
        '{key: "employees", number: "250"}, {key: "revenue", number: "1000000.50"}]}) '
        '{ id customFields { key type number } } }')
    assert "errors" not in account, account
    acc = account["data"]["createAccount"]
    assert sorted((c["key"], c["number"]) for c in acc["customFields"]) == [
        ("employees", "250"), ("revenue", "1000000.50")]
    contact = manager.gql(
        'mutation($a: ID!) { createContact(input: {lastName: "Person", accountId: $a, '
        'email: "person@example.com", customFields: [{key: "tier", text: "gold"}, '
        '{key: "salary", number: "50000"}]}) { id email customFields { key text number } } }',
        {"a": acc["id"]})
    assert "errors" not in contact, contact
    cid = contact["data"]["createContact"]["id"]
    changed = manager.gql(
        'mutation($id: ID!) { updateContact(id: $id, input: {customFields: ['
        '{key: "tier", text: "silver"}, {key: "salary"}]}) '
        '{ email customFields { key text number } } }', {"id": cid})
    assert "errors" not in changed, changed
    assert changed["data"]["updateContact"]["email"] == "person@example.com"  # still opens
    assert sorted(changed["data"]["updateContact"]["customFields"], key=lambda c: c["key"]) == [
        {"key": "salary", "text": None, "number": None},  # cleared
        {"key": "tier", "text": "silver", "number": None}]
    patched = manager.gql('mutation($id: ID!) { updateAccount(id: $id, input: {customFields: '
                          '[{key: "employees", number: "300"}]}) { customFields { key number } } }',
                          {"id": acc["id"]})
    assert {"key": "employees", "number": "300"} in patched["data"]["updateAccount"]["customFields"]

    # The rep's team cannot read restricted values; wrong types and unknown keys are refused.
    rep = caller("sales_rep", team="east")
    asked = rep.gql('query($id: ID!) { contact(id: $id) { customFields(keys: ["salary"]) '
                    '{ key } } }', {"id": cid})
    assert _codes(asked) == ["FORBIDDEN"]
    for bad in ('{key: "tier", number: "1"}', '{key: "nope", text: "x"}'):
        wrong = manager.gql('mutation { createContact(input: {lastName: "X", customFields: ['
                            + bad + ']}) { id } }')
        assert _codes(wrong) == ["BAD_USER_INPUT"], wrong
    with appliance.engine.connect() as connection:
        raw = connection.execute(text("SELECT custom_plain, custom_sealed FROM accounts "
                                      "WHERE id = :id"), {"id": acc["id"]}).one()
    assert "1000000.50" not in repr(raw) and raw[1] is not None


@pytest.fixture
def events() -> Iterator[list[RecordEvent]]:
    seen: list[RecordEvent] = []

    def sink(ctx: RequestContext, batch: list[RecordEvent]) -> None:
        seen.extend(batch)

    EVENT_SINKS.append(sink)
    try:
        yield seen
    finally:
        EVENT_SINKS.remove(sink)


def test_contact_and_account_operations_emit_record_events(
        appliance: Appliance, events: list[RecordEvent]) -> None:
    principal = Principal(id="mgr", name="mgr", roles=("sales_manager",), team="east",
                          kind="client")
    with unit_of_work(appliance, principal) as ctx:
        account = account_ops.create_account(ctx, {"name": "Acme"})
        contact = contact_ops.create_contact(ctx, {"last_name": "P", "account_id": account.id},
                                             custom=[])
        account_ops.update_account(ctx, account.id, {"industry": "food"})
        contact_ops.update_contact(ctx, contact.id, {"title": "CEO"})
        contact_ops.delete_contact(ctx, contact.id)
        account_ops.delete_account(ctx, account.id)
    assert [(e.event, e.object_type, e.record_id) for e in events] == [
        ("created", "account", account.id), ("created", "contact", contact.id),
        ("updated", "account", account.id), ("updated", "contact", contact.id),
        ("deleted", "contact", contact.id), ("deleted", "account", account.id)]


def test_contacts_and_accounts_take_filters_and_sort_with_stable_cursors(caller: Any) -> None:
    manager = caller("sales_manager", team="east")
    for name, industry in (("Delta", "food"), ("Alpha", "food"), ("Charlie", "tech"),
                           ("Bravo", "food")):
        made = manager.gql('mutation($n: String!, $i: String) { createAccount(input: '
                           '{name: $n, industry: $i}) { id } }', {"n": name, "i": industry})
        assert "errors" not in made, made
    query = ("query($after: String) { accounts(first: 2, after: $after, filter: [{field: "
             '"industry", eq: "food"}], sort: [{field: "name", direction: DESC}]) '
             "{ edges { cursor node { name } } pageInfo { hasNextPage endCursor } } }")
    names: list[str] = []
    after = None
    while True:
        page = manager.gql(query, {"after": after})["data"]["accounts"]
        names += [e["node"]["name"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert names == ["Delta", "Bravo", "Alpha"]

    for last, email in (("Pine", "pine@example.com"), ("Pike", "pike@example.com"),
                        ("Oak", "oak@example.com")):
        manager.gql('mutation($l: String!, $e: String) { createContact(input: '
                    '{lastName: $l, email: $e}) { id } }', {"l": last, "e": email})
    contacts = manager.gql(
        'query { contacts(filters: [{field: "lastName", startsWith: "Pi"}], '
        'sort: [{field: "lastName"}]) { edges { node { lastName } } } }')
    assert [e["node"]["lastName"] for e in contacts["data"]["contacts"]["edges"]] == [
        "Pike", "Pine"]
    both = manager.gql('query { contacts(filter: {email: "PINE@example.com"}, '
                       'filters: [{field: "lastName", eq: "Pine"}]) '
                       '{ edges { node { lastName } } } }')
    assert [e["node"]["lastName"] for e in both["data"]["contacts"]["edges"]] == ["Pine"]
    refused = caller("support_agent").gql(
        'query { contacts(sort: [{field: "title"}]) { edges { node { id } } } }')
    assert refused["data"]["contacts"] is None and _codes(refused) == ["FORBIDDEN"]
