"""Data-subject rights and retention, on SQLite and PostgreSQL: export everything held on a
person (and who accessed it), erase them (crypto-shredding, nothing left that opens or is
findable), retention runs from the real `enclave` command line."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.ops import records
from schema.runtime import Appliance
from security.config import Settings
from storage.crm_models import Activity, CampaignMember, Case, Consent, Lead, Opportunity
from storage.models import AuditEvent, Base, Contact, Erasure, SubjectKey
from tests.conftest import operator

REPO = Path(__file__).resolve().parent.parent
ENCLAVE = REPO / ".venv" / "bin" / "enclave"
TEAM = "east"
#: Distinctive values: a leak shows anywhere in a response or a table dump.
EMAIL = "zelda.subject@example.org"
BODY = "Zelda mentioned her allergy to penicillin"
CASE_TEXT = "Zelda's parcel went to the neighbour at 7 Quiet Row"
LAST_NAME = "Quixotic-Zelda"
EVIDENCE = "signed paper form 2026-01-05 kept in binder 9"

EXPORT = """query($c: ID!) { exportSubjectData(contactId: $c) }"""
ERASE = """mutation($c: ID!) { eraseSubject(contactId: $c) {
    contactId erased { objectType ids } unlinkedOpportunities } }"""


def codes(result: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors", [])]


def person(appliance: Appliance) -> dict[str, str]:
    """A contact with records about them in every module; returns their ids."""
    manager = operator("sales_manager", team=TEAM, id="mgr-1")
    with unit_of_work(appliance, manager) as ctx:
        contact = contact_ops.create_contact(ctx, {
            "last_name": LAST_NAME, "first_name": "Zelda", "email": EMAIL,
            "phone": "+1 555 0142", "national_id": "ZZ-998877-A"})
        activity = records.create_record(ctx, "activity", {
            "kind": "call", "subject": "Follow-up call", "body": BODY,
            "contact_id": contact.id})
        consent = records.create_record(ctx, "consent", {
            "contact_id": contact.id, "purpose": "marketing", "channel": "email",
            "granted": True, "source": "paper", "evidence": EVIDENCE,
            "recorded_at": dt.datetime.now(dt.UTC)})
        lead = records.create_record(ctx, "lead", {
            "last_name": LAST_NAME, "email": EMAIL, "status": "converted",
            "converted_at": dt.datetime.now(dt.UTC), "converted_contact_id": contact.id})
        opportunity = records.create_record(ctx, "opportunity", {
            "name": "Zelda's order", "stage_id": "prospecting", "probability": 10,
            "contact_id": contact.id, "description": "bulk order"})
        ids = {"contact": contact.id, "activity": activity.id, "consent": consent.id,
               "lead": lead.id, "opportunity": opportunity.id}
    with unit_of_work(appliance, operator("support_agent", id="agent-1")) as ctx:
        ids["case"] = records.create_record(ctx, "case", {
            "subject": "Lost parcel", "description": CASE_TEXT, "priority": "normal",
            "status": "open", "contact_id": ids["contact"]}).id
    with unit_of_work(appliance, operator("marketing", id="mkt-1")) as ctx:
        campaign = records.create_record(ctx, "campaign", {"name": "Autumn", "channel": "email",
                                                           "status": "active"})
        ids["member"] = records.create_record(ctx, "campaign_member", {
            "campaign_id": campaign.id, "contact_id": ids["contact"], "status": "added"},
            owner=campaign.owner, team=campaign.team).id
        ids["campaign"] = campaign.id
    return ids


def test_export_holds_everything_on_the_person_and_who_read_it(
        appliance: Appliance, caller: Any) -> None:
    ids = person(appliance)
    manager = caller("sales_manager", team=TEAM)
    officer = caller("privacy_officer")
    read = manager.gql("""query($id: ID!) { contact(id: $id) { email phone } }""",
                       {"id": ids["contact"]})
    assert read["data"]["contact"]["email"] == EMAIL

    # The privacy officer reads no personal field outside a data-subject request.
    direct = officer.gql("""query($id: ID!) { contact(id: $id) { email } }""",
                         {"id": ids["contact"]})
    assert direct["data"]["contact"] is None and EMAIL not in json.dumps(direct)

    result = officer.gql(EXPORT, {"c": ids["contact"]})
    assert "errors" not in result, result
    document = result["data"]["exportSubjectData"]
    assert document["subjectId"] == ids["contact"]
    contact = document["contact"]
    assert (contact["email"], contact["lastName"], contact["nationalId"]) == (
        EMAIL, LAST_NAME, "ZZ-998877-A")
    assert [a["body"] for a in document["activities"]] == [BODY]
    assert [c["description"] for c in document["cases"]] == [CASE_TEXT]
    assert [(c["evidence"], c["granted"]) for c in document["consents"]] == [(EVIDENCE, True)]
    assert [lead["id"] for lead in document["leads"]] == [ids["lead"]]
    assert [o["id"] for o in document["opportunities"]] == [ids["opportunity"]]
    assert [m["campaign"] for m in document["campaignMemberships"]] == [ids["campaign"]]
    reads = [e for e in document["accessLog"]
             if e["action"] == "contact.read" and e["actor"] == f"client:{manager.client_id}"]
    assert reads and {"email", "phone"} <= set(reads[0]["fields"])
    assert reads[0]["objectIds"] == [ids["contact"]]

    with appliance.sessions() as session:
        exports = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "subject.export")))
        opened = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.read",
            AuditEvent.roles.contains("subject_export"))))
    assert len(exports) == 1 and ids["contact"] in json.loads(exports[0].object_ids)
    assert exports[0].actor == f"client:{officer.client_id}"
    # Every field opened for the export is audited as a read, under the officer's name.
    assert len(opened) == 1 and opened[0].actor == f"client:{officer.client_id}"
    assert "national_id" in json.loads(opened[0].fields)


@pytest.mark.parametrize("role", ["sales_manager", "marketing", "admin", "security_officer"])
def test_export_and_erasure_are_refused_without_the_subject_right(
        appliance: Appliance, caller: Any, role: str) -> None:
    ids = person(appliance)
    intruder = caller(role, team=TEAM)
    result = intruder.gql(EXPORT, {"c": ids["contact"]})
    assert result["data"]["exportSubjectData"] is None and codes(result) == ["FORBIDDEN"]
    assert EMAIL not in json.dumps(result) and BODY not in json.dumps(result)
    erase = intruder.gql(ERASE, {"c": ids["contact"]})
    assert codes(erase) == ["FORBIDDEN"]
    with appliance.sessions() as session:
        refused = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "subject.refused",
            AuditEvent.actor == f"client:{intruder.client_id}"))
        assert refused == 2
        assert session.get(Contact, ids["contact"]) is not None


def _dump(appliance: Appliance) -> str:
    """Every row of every table, as text (bytes decoded loosely)."""
    parts = []
    with appliance.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(table.select()):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        parts.append(bytes(value).decode("latin-1"))
                    else:
                        parts.append(str(value))
    return "\n".join(parts)


def test_erasure_leaves_nothing_that_opens_or_is_found(appliance: Appliance, caller: Any) -> None:
    ids = person(appliance)
    manager = caller("sales_manager", team=TEAM)
    officer = caller("privacy_officer")
    assert LAST_NAME in _dump(appliance)
    with appliance.sessions() as session:
        keyed = set(session.scalars(select(SubjectKey.subject_id)))
    assert {ids[k] for k in ("contact", "activity", "consent", "lead", "case")} <= keyed

    erased = officer.gql(ERASE, {"c": ids["contact"]})
    assert "errors" not in erased, erased
    report = erased["data"]["eraseSubject"]
    by_type = {e["objectType"]: e["ids"] for e in report["erased"]}
    assert by_type == {"campaign_member": [ids["member"]], "consent": [ids["consent"]],
                       "activity": [ids["activity"]], "case": [ids["case"]],
                       "lead": [ids["lead"]], "contact": [ids["contact"]]}
    assert report["unlinkedOpportunities"] == [ids["opportunity"]]

    gone = manager.gql("""query($id: ID!) { contact(id: $id) { email } }""",
                       {"id": ids["contact"]})
    assert codes(gone) == ["NOT_FOUND"]
    found = manager.gql("""query($e: String!) { contacts(filter: {email: $e}) {
        edges { node { id } } } }""", {"e": EMAIL})
    assert found["data"]["contacts"]["edges"] == []
    again = officer.gql(EXPORT, {"c": ids["contact"]})
    assert codes(again) == ["NOT_FOUND"]

    erased_ids = [v for k, v in ids.items() if k not in ("opportunity", "campaign")]
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SubjectKey).where(
            SubjectKey.subject_id.in_(erased_ids))) == 0
        assert set(session.scalars(select(Erasure.subject_id))) >= set(erased_ids)
        for model in (Contact, Activity, Case, Consent, Lead, CampaignMember):
            assert session.scalar(select(func.count()).select_from(model)) == 0, model
        assert session.scalar(select(func.count()).select_from(Contact).where(
            Contact.email_bidx.is_not(None))) == 0
        opportunity = session.get(Opportunity, ids["opportunity"])
        assert opportunity is not None and opportunity.contact_id is None
        tombstone = session.scalar(select(AuditEvent).where(AuditEvent.action == "subject.erase"))
        assert tombstone is not None
        assert json.loads(tombstone.object_ids)[0] == ids["contact"]
        assert "subject_keys:destroyed" in json.loads(tombstone.fields)
    dump = _dump(appliance)
    for secret in (EMAIL, BODY, CASE_TEXT, LAST_NAME, EVIDENCE, "ZZ-998877-A"):
        assert secret not in dump, secret


# -- the command line ---------------------------------------------------------------------------

def enclave(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update({"ENCLAVE_DATA_DIR": str(settings.data_dir), "ENCLAVE_DEV_MODE": "1",
                "NO_COLOR": "1", "COLUMNS": "200"})
    if settings.database_url:
        env["ENCLAVE_DATABASE_URL"] = settings.database_url
    return subprocess.run([str(ENCLAVE), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False, cwd=settings.data_dir.parent)


def one_line_error(done: subprocess.CompletedProcess[str], expect: str) -> None:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and "DEVELOPMENT MODE" not in line]
    assert len(lines) == 1 and lines[0].startswith("enclave: "), done.stderr
    assert expect in lines[0], done.stderr


def _lead(appliance: Appliance, name: str, *, age_days: int, converted: bool = False) -> str:
    with unit_of_work(appliance, operator("sales_rep", team=TEAM, id="rep-1")) as ctx:
        values: dict[str, Any] = {"last_name": name, "email": f"{name.lower()}@example.com",
                                  "status": "converted" if converted else "new"}
        if converted:
            values["converted_at"] = dt.datetime.now(dt.UTC)
        lead_id = str(records.create_record(ctx, "lead", values).id)
    with appliance.sessions() as session, session.begin():
        session.execute(update(Lead).where(Lead.id == lead_id).values(
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)))
    return lead_id


def test_retention_from_the_command_line(appliance: Appliance, settings: Settings,
                                         caller: Any) -> None:
    old = _lead(appliance, "Oldfield", age_days=400)
    young = _lead(appliance, "Youngman", age_days=10)
    converted = _lead(appliance, "Convertson", age_days=400, converted=True)
    officer = caller("privacy_officer")
    rule = officer.gql("""mutation { setRetentionRule(objectType: "lead", days: 365,
        condition: "unconverted") { objectType days condition } }""")
    assert rule["data"]["setRetentionRule"] == {"objectType": "lead", "days": 365,
                                                "condition": "unconverted"}
    bad = officer.gql("""mutation { setRetentionRule(objectType: "lead", days: 0,
        condition: "unconverted") { days } }""")
    assert codes(bad) == ["BAD_USER_INPUT"] and bad["errors"][0]["extensions"]["field"] == "days"
    wrong = officer.gql("""mutation { setRetentionRule(objectType: "case", days: 3,
        condition: "unconverted") { days } }""")
    assert wrong["errors"][0]["extensions"]["field"] == "condition"
    refused = caller("sales_manager", team=TEAM).gql("""query { retentionRules { days } }""")
    assert codes(refused) == ["FORBIDDEN"]
    listed = officer.gql("""query { retentionRules { objectType condition days } }""")
    assert listed["data"]["retentionRules"] == [
        {"objectType": "lead", "condition": "unconverted", "days": 365}]

    dry = enclave(settings, "retention", "run", "--dry-run")
    assert dry.returncode == 0, dry
    assert "would erase 1" in dry.stdout
    with appliance.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 3

    done = enclave(settings, "retention", "run")
    assert done.returncode == 0, done
    assert "erased 1" in done.stdout
    with appliance.sessions() as session:
        assert set(session.scalars(select(Lead.id))) == {young, converted}
        assert session.scalar(select(func.count()).select_from(SubjectKey).where(
            SubjectKey.subject_id == old)) == 0
        runs = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "retention.run").order_by(AuditEvent.seq)))
    assert [json.loads(r.object_ids) for r in runs] == [[old], [old]]
    assert "dry_run" in json.loads(runs[0].fields) and runs[1].actor.startswith("operator:")
    assert "erased 0" in enclave(settings, "retention", "run").stdout


def test_subject_commands(appliance: Appliance, settings: Settings) -> None:
    ids = person(appliance)
    exported = enclave(settings, "subject", "export", ids["contact"])
    assert exported.returncode == 0, exported
    document = json.loads(exported.stdout)
    assert document["contact"]["email"] == EMAIL

    one_line_error(enclave(settings, "subject", "export", "not-an-id"), "contactId")
    one_line_error(enclave(settings, "subject", "erase", ids["contact"]), "--yes")
    with appliance.sessions() as session:
        assert session.get(Contact, ids["contact"]) is not None
    erased = enclave(settings, "subject", "erase", ids["contact"], "--yes")
    assert erased.returncode == 0, erased
    assert f"erased {ids['contact']}" in erased.stdout
    one_line_error(enclave(settings, "subject", "erase", ids["contact"], "--yes"), "not found")
    with appliance.sessions() as session:
        assert session.get(Contact, ids["contact"]) is None
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "subject.erase")) == 1
        assert session.execute(text("SELECT 1")).scalar() == 1


def test_retention_conditions_for_activities_and_cases(appliance: Appliance) -> None:
    """activity `done` measures from done_at; case `closed` from resolution; open or young
    records stay. Links to an erased case are cleared, not left dangling."""
    from schema.ops import retention

    now = dt.datetime.now(dt.UTC)
    long_ago = now - dt.timedelta(days=90)
    with unit_of_work(appliance, operator("support_agent", id="agent-1")) as ctx:
        def activity(subject: str, done_at: dt.datetime | None) -> str:
            return str(records.create_record(ctx, "activity", {
                "kind": "task", "subject": subject, "body": "private note",
                "done_at": done_at}).id)

        def case(subject: str, status: str, resolved_at: dt.datetime | None) -> str:
            return str(records.create_record(ctx, "case", {
                "subject": subject, "priority": "low", "status": status,
                "resolved_at": resolved_at, "description": "private"}).id)

        old_done = activity("old done", long_ago)
        young_done = activity("young done", now)
        open_task = activity("open", None)
        old_closed = case("old closed", "closed", long_ago)
        young_closed = case("young closed", "closed", now)
        old_open = case("old open", "open", None)
        on_case = str(records.create_record(ctx, "activity", {
            "kind": "note", "subject": "on the old case", "case_id": old_closed}).id)
    with appliance.sessions() as session, session.begin():
        session.execute(update(Case).values(updated_at=long_ago))
    with unit_of_work(appliance, operator("privacy_officer", id="po-1")) as ctx:
        retention.set_rule(ctx, "activity", 30, "done")
        retention.set_rule(ctx, "case", 30, "closed")
    with unit_of_work(appliance, operator("sales_manager", id="mgr-1")) as ctx:
        with pytest.raises(Exception) as refused:
            retention.run(ctx)
        assert getattr(refused.value, "code", None) == "FORBIDDEN"
    with unit_of_work(appliance, operator("privacy_officer", id="po-1")) as ctx:
        outcome = {r.object_type: r.ids for r in retention.run(ctx)}
    assert outcome == {"activity": [old_done], "case": [old_closed]}
    with appliance.sessions() as session:
        assert set(session.scalars(select(Activity.id))) == {young_done, open_task, on_case}
        assert set(session.scalars(select(Case.id))) == {young_closed, old_open}
        kept = session.get(Activity, on_case)
        assert kept is not None and kept.case_id is None
        assert session.scalar(select(func.count()).select_from(SubjectKey).where(
            SubjectKey.subject_id.in_([old_done, old_closed]))) == 0
