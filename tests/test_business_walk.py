"""The business, end to end, each step by the role that would do it, over real HTTP GraphQL on
both backends: a lead arrives and is converted; the opportunity moves through the stages to won;
the pipeline, forecast and win rate reflect it; a case is opened, breaches its SLA and is
resolved; a campaign reaches only consented contacts; the person asks for their data and gets
it, then asks to be erased and is. At the end the audit log still verifies.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select, update

from schema.runtime import Appliance
from security import audit
from storage.crm_models import Case
from storage.models import AuditEvent, SubjectKey

TEAM = "east"
PERSON = {"firstName": "Ottoline", "lastName": "Brackenridge", "company": "Fennimore Kilns",
          "email": "ottoline.b@example.net", "phone": "+1 555 0142", "source": "web",
          "score": 80}
TODAY = dt.datetime.now(dt.UTC).date()
NEXT_MONTH = (TODAY.replace(day=1) + dt.timedelta(days=40)).replace(day=15)


def ok(body: dict[str, Any], *path: str) -> Any:
    assert not body.get("errors"), body
    node = body["data"]
    for key in path:
        node = node[key]
    return node


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors") or []]


def test_the_business_end_to_end(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team=TEAM)
    manager = caller("sales_manager", team=TEAM)
    agent = caller("support_agent", team=TEAM)
    marketer = caller("marketing", team=TEAM)
    officer = caller("privacy_officer")

    # 1. A lead arrives (the rep enters it from a web form) and a call is logged on it.
    lead_id = ok(rep.gql("mutation($i: LeadInput!) { createLead(input: $i) { id } }",
                         {"i": PERSON}), "createLead", "id")
    ok(rep.gql("""mutation($i: ActivityInput!) { logActivity(input: $i) { id } }""",
               {"i": {"kind": "call", "subject": "Intro call", "leadId": lead_id,
                      "body": "wants kilns for three sites"}}))

    # 2. The rep converts it: contact + account + opportunity, in one step.
    converted = ok(rep.gql("""mutation($id: ID!, $i: ConvertLeadInput) {
        convertLead(id: $id, input: $i) {
          lead { status } contact { id email } account { id name }
          opportunity { id stage { id } amount } } }""",
        {"id": lead_id, "i": {"createOpportunity": {
            "name": "Three-site kiln refit", "amount": "48000.00", "currency": "EUR",
            "expectedClose": NEXT_MONTH.isoformat()}}}), "convertLead")
    assert converted["lead"]["status"] == "converted"
    assert converted["contact"]["email"] == PERSON["email"]
    assert converted["account"]["name"] == PERSON["company"]
    contact_id, account_id = converted["contact"]["id"], converted["account"]["id"]
    deal_id = converted["opportunity"]["id"]
    assert converted["opportunity"]["stage"]["id"] == "prospecting"
    again = rep.gql("mutation($id: ID!) { convertLead(id: $id) { lead { id } } }",
                    {"id": lead_id})
    assert codes(again) == ["CONFLICT"]

    # 3. The opportunity moves through the stages to won.
    for stage in ("qualification", "proposal", "negotiation", "won"):
        moved = ok(rep.gql("mutation($id: ID!, $s: ID!) { moveOpportunity(id: $id, "
                           "stageId: $s) { stage { id } probability closedAt } }",
                           {"id": deal_id, "s": stage}), "moveOpportunity")
        assert moved["stage"]["id"] == stage
    assert moved["probability"] == 100 and moved["closedAt"] is not None
    history = ok(manager.gql("query($id: ID!) { opportunity(id: $id) { stageHistory { "
                             "fromStage toStage changedBy } } }", {"id": deal_id}),
                 "opportunity", "stageHistory")
    assert [h["toStage"] for h in history] == ["prospecting", "qualification", "proposal",
                                               "negotiation", "won"]
    assert {h["changedBy"] for h in history} == {f"client:{rep.client_id}"}

    # ... beside one deal still open and one lost, so the figures mean something.
    def opportunity(name: str, amount: str, stage: str) -> str:
        made = ok(rep.gql("mutation($i: OpportunityInput!) { createOpportunity(input: $i) "
                          "{ id } }", {"i": {"name": name, "amount": amount, "currency": "EUR",
                                             "accountId": account_id,
                                             "expectedClose": NEXT_MONTH.isoformat()}}),
                  "createOpportunity", "id")
        if stage != "prospecting":
            ok(rep.gql("mutation($id: ID!, $s: ID!) { moveOpportunity(id: $id, stageId: $s) "
                       "{ id } }", {"id": made, "s": stage}))
        return str(made)
    opportunity("Spare parts", "10000.00", "proposal")
    opportunity("Fourth site", "7000.00", "lost")

    # 4. The manager's pipeline, forecast and win rate reflect it.
    summary = ok(manager.gql('{ pipelineSummary(currency: "EUR") { stage { id } count '
                             "totalAmount weightedAmount } }"), "pipelineSummary")
    by_stage = {line["stage"]["id"]: line for line in summary}
    assert by_stage["won"]["count"] == 1 and by_stage["won"]["totalAmount"] == "48000.00"
    assert by_stage["proposal"]["weightedAmount"] == "5000.00"  # 10000 x 50 %
    assert by_stage["lost"]["count"] == 1
    month = NEXT_MONTH.strftime("%Y-%m")
    forecast = ok(manager.gql("query($f: Date!, $t: Date!) { forecast(from: $f, to: $t, "
                              'currency: "EUR") { month count weightedAmount } }',
                              {"f": TODAY.replace(day=1).isoformat(),
                               "t": (NEXT_MONTH + dt.timedelta(days=31)).isoformat()}),
                  "forecast")
    line = next(m for m in forecast if m["month"] == month)
    assert line["count"] == 1 and line["weightedAmount"] == "5000.00"  # open deals only
    rate = ok(manager.gql("query($f: Date!, $t: Date!) { winRate(from: $f, to: $t) "
                          "{ won lost rate } }",
                          {"f": TODAY.isoformat(), "t": TODAY.isoformat()}), "winRate")
    assert rate == {"won": 1, "lost": 1, "rate": 0.5}

    # 5. A case is opened by support, breaches its SLA, and is resolved.
    case_id = ok(agent.gql("mutation($i: CaseInput!) { openCase(input: $i) { id "
                           "firstResponseDue } }",
                           {"i": {"subject": "Kiln 2 overheating", "priority": "urgent",
                                  "contactId": contact_id, "accountId": account_id,
                                  "description": "thermocouple reads 40 degrees high"}}),
                 "openCase", "id")
    with appliance.sessions() as session, session.begin():  # two hours pass unanswered
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        session.execute(update(Case).where(Case.id == case_id).values(
            created_at=past, first_response_due=past + dt.timedelta(hours=1),
            resolution_due=past + dt.timedelta(hours=8)))
    breached = ok(agent.gql("query($id: ID!) { case(id: $id) { responseBreached "
                            "resolutionBreached } }", {"id": case_id}), "case")
    assert breached == {"responseBreached": True, "resolutionBreached": False}
    window = {"f": (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat(),
              "t": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()}
    report = ok(manager.gql("query($f: DateTime!, $t: DateTime!) { slaReport(from: $f, "
                            "to: $t) { priority responseBreaches openBreachedNow } }", window),
                "slaReport")
    assert {"priority": "urgent", "responseBreaches": 1, "openBreachedNow": 1} in report
    ok(agent.gql("mutation($id: ID!) { respondToCase(id: $id) { id } }", {"id": case_id}))
    resolved = ok(agent.gql("mutation($id: ID!) { resolveCase(id: $id) { status resolvedAt "
                            "responseBreached resolutionBreached } }", {"id": case_id}),
                  "resolveCase")
    assert resolved["status"] == "resolved" and resolved["resolvedAt"] is not None
    assert resolved["responseBreached"] is True and resolved["resolutionBreached"] is False

    # 6. A campaign reaches only consented contacts.
    other_id = ok(rep.gql("mutation($i: ContactInput!) { createContact(input: $i) { id } }",
                          {"i": {"lastName": "Underhay", "email": "no.consent@example.org"}}),
                  "createContact", "id")
    campaign_id = ok(marketer.gql("mutation($i: CampaignInput!) { createCampaign(input: $i) "
                                  "{ id } }", {"i": {"name": "Spring kilns", "channel": "email",
                                                     "budget": "1500.00"}}),
                     "createCampaign", "id")
    for person in (contact_id, other_id):
        ok(marketer.gql("mutation($c: ID!, $p: ID!) { addCampaignMember(campaignId: $c, "
                        "contactId: $p) { id } }", {"c": campaign_id, "p": person}))
    email_of = "query($id: ID!) { contact(id: $id) { email } }"
    assert codes(marketer.gql(email_of, {"id": contact_id})) == ["FORBIDDEN"]
    ok(rep.gql("mutation($c: ID!) { recordConsent(contactId: $c, purpose: \"marketing\", "
               "channel: \"email\", granted: true, source: \"web form\", "
               "evidence: \"double opt-in 2026-11\") { id } }", {"c": contact_id}))
    audience = ok(marketer.gql("query($c: ID!) { campaignAudience(campaignId: $c) { "
                               "contact { id email } } }", {"c": campaign_id}),
                  "campaignAudience")
    assert [m["contact"] for m in audience] == [{"id": contact_id, "email": PERSON["email"]}]
    assert codes(marketer.gql(email_of, {"id": other_id})) == ["FORBIDDEN"]

    # 7. The person asks for their data, and gets it: records, activities, consent, accesses.
    exported = ok(officer.gql("query($c: ID!) { exportSubjectData(contactId: $c) }",
                              {"c": contact_id}), "exportSubjectData")
    text = json.dumps(exported)
    for expected in (PERSON["email"], PERSON["phone"], "wants kilns for three sites",
                     "thermocouple reads 40 degrees high", "double opt-in 2026-11"):
        assert expected in text, expected
    assert marketer.client_id in text  # the marketer read their email: that access is listed
    assert codes(manager.gql("query($c: ID!) { exportSubjectData(contactId: $c) }",
                             {"c": contact_id})) == ["FORBIDDEN"]

    # 8. Then asks to be erased, and is: unreadable and unfindable.
    ok(officer.gql("mutation($c: ID!) { eraseSubject(contactId: $c) { contactId } }",
                   {"c": contact_id}))
    assert codes(manager.gql(email_of, {"id": contact_id})) == ["NOT_FOUND"]
    found = ok(manager.gql("query($e: String) { findPeople(email: $e) { contacts { id } "
                           "leads { id } } }", {"e": PERSON["email"]}), "findPeople")
    assert found == {"contacts": [], "leads": []}
    with appliance.sessions() as session:
        assert session.scalar(select(SubjectKey).where(SubjectKey.subject_id == contact_id)) \
            is None
        tombstone = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "subject.erase")).all()
        assert len(tombstone) == 1 and contact_id in tombstone[0].object_ids
        # And the evidence of all of it still holds together.
        report = audit.verify(session, appliance.keyring)
        assert report.ok, report.problem
        assert report.entries > 30
