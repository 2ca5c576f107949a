"""Campaigns, members and consent over real HTTP GraphQL, on SQLite and PostgreSQL.

The security claims are shown by attacks: the marketing role tries to read a contact's email
before consent, after it and after its withdrawal; a campaign's audience holds only members with
consent in force on its channel; the sealed consent evidence never reaches the database in the
clear nor a role without the grant.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.ops import records
from schema.runtime import Appliance
from storage.crm_models import CampaignMember, Consent
from storage.models import AuditEvent
from tests.conftest import operator

TEAM = "east"
EMAIL = "ada.private@example.org"

CONTACT = """query($id: ID!) { contact(id: $id) { id lastName email } }"""
RECORD_CONSENT = """
mutation($c: ID!, $granted: Boolean!, $channel: String!, $purpose: String!) {
  recordConsent(contactId: $c, purpose: $purpose, channel: $channel, granted: $granted,
                source: "web form", evidence: "form 42 ticked at 10:02 from 192.0.2.7") {
    id granted channel purpose evidence
  }
}"""
CREATE_CAMPAIGN = """
mutation($input: CampaignInput!) {
  createCampaign(input: $input) { id name channel status budget currency startsOn endsOn owner team }
}"""
ADD_MEMBER = """
mutation($campaign: ID!, $contact: ID, $lead: ID) {
  addCampaignMember(campaignId: $campaign, contactId: $contact, leadId: $lead) {
    id status owner team leadId lead { id lastName } contact { id } campaign { id name }
  }
}"""
AUDIENCE = """query($id: ID!) { campaignAudience(campaignId: $id) { id contact { id } leadId } }"""


def make_contact(appliance: Appliance, last_name: str, email: str | None = None,
                 phone: str | None = None) -> str:
    with unit_of_work(appliance, operator("sales_rep", team=TEAM, id="rep-1")) as ctx:
        return contact_ops.create_contact(ctx, {"last_name": last_name, "email": email,
                                                "phone": phone}).id


def make_lead(appliance: Appliance, last_name: str) -> str:
    with unit_of_work(appliance, operator("sales_rep", team=TEAM, id="rep-1")) as ctx:
        return str(records.create_record(ctx, "lead", {"last_name": last_name,
                                                       "status": "new"}).id)


def codes(result: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors", [])]


def refusals(appliance: Appliance, contact_id: str) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "contact.refused",
            AuditEvent.object_ids.contains(contact_id))) or 0)


def test_marketing_sees_an_email_only_while_consent_is_in_force(
        appliance: Appliance, caller: Any) -> None:
    contact_id = make_contact(appliance, "Lovelace", EMAIL, "+1 555 0100")
    rep = caller("sales_rep", team=TEAM)
    marketing = caller("marketing")

    before = marketing.gql(CONTACT, {"id": contact_id})
    assert before["data"]["contact"] == {"id": contact_id, "lastName": "Lovelace", "email": None}
    assert codes(before) == ["FORBIDDEN"]
    assert before["errors"][0]["path"] == ["contact", "email"]
    assert EMAIL not in json.dumps(before)
    assert refusals(appliance, contact_id) == 1

    # Consent on another channel or for another purpose does not open the email.
    for channel, purpose in (("phone", "marketing"), ("email", "newsletter")):
        done = rep.gql(RECORD_CONSENT, {"c": contact_id, "granted": True, "channel": channel,
                                        "purpose": purpose})
        assert "errors" not in done, done
    assert marketing.gql(CONTACT, {"id": contact_id})["data"]["contact"]["email"] is None

    granted = rep.gql(RECORD_CONSENT, {"c": contact_id, "granted": True, "channel": "email",
                                       "purpose": "marketing"})
    assert granted["data"]["recordConsent"]["granted"] is True
    assert granted["data"]["recordConsent"]["evidence"].startswith("form 42")
    after = marketing.gql(CONTACT, {"id": contact_id})
    assert "errors" not in after, after
    assert after["data"]["contact"]["email"] == EMAIL

    withdrawn = rep.gql(RECORD_CONSENT, {"c": contact_id, "granted": False, "channel": "email",
                                         "purpose": "marketing"})
    assert withdrawn["data"]["recordConsent"]["granted"] is False
    again = marketing.gql(CONTACT, {"id": contact_id})
    assert again["data"]["contact"]["email"] is None
    assert codes(again) == ["FORBIDDEN"]
    assert EMAIL not in json.dumps(again)
    assert refusals(appliance, contact_id) == 3

    with appliance.sessions() as session:
        actions = list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.action.in_(("consent.granted", "consent.withdrawn")))))
    assert actions.count("consent.granted") == 3 and actions.count("consent.withdrawn") == 1


def test_consent_history_status_and_sealed_evidence(appliance: Appliance, caller: Any) -> None:
    contact_id = make_contact(appliance, "Hopper", "grace@example.net")
    rep = caller("sales_rep", team=TEAM)
    marketing = caller("marketing")
    for granted in (True, False, True):
        rep.gql(RECORD_CONSENT, {"c": contact_id, "granted": granted, "channel": "email",
                                 "purpose": "marketing"})
    rep.gql(RECORD_CONSENT, {"c": contact_id, "granted": False, "channel": "phone",
                             "purpose": "marketing"})

    history = rep.gql("""query($c: ID!) { consents(contactId: $c) {
        edges { node { granted channel source evidence contact { id } } } } }""",
                      {"c": contact_id})
    nodes = [e["node"] for e in history["data"]["consents"]["edges"]]
    assert [(n["channel"], n["granted"]) for n in nodes] == [
        ("email", True), ("email", False), ("email", True), ("phone", False)]
    assert all(n["contact"]["id"] == contact_id for n in nodes)

    status = rep.gql("""query($c: ID!) { consentStatus(contactId: $c) {
        purpose channel granted source } }""", {"c": contact_id})
    assert status["data"]["consentStatus"] == [
        {"purpose": "marketing", "channel": "email", "granted": True, "source": "web form"},
        {"purpose": "marketing", "channel": "phone", "granted": False, "source": "web form"}]

    # marketing reads the consent records but never the evidence (confidential).
    seen = marketing.gql("""query($c: ID!) { consents(contactId: $c) {
        edges { node { granted evidence } } } }""", {"c": contact_id})
    assert {n["node"]["evidence"] for n in seen["data"]["consents"]["edges"]} == {None}
    assert set(codes(seen)) == {"FORBIDDEN"}
    assert "192.0.2.7" not in json.dumps(seen)

    # The evidence is sealed in the database.
    with appliance.sessions() as session:
        blobs = [row.evidence.ciphertext for row in session.scalars(select(Consent))]
    assert blobs and all(b"192.0.2.7" not in blob and b"form 42" not in blob for blob in blobs)

    bad = rep.gql(RECORD_CONSENT, {"c": contact_id, "granted": True, "channel": "pigeon",
                                   "purpose": "marketing"})
    assert codes(bad) == ["BAD_USER_INPUT"] and bad["errors"][0]["extensions"]["field"] == "channel"
    # A role without consent write (marketing) cannot record consent.
    refused = marketing.gql(RECORD_CONSENT, {"c": contact_id, "granted": True,
                                             "channel": "email", "purpose": "marketing"})
    assert codes(refused) == ["FORBIDDEN"]
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Consent)) == 4


def test_a_campaign_reaches_only_consented_contacts(appliance: Appliance, caller: Any) -> None:
    rep = caller("sales_rep", team=TEAM)
    marketing = caller("marketing", team="growth")
    granted = make_contact(appliance, "Granted", "granted@example.com")
    withdrawn = make_contact(appliance, "Withdrawn", "withdrawn@example.com")
    never = make_contact(appliance, "Never", "never@example.com")
    phone_only = make_contact(appliance, "PhoneOnly", "phone@example.com")
    lead_id = make_lead(appliance, "Leadson")
    for contact_id, channel, flags in ((granted, "email", (True,)),
                                       (withdrawn, "email", (True, False)),
                                       (phone_only, "phone", (True,))):
        for flag in flags:
            rep.gql(RECORD_CONSENT, {"c": contact_id, "granted": flag, "channel": channel,
                                     "purpose": "marketing"})

    made = marketing.gql(CREATE_CAMPAIGN, {"input": {
        "name": "Spring launch", "channel": "email", "budget": "12500.50", "currency": "USD",
        "startsOn": "2026-03-01", "endsOn": "2026-04-30"}})
    assert "errors" not in made, made
    campaign = made["data"]["createCampaign"]
    assert campaign["status"] == "planned" and campaign["budget"] == "12500.50"
    assert campaign["owner"] == marketing.client_id and campaign["team"] == "growth"

    member_ids = []
    for contact_id in (granted, withdrawn, never, phone_only):
        added = marketing.gql(ADD_MEMBER, {"campaign": campaign["id"], "contact": contact_id})
        member = added["data"]["addCampaignMember"]
        assert member["status"] == "added" and member["contact"]["id"] == contact_id
        assert (member["owner"], member["team"]) == (marketing.client_id, "growth")
        member_ids.append(member["id"])
    lead_member = marketing.gql(ADD_MEMBER, {"campaign": campaign["id"], "lead": lead_id})
    assert lead_member["data"]["addCampaignMember"]["leadId"] == lead_id
    assert lead_member["data"]["addCampaignMember"]["lead"] == {"id": lead_id,
                                                                "lastName": "Leadson"}

    audience = marketing.gql(AUDIENCE, {"id": campaign["id"]})
    assert "errors" not in audience, audience
    assert [m["contact"]["id"] for m in audience["data"]["campaignAudience"]] == [granted]

    # A phone campaign reaches the phone-consented contact only.
    phone = marketing.gql(CREATE_CAMPAIGN, {"input": {"name": "Callback", "channel": "phone"}})
    phone_id = phone["data"]["createCampaign"]["id"]
    for contact_id in (granted, phone_only):
        marketing.gql(ADD_MEMBER, {"campaign": phone_id, "contact": contact_id})
    reach = marketing.gql(AUDIENCE, {"id": phone_id})["data"]["campaignAudience"]
    assert [m["contact"]["id"] for m in reach] == [phone_only]

    # Twice on one campaign is a conflict; nothing is written.
    again = marketing.gql(ADD_MEMBER, {"campaign": campaign["id"], "contact": granted})
    assert codes(again) == ["CONFLICT"] and again["data"]["addCampaignMember"] is None
    both = marketing.gql(ADD_MEMBER, {"campaign": campaign["id"], "contact": never,
                                      "lead": lead_id})
    assert codes(both) == ["BAD_USER_INPUT"]
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(CampaignMember).where(
            CampaignMember.campaign_id == campaign["id"])) == 5

    members = marketing.gql("""query($id: ID!) { campaign(id: $id) { name
        members(first: 2) { edges { node { id } } pageInfo { hasNextPage endCursor } } } }""",
                            {"id": campaign["id"]})
    page = members["data"]["campaign"]["members"]
    assert len(page["edges"]) == 2 and page["pageInfo"]["hasNextPage"] is True

    updated = marketing.gql("""mutation($id: ID!) { updateCampaignMember(id: $id,
        status: "responded") { status } }""", {"id": member_ids[2]})
    assert updated["data"]["updateCampaignMember"]["status"] == "responded"
    bad_status = marketing.gql("""mutation($id: ID!) { updateCampaignMember(id: $id,
        status: "ecstatic") { status } }""", {"id": member_ids[2]})
    assert codes(bad_status) == ["BAD_USER_INPUT"]
    removed = marketing.gql("""mutation($id: ID!) { removeCampaignMember(id: $id) { id } }""",
                            {"id": member_ids[2]})
    assert removed["data"]["removeCampaignMember"]["id"] == member_ids[2]

    listed = marketing.gql("""query { campaigns(filter: [{field: "channel", eq: "email"}],
        sort: [{field: "name", direction: DESC}]) { edges { node { name } } } }""")
    assert [e["node"]["name"] for e in listed["data"]["campaigns"]["edges"]] == ["Spring launch"]


def test_campaign_validation_and_rights(appliance: Appliance, caller: Any) -> None:
    marketing = caller("marketing")
    rep = caller("sales_rep", team=TEAM)
    cases = [
        ({"name": "X", "channel": "email", "startsOn": "2026-05-02", "endsOn": "2026-05-01"},
         "endsOn"),
        ({"name": "X", "channel": "carrier-pigeon"}, "channel"),
        ({"name": " ", "channel": "email"}, "name"),
        ({"name": "X", "channel": "email", "status": "dreaming"}, "status"),
        ({"name": "X", "channel": "email", "budget": "-1"}, "budget"),
        ({"name": "X", "channel": "email", "budget": "1.005"}, "budget"),
        ({"name": "X", "channel": "email", "currency": "euro"}, "currency"),
    ]
    for data, field in cases:
        result = marketing.gql(CREATE_CAMPAIGN, {"input": data})
        assert codes(result) == ["BAD_USER_INPUT"], (data, result)
        assert result["errors"][0]["extensions"]["field"] == field, (data, result)
    made = marketing.gql(CREATE_CAMPAIGN, {"input": {"name": "Fair", "channel": "event",
                                                     "startsOn": "2026-06-01"}})
    campaign_id = made["data"]["createCampaign"]["id"]
    early = marketing.gql("""mutation($id: ID!) { updateCampaign(id: $id,
        input: {endsOn: "2026-05-01"}) { endsOn } }""", {"id": campaign_id})
    assert codes(early) == ["BAD_USER_INPUT"]
    fine = marketing.gql("""mutation($id: ID!) { updateCampaign(id: $id,
        input: {endsOn: "2026-06-03", status: "active"}) { endsOn status } }""",
                         {"id": campaign_id})
    assert fine["data"]["updateCampaign"] == {"endsOn": "2026-06-03", "status": "active"}

    # sales roles have no campaign rights: refused and audited, nothing written.
    refused = rep.gql(CREATE_CAMPAIGN, {"input": {"name": "Mine", "channel": "email"}})
    assert codes(refused) == ["FORBIDDEN"]
    unseen = rep.gql("""query($id: ID!) { campaign(id: $id) { name } }""", {"id": campaign_id})
    assert unseen["data"]["campaign"] is None and codes(unseen) == ["NOT_FOUND"]
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "campaign.refused")) >= 2

    deleted = marketing.gql("""mutation($id: ID!) { deleteCampaign(id: $id) { id } }""",
                            {"id": campaign_id})
    assert deleted["data"]["deleteCampaign"]["id"] == campaign_id
    gone = marketing.gql("""query($id: ID!) { campaign(id: $id) { name } }""",
                         {"id": campaign_id})
    assert codes(gone) == ["NOT_FOUND"]
