"""Cases and SLAs over real HTTP GraphQL, on SQLite and PostgreSQL: life cycle and validation,
SLA targets per priority, breaches (made by moving a case's times into the past in the database,
not by sleeping) and the SLA report, who may work cases, and SLA policy changes.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import func, select

from schema.context import unit_of_work
from schema.ops import records
from schema.runtime import Appliance
from security.errors import Forbidden
from security.principal import Principal
from storage.crm_models import Case
from storage.models import AuditEvent
from tests.test_field_encryption import _database_bytes

CASE_FIELDS = ("id subject description priority status assignee firstResponseDue "
               "resolutionDue firstResponseAt resolvedAt responseBreached resolutionBreached "
               "owner team createdAt contact { id } account { id }")
OPEN = "mutation($input: CaseInput!) { openCase(input: $input) { " + CASE_FIELDS + " } }"
UPDATE = ("mutation($id: ID!, $input: CasePatch!) { updateCase(id: $id, input: $input) { "
          + CASE_FIELDS + " } }")
READ = "query($id: ID!) { case(id: $id) { " + CASE_FIELDS + " } }"
RESPOND = "mutation($id: ID!) { respondToCase(id: $id) { " + CASE_FIELDS + " } }"
RESOLVE = "mutation($id: ID!) { resolveCase(id: $id) { " + CASE_FIELDS + " } }"
ASSIGN = ("mutation($id: ID!, $to: String) { assignCase(id: $id, assignee: $to) { id assignee } }")
DELETE = "mutation($id: ID!) { deleteCase(id: $id) { id } }"
LIST = ("query($filter: [RecordFilter!], $sort: [RecordSort!]) { cases(filter: $filter, "
        "sort: $sort) { edges { node { id subject priority } } } }")
POLICIES = "{ slaPolicies { priority firstResponseMinutes resolutionMinutes } }"
REPORT = ("query($from: DateTime!, $to: DateTime!) { slaReport(from: $from, to: $to) { "
          "priority opened resolved responseBreaches resolutionBreaches openBreachedNow "
          "breachRate } }")
SET_POLICY = ("mutation($p: String!, $f: Int!, $r: Int!) { setSlaPolicy(priority: $p, "
              "firstResponseMinutes: $f, resolutionMinutes: $r) { priority "
              "firstResponseMinutes resolutionMinutes } }")
CREATE_CONTACT = "mutation($input: ContactInput!) { createContact(input: $input) { id } }"

DESCRIPTION = "Loom 7 overheats; customer's Vexillotrope serial is 555-0147"


def _codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


def _ok(body: dict[str, Any], name: str) -> Any:
    assert "errors" not in body, body
    return body["data"][name]


def _error(body: dict[str, Any]) -> dict[str, Any]:
    errors = body.get("errors") or []
    assert len(errors) == 1, body
    return dict(errors[0])


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _count(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Case)) or 0)


def _contact(caller: Any) -> str:
    manager = caller("sales_manager", team="east")
    return str(_ok(manager.gql(CREATE_CONTACT, {"input": {"lastName": "Okafor"}}),
                   "createContact")["id"])


def _open(agent: Any, **values: Any) -> dict[str, Any]:
    return dict(_ok(agent.gql(OPEN, {"input": {"subject": "Loom overheats", **values}}),
                    "openCase"))


def _policies(who: Any) -> dict[str, tuple[int, int]]:
    return {p["priority"]: (p["firstResponseMinutes"], p["resolutionMinutes"])
            for p in _ok(who.gql(POLICIES), "slaPolicies")}


def _backdate(appliance: Appliance, case_id: str, hours: float) -> None:
    """Move a case's creation and targets `hours` into the past (as if opened back then)."""
    shift = dt.timedelta(hours=hours)
    with appliance.sessions() as session:
        case = session.get(Case, case_id)
        assert case is not None and case.first_response_due and case.resolution_due
        case.created_at -= shift
        case.first_response_due -= shift
        case.resolution_due -= shift
        session.commit()


# -- life cycle ---------------------------------------------------------------------------------

def test_open_case_takes_sla_targets_from_its_priority(caller: Any, appliance: Appliance) -> None:
    contact = _contact(caller)
    agent = caller("support_agent", team="support")
    policies = _policies(agent)
    assert list(policies) == ["urgent", "high", "normal", "low"]
    assert policies["urgent"][0] < policies["low"][0]
    for priority, (first, resolution) in policies.items():
        case = _open(agent, priority=priority, contactId=contact, description=DESCRIPTION)
        opened = _time(case["createdAt"])
        assert _time(case["firstResponseDue"]) - opened == dt.timedelta(minutes=first)
        assert _time(case["resolutionDue"]) - opened == dt.timedelta(minutes=resolution)
        assert case["status"] == "open" and case["priority"] == priority
        assert case["description"] == DESCRIPTION
        assert case["contact"] == {"id": contact}
        assert case["owner"] == agent.client_id
        assert case["responseBreached"] is False and case["resolutionBreached"] is False
    default = _open(agent)
    assert default["priority"] == "normal"
    # Descriptions are sealed at rest.
    dumped = _database_bytes(appliance)
    assert b"Loom overheats" in dumped
    assert b"Vexillotrope" not in dumped and b"555-0147" not in dumped


def test_update_assign_respond_resolve_reopen_delete(caller: Any, appliance: Appliance) -> None:
    agent = caller("support_agent", team="support")
    policies = _policies(agent)
    case = _open(agent, priority="low")
    opened = _time(case["createdAt"])

    # Raising the priority while open recomputes both targets from the opening time.
    urgent = _ok(agent.gql(UPDATE, {"id": case["id"], "input": {"priority": "urgent"}}),
                 "updateCase")
    assert _time(urgent["firstResponseDue"]) - opened == \
        dt.timedelta(minutes=policies["urgent"][0])
    assert _time(urgent["resolutionDue"]) - opened == dt.timedelta(minutes=policies["urgent"][1])

    assigned = _ok(agent.gql(ASSIGN, {"id": case["id"], "to": "agent-7"}), "assignCase")
    assert assigned["assignee"] == "agent-7"

    responded = _ok(agent.gql(RESPOND, {"id": case["id"]}), "respondToCase")
    first_response = responded["firstResponseAt"]
    assert first_response is not None
    again = _ok(agent.gql(RESPOND, {"id": case["id"]}), "respondToCase")
    assert again["firstResponseAt"] == first_response  # the first response stays the first

    resolved = _ok(agent.gql(RESOLVE, {"id": case["id"]}), "resolveCase")
    assert resolved["status"] == "resolved" and resolved["resolvedAt"] is not None
    assert resolved["responseBreached"] is False and resolved["resolutionBreached"] is False
    assert _codes(agent.gql(RESOLVE, {"id": case["id"]})) == ["CONFLICT"]

    # A resolved case keeps its targets when its priority changes; reopening clears resolvedAt.
    lowered = _ok(agent.gql(UPDATE, {"id": case["id"], "input": {"priority": "low"}}),
                  "updateCase")
    assert lowered["firstResponseDue"] == urgent["firstResponseDue"]
    reopened = _ok(agent.gql(UPDATE, {"id": case["id"], "input": {"status": "open"}}),
                   "updateCase")
    assert reopened["resolvedAt"] is None
    closed = _ok(agent.gql(UPDATE, {"id": case["id"], "input": {"status": "closed"}}),
                 "updateCase")
    assert closed["resolvedAt"] is not None

    assert _ok(agent.gql(DELETE, {"id": case["id"]}), "deleteCase") == {"id": case["id"]}
    assert _codes(agent.gql(READ, {"id": case["id"]})) == ["NOT_FOUND"]
    with appliance.sessions() as session:
        actions = set(session.scalars(select(AuditEvent.action).where(
            AuditEvent.object_type == "case")))
    assert {"case.open", "case.update", "case.assign", "case.respond", "case.resolve",
            "case.delete"} <= actions


def test_validation_names_the_field(caller: Any, appliance: Appliance) -> None:
    agent = caller("support_agent", team="support")
    for values, field in [({"priority": "asap"}, "priority"), ({"subject": " "}, "subject"),
                          ({"assignee": "bad name;"}, "assignee"),
                          ({"contactId": "nope"}, "contactId"),
                          ({"accountId": "00000000-0000-7000-8000-000000000000"}, "accountId"),
                          ({"description": "x" * 20_001}, "description")]:
        body = agent.gql(OPEN, {"input": {"subject": "Loom", **values}})
        assert _error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, values
    assert _count(appliance) == 0
    case = _open(agent)
    for values, field in [({"status": "lost"}, "status"), ({"priority": None}, "priority"),
                          ({"subject": None}, "subject")]:
        body = agent.gql(UPDATE, {"id": case["id"], "input": values})
        assert _error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, values
    assert _ok(agent.gql(READ, {"id": case["id"]}), "case")["priority"] == "normal"


# -- breaches and the report ----------------------------------------------------------------------

def test_breached_case_is_flagged_counted_then_resolved(caller: Any,
                                                        appliance: Appliance) -> None:
    agent = caller("support_agent", team="east")
    manager = caller("sales_manager", team="east")
    west = caller("sales_manager", team="west")
    late = _open(agent, priority="urgent", subject="Line down")
    on_time = _open(agent, priority="normal", subject="Question")
    _backdate(appliance, late["id"], hours=24 * 10)  # far past both urgent targets
    period = {"from": (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).isoformat(),
              "to": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()}

    flagged = _ok(agent.gql(READ, {"id": late["id"]}), "case")
    assert flagged["responseBreached"] is True and flagged["resolutionBreached"] is True
    fine = _ok(agent.gql(READ, {"id": on_time["id"]}), "case")
    assert fine["responseBreached"] is False and fine["resolutionBreached"] is False

    def report(who: Any) -> dict[str, dict[str, Any]]:
        return {line.pop("priority"): line for line in _ok(who.gql(REPORT, period), "slaReport")}

    lines = report(agent)
    assert lines["urgent"] == {"opened": 1, "resolved": 0, "responseBreaches": 1,
                               "resolutionBreaches": 1, "openBreachedNow": 1, "breachRate": 1.0}
    assert lines["normal"] == {"opened": 1, "resolved": 0, "responseBreaches": 0,
                               "resolutionBreaches": 0, "openBreachedNow": 0, "breachRate": 0.0}
    # The east manager reads the team's cases: same figures. West sees none of them.
    assert report(manager) == lines
    assert all(line["opened"] == 0 for line in report(west).values())
    # A period before the case was (back-)opened counts nothing opened, but what is open and
    # breached now still shows.
    early = {"from": (dt.datetime.now(dt.UTC) - dt.timedelta(days=60)).isoformat(),
             "to": (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat()}
    old = {line["priority"]: line for line in _ok(agent.gql(REPORT, early), "slaReport")}
    assert old["urgent"]["opened"] == 0 and old["urgent"]["openBreachedNow"] == 1

    _ok(agent.gql(RESPOND, {"id": late["id"]}), "respondToCase")
    resolved = _ok(agent.gql(RESOLVE, {"id": late["id"]}), "resolveCase")
    assert resolved["responseBreached"] is True  # late stays late
    assert resolved["resolutionBreached"] is True
    lines = report(agent)
    assert lines["urgent"]["resolved"] == 1 and lines["urgent"]["openBreachedNow"] == 0
    assert lines["urgent"]["resolutionBreaches"] == 1

    bad = agent.gql(REPORT, {"from": period["to"], "to": period["from"]})
    assert _error(bad)["extensions"] == {"code": "BAD_USER_INPUT", "field": "from"}
    naive = agent.gql(REPORT, {"from": "2026-01-01T00:00:00", "to": period["to"]})
    assert _error(naive)["extensions"] == {"code": "BAD_USER_INPUT", "field": "from"}


# -- who works cases ---------------------------------------------------------------------------

def test_support_agent_works_cases_but_not_leads_or_opportunities(caller: Any,
                                                                   appliance: Appliance) -> None:
    agent = caller("support_agent", team="support")
    case = _open(agent)
    assert _ok(agent.gql(RESOLVE, {"id": case["id"]}), "resolveCase")["status"] == "resolved"
    listed = _ok(agent.gql(LIST, {"filter": [{"field": "priority", "eq": "normal"}],
                                  "sort": [{"field": "createdAt", "direction": "DESC"}]}),
                 "cases")
    assert [e["node"]["id"] for e in listed["edges"]] == [case["id"]]

    principal = Principal(id=agent.client_id, name="agent", roles=("support_agent",),
                          team="support", kind="client")
    for object_type, values in (("lead", {"last_name": "Nobody"}),
                                ("opportunity", {"name": "Deal", "stage_id": "prospecting",
                                                 "probability": 10})):
        with pytest.raises(Forbidden), unit_of_work(appliance, principal) as ctx:
            records.list_records(ctx, object_type, first=10, after=None)
        with pytest.raises(Forbidden), unit_of_work(appliance, principal) as ctx:
            records.create_record(ctx, object_type, values)


def test_sales_roles_and_cases(caller: Any, appliance: Appliance) -> None:
    agent = caller("support_agent", team="east")
    case = _open(agent, description=DESCRIPTION)
    manager = caller("sales_manager", team="east")
    rep = caller("sales_rep", team="east")
    # The manager reads the team's cases, every field, and changes none.
    read = _ok(manager.gql(READ, {"id": case["id"]}), "case")
    assert read["description"] == DESCRIPTION
    assert _codes(manager.gql(UPDATE, {"id": case["id"], "input": {"status": "closed"}})) \
        == ["FORBIDDEN"]
    assert _codes(manager.gql(OPEN, {"input": {"subject": "Mine"}})) == ["FORBIDDEN"]
    # A rep has no rule on cases at all.
    listed = rep.gql(LIST)
    assert listed["data"]["cases"] is None and _codes(listed) == ["FORBIDDEN"]
    hidden = rep.gql(READ, {"id": case["id"]})
    assert hidden["data"]["case"] is None and _codes(hidden) == ["NOT_FOUND"]
    assert DESCRIPTION not in json.dumps(hidden)
    assert _codes(rep.gql(REPORT, {"from": "2026-01-01T00:00:00Z",
                                   "to": "2026-12-31T00:00:00Z"})) == ["FORBIDDEN"]
    assert _codes(rep.gql(POLICIES)) == ["FORBIDDEN"]
    assert _count(appliance) == 1


# -- SLA policies ------------------------------------------------------------------------------

def test_admin_sets_sla_policy_others_are_refused(caller: Any, appliance: Appliance) -> None:
    admin = caller("admin")
    agent = caller("support_agent", team="support")
    changed = _ok(admin.gql(SET_POLICY, {"p": "normal", "f": 15, "r": 90}), "setSlaPolicy")
    assert changed == {"priority": "normal", "firstResponseMinutes": 15, "resolutionMinutes": 90}
    case = _open(agent)
    opened = _time(case["createdAt"])
    assert _time(case["firstResponseDue"]) - opened == dt.timedelta(minutes=15)
    assert _time(case["resolutionDue"]) - opened == dt.timedelta(minutes=90)

    refused = agent.gql(SET_POLICY, {"p": "normal", "f": 1, "r": 2})
    assert refused["data"]["setSlaPolicy"] is None and _codes(refused) == ["FORBIDDEN"]
    for args, field in [({"p": "asap", "f": 1, "r": 2}, "priority"),
                        ({"p": "low", "f": 0, "r": 2}, "firstResponseMinutes"),
                        ({"p": "low", "f": 30, "r": 20}, "firstResponseMinutes"),
                        ({"p": "low", "f": 30, "r": 10**7}, "resolutionMinutes")]:
        body = admin.gql(SET_POLICY, args)
        assert _error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, args
    assert _policies(agent)["normal"] == (15, 90)
    with appliance.sessions() as session:
        events = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action.in_(["sla.set", "sla.refused"])).order_by(AuditEvent.seq)))
    assert [e.action for e in events] == ["sla.set", "sla.refused"]
    assert admin.client_id in events[0].actor and "normal" in events[0].object_ids
    assert agent.client_id in events[1].actor


DEFINE = ("mutation($o: String!, $k: String!, $t: String!, $c: String!) { defineCustomField("
          "objectType: $o, key: $k, type: $t, classification: $c) { key } }")


def test_custom_fields_on_cases(caller: Any, appliance: Appliance) -> None:
    admin = caller("admin")
    _ok(admin.gql(DEFINE, {"o": "case", "k": "ticket_ref", "t": "text", "c": "internal"}),
        "defineCustomField")
    _ok(admin.gql(DEFINE, {"o": "case", "k": "vip_note", "t": "text", "c": "restricted"}),
        "defineCustomField")
    agent = caller("support_agent", team="east")
    case = _ok(agent.gql("mutation($input: CaseInput!) { openCase(input: $input) { id "
                         "customFields { key text } } }",
                         {"input": {"subject": "Loom", "customFields": [
                             {"key": "ticket_ref", "text": "TCK-0042"}]}}), "openCase")
    assert case["customFields"] == [{"key": "ticket_ref", "text": "TCK-0042"}]
    # Restricted is beyond what a support agent may write: refused, nothing written.
    refused = agent.gql(UPDATE.replace(CASE_FIELDS, "id"), {"id": case["id"], "input": {
        "customFields": [{"key": "vip_note", "text": "x"}]}})
    assert _codes(refused) == ["FORBIDDEN"]
    manager = caller("sales_manager", team="east")
    read = _ok(manager.gql("query($id: ID!) { case(id: $id) { customFields { key text } } }",
                           {"id": case["id"]}), "case")
    # The manager reads every class (the restricted field is unset); the agent never saw it.
    assert read["customFields"] == [{"key": "ticket_ref", "text": "TCK-0042"},
                                    {"key": "vip_note", "text": None}]
