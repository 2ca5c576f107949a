"""Activities over real HTTP GraphQL, on SQLite and PostgreSQL: life cycle and validation, links
only to records the caller can see, the timeline (order, paging, scope), open tasks, bodies
sealed at rest and refused field by field.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select

from schema.runtime import Appliance
from storage.crm_models import Activity
from storage.models import AuditEvent
from tests.test_field_encryption import _database_bytes

ACTIVITY_FIELDS = ("id kind subject body occurredAt dueAt doneAt overdue owner team "
                   "contact { id } account { id } case { id } leadId opportunityId")
LOG = ("mutation($input: ActivityInput!) { logActivity(input: $input) { "
       + ACTIVITY_FIELDS + " } }")
UPDATE = ("mutation($id: ID!, $input: ActivityPatch!) { updateActivity(id: $id, input: $input) "
          "{ " + ACTIVITY_FIELDS + " } }")
READ = "query($id: ID!) { activity(id: $id) { " + ACTIVITY_FIELDS + " } }"
TIMELINE = ("query($id: ID!, $first: Int, $after: String) { timeline(id: $id, first: $first, "
            "after: $after) { edges { cursor node { id subject occurredAt team } } "
            "pageInfo { hasNextPage endCursor } } }")
OPEN_TASKS = ("query($owner: String) { openTasks(owner: $owner) { edges { node { id subject "
              "dueAt overdue } } } }")
COMPLETE = "mutation($id: ID!) { completeTask(id: $id) { id doneAt overdue } }"
DELETE = "mutation($id: ID!) { deleteActivity(id: $id) { id } }"
CREATE_ACCOUNT = "mutation($input: AccountInput!) { createAccount(input: $input) { id } }"
CREATE_CONTACT = "mutation($input: ContactInput!) { createContact(input: $input) { id } }"
OPEN_CASE = "mutation($input: CaseInput!) { openCase(input: $input) { id } }"

BODY = "Discussed the Zanzibarquokka renewal; customer mentioned a private matter"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _at(hours: float) -> str:
    return (NOW + dt.timedelta(hours=hours)).isoformat()


def _codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


def _ok(body: dict[str, Any], name: str) -> Any:
    assert "errors" not in body, body
    return body["data"][name]


def _error(body: dict[str, Any]) -> dict[str, Any]:
    errors = body.get("errors") or []
    assert len(errors) == 1, body
    return dict(errors[0])


def _count(appliance: Appliance) -> int:
    with appliance.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Activity)) or 0)


def _world(caller: Any) -> dict[str, Any]:
    """An east manager's account and contact; a west manager's contact."""
    east = caller("sales_manager", team="east")
    west = caller("sales_manager", team="west")
    account = _ok(east.gql(CREATE_ACCOUNT, {"input": {"name": "Brightwater Mills"}}),
                  "createAccount")["id"]
    contact = _ok(east.gql(CREATE_CONTACT, {"input": {"lastName": "Okonkwo",
                                                      "accountId": account}}),
                  "createContact")["id"]
    west_contact = _ok(west.gql(CREATE_CONTACT, {"input": {"lastName": "Westerly"}}),
                       "createContact")["id"]
    return {"east": east, "west": west, "account": account, "contact": contact,
            "west_contact": west_contact}


def _log(who: Any, **values: Any) -> dict[str, Any]:
    return dict(_ok(who.gql(LOG, {"input": {"kind": "call", "subject": "Call", **values}}),
                    "logActivity"))


# -- life cycle and validation ------------------------------------------------------------------

def test_log_read_update_delete(caller: Any, appliance: Appliance) -> None:
    w = _world(caller)
    east = w["east"]
    logged = _log(east, kind="email", subject="Renewal email", body=BODY,
                  occurredAt=_at(-2), contactId=w["contact"], accountId=w["account"])
    assert logged["body"] == BODY
    assert logged["contact"] == {"id": w["contact"]}
    assert logged["account"] == {"id": w["account"]}
    assert logged["occurredAt"] == _at(-2)
    assert logged["owner"] == east.client_id and logged["team"] == "east"
    assert logged["dueAt"] is None and logged["overdue"] is False

    read = _ok(east.gql(READ, {"id": logged["id"]}), "activity")
    assert read == logged

    changed = _ok(east.gql(UPDATE, {"id": logged["id"], "input": {
        "subject": "Renewal email (sent)", "body": "Shorter body", "accountId": None}}),
        "updateActivity")
    assert changed["subject"] == "Renewal email (sent)"
    assert changed["body"] == "Shorter body"
    assert changed["account"] is None and changed["contact"] == {"id": w["contact"]}

    # Removing the last link is refused: an activity always concerns something.
    unlinked = east.gql(UPDATE, {"id": logged["id"], "input": {"contactId": None}})
    assert _error(unlinked)["extensions"] == {"code": "BAD_USER_INPUT", "field": "links"}

    assert _ok(east.gql(DELETE, {"id": logged["id"]}), "deleteActivity") == {"id": logged["id"]}
    gone = east.gql(READ, {"id": logged["id"]})
    assert gone["data"]["activity"] is None and _codes(gone) == ["NOT_FOUND"]
    assert _count(appliance) == 0
    with appliance.sessions() as session:
        actions = set(session.scalars(select(AuditEvent.action).where(
            AuditEvent.object_type == "activity")))
    assert {"activity.log", "activity.update", "activity.delete", "activity.read"} <= actions


def test_validation_names_the_field(caller: Any, appliance: Appliance) -> None:
    w = _world(caller)
    east = w["east"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "fax"}, "kind"),
        ({"subject": "  "}, "subject"),
        ({"contactId": None}, "links"),
        ({"dueAt": _at(5)}, "dueAt"),  # a call has no due time
        ({"kind": "note", "doneAt": _at(-1)}, "doneAt"),
        ({"kind": "task", "dueAt": "2026-03-01T10:00:00"}, "dueAt"),  # no time zone
        ({"contactId": "not-an-id"}, "contactId"),
        ({"body": "x" * 50_001}, "body"),
    ]
    for values, field in cases:
        body = east.gql(LOG, {"input": {"kind": "call", "subject": "Call",
                                        "contactId": w["contact"], **values}})
        error = _error(body)
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, (values, body)
        assert body["data"]["logActivity"] is None
    assert _count(appliance) == 0


def test_links_only_to_records_the_caller_can_see(caller: Any, appliance: Appliance) -> None:
    w = _world(caller)
    rep = caller("sales_rep", team="east")
    # Another team's contact does not exist for an east rep.
    body = rep.gql(LOG, {"input": {"kind": "note", "subject": "Peek",
                                   "contactId": w["west_contact"]}})
    assert _error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "contactId"}
    # Neither does any case (sales reps have no rule on cases), nor an unknown account.
    agent = caller("support_agent", team="support")
    case_id = _ok(agent.gql(OPEN_CASE, {"input": {"subject": "Broken loom",
                                                  "contactId": w["contact"]}}), "openCase")["id"]
    body = rep.gql(LOG, {"input": {"kind": "note", "subject": "Peek", "caseId": case_id,
                                   "contactId": w["contact"]}})
    assert _error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "caseId"}
    body = rep.gql(LOG, {"input": {"kind": "note", "subject": "Peek",
                                   "accountId": "00000000-0000-7000-8000-000000000000"}})
    assert _error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "accountId"}
    assert _count(appliance) == 0
    # The support agent may log on the case it works.
    logged = _log(agent, subject="Called back", caseId=case_id, contactId=w["contact"])
    assert logged["case"] == {"id": case_id}


# -- the timeline -------------------------------------------------------------------------------

def test_timeline_merges_in_time_order_and_hides_what_the_caller_may_not_see(
        caller: Any, appliance: Appliance) -> None:
    w = _world(caller)
    east = w["east"]
    rep = caller("sales_rep", team="east")
    agent = caller("support_agent", team="support")
    contact = w["contact"]
    ids = {
        "old": _log(east, subject="old", occurredAt=_at(-30), contactId=contact)["id"],
        "new": _log(east, subject="new", occurredAt=_at(-1), contactId=contact)["id"],
        "tie1": _log(east, subject="tie1", occurredAt=_at(-10), contactId=contact)["id"],
        "tie2": _log(rep, subject="tie2", occurredAt=_at(-10), contactId=contact,
                     accountId=w["account"])["id"],
        "support": _log(agent, subject="support", occurredAt=_at(-5), contactId=contact)["id"],
    }
    _log(east, subject="elsewhere", occurredAt=_at(-2), accountId=w["account"])
    ties = sorted([ids["tie1"], ids["tie2"]])

    def timeline(who: Any, record: str, first: int = 50) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        after = None
        while True:
            got = _ok(who.gql(TIMELINE, {"id": record, "first": first, "after": after}),
                      "timeline")
            nodes += [edge["node"] for edge in got["edges"]]
            if not got["pageInfo"]["hasNextPage"]:
                return nodes
            after = got["pageInfo"]["endCursor"]

    everything = [ids["new"], ids["support"], *ties, ids["old"]]
    # The support agent reads every activity; the east rep and manager not the support team's.
    assert [n["id"] for n in timeline(agent, contact)] == everything
    east_only = [i for i in everything if i != ids["support"]]
    assert [n["id"] for n in timeline(rep, contact)] == east_only
    assert [n["id"] for n in timeline(east, contact, first=2)] == east_only  # paged: same order
    times = [n["occurredAt"] for n in timeline(east, contact)]
    assert times == sorted(times, reverse=True)
    # The account's timeline: only what is linked to the account.
    on_account = [n["subject"] for n in timeline(east, w["account"])]
    assert on_account == ["elsewhere", "tie2"]
    # A record outside the caller's scope has no timeline for them.
    west_view = w["west"].gql(TIMELINE, {"id": contact})
    assert west_view["data"]["timeline"] is None and _codes(west_view) == ["NOT_FOUND"]
    unknown = east.gql(TIMELINE, {"id": "00000000-0000-7000-8000-000000000000"})
    assert _codes(unknown) == ["NOT_FOUND"]


# -- tasks ----------------------------------------------------------------------------------------

def test_open_tasks_by_due_time_with_overdue_flag_and_completion(caller: Any,
                                                                 appliance: Appliance) -> None:
    w = _world(caller)
    east = w["east"]
    rep = caller("sales_rep", team="east")
    contact = w["contact"]
    late = _log(east, kind="task", subject="late", dueAt=_at(-3), contactId=contact)["id"]
    soon = _log(east, kind="task", subject="soon", dueAt=_at(3), contactId=contact)["id"]
    undated = _log(east, kind="task", subject="undated", contactId=contact)["id"]
    rep_task = _log(rep, kind="task", subject="rep", dueAt=_at(1), contactId=contact)["id"]
    _log(east, kind="call", subject="not a task", contactId=contact)

    tasks = [e["node"] for e in _ok(east.gql(OPEN_TASKS), "openTasks")["edges"]]
    assert [t["id"] for t in tasks] == [late, rep_task, soon, undated]
    assert [t["overdue"] for t in tasks] == [True, False, False, False]
    mine = _ok(east.gql(OPEN_TASKS, {"owner": rep.client_id}), "openTasks")["edges"]
    assert [e["node"]["id"] for e in mine] == [rep_task]

    done = _ok(east.gql(COMPLETE, {"id": late}), "completeTask")
    assert done["doneAt"] is not None and done["overdue"] is False
    tasks = [e["node"]["id"] for e in _ok(east.gql(OPEN_TASKS), "openTasks")["edges"]]
    assert tasks == [rep_task, soon, undated]

    again = east.gql(COMPLETE, {"id": late})
    assert _codes(again) == ["CONFLICT"]
    call = _log(east, kind="call", subject="a call", contactId=contact)["id"]
    refused = east.gql(COMPLETE, {"id": call})
    assert _error(refused)["extensions"] == {"code": "BAD_USER_INPUT", "field": "id"}
    # A rep may read the team's tasks but complete only their own.
    assert _codes(rep.gql(COMPLETE, {"id": soon})) == ["FORBIDDEN"]
    assert _ok(rep.gql(COMPLETE, {"id": rep_task}), "completeTask")["doneAt"] is not None


# -- sealed bodies --------------------------------------------------------------------------------

def test_bodies_are_not_in_the_database(caller: Any, appliance: Appliance) -> None:
    w = _world(caller)
    _log(w["east"], kind="email", subject="Plaintextcontrol subject", body=BODY,
         contactId=w["contact"])
    dumped = _database_bytes(appliance)
    assert b"Plaintextcontrol subject" in dumped  # the scan sees the rows
    for needle in (b"Zanzibarquokka", b"private matter", BODY.encode().hex().encode()):
        assert needle not in dumped


GRANT = "mutation($rule: PolicyRuleInput!) { grantPolicy(rule: $rule) { policyVersion } }"


def test_a_role_without_body_read_gets_forbidden_at_that_path(caller: Any,
                                                              appliance: Appliance) -> None:
    w = _world(caller)
    logged = _log(w["east"], kind="email", subject="Quarterly review", body=BODY,
                  contactId=w["contact"])
    admin = caller("admin")
    for rule in ({"field": "class:internal", "action": "read"},
                 {"field": "@all", "action": "read"}):
        _ok(admin.gql(GRANT, {"rule": {"role": "integration", "objectType": "activity",
                                       **rule}}), "grantPolicy")
    integration = caller("integration")
    body = integration.gql("query($id: ID!) { activity(id: $id) { id subject body kind } }",
                           {"id": logged["id"]})
    error = _error(body)
    assert error["path"] == ["activity", "body"]
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert body["data"]["activity"] == {"id": logged["id"], "subject": "Quarterly review",
                                        "body": None, "kind": "email"}
    assert BODY not in json.dumps(body)
    with appliance.sessions() as session:
        refusals = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "activity.refused", AuditEvent.actor.contains(
                integration.client_id))))
    assert refusals and logged["id"] in refusals[-1].object_ids
    assert "body" in refusals[-1].fields


LIST = ("query($filter: [RecordFilter!], $sort: [RecordSort!], $after: String) { activities("
        "first: 2, filter: $filter, sort: $sort, after: $after) { edges { node { id subject } } "
        "pageInfo { hasNextPage endCursor } } }")


def test_activities_list_filters_and_sorts(caller: Any, appliance: Appliance) -> None:
    w = _world(caller)
    east = w["east"]
    contact = w["contact"]
    for i, kind in enumerate(["call", "task", "note", "task", "task"]):
        _log(east, kind=kind, subject=f"{kind}-{i}", occurredAt=_at(-i), contactId=contact)
    subjects: list[str] = []
    after = None
    while True:
        got = _ok(east.gql(LIST, {"filter": [{"field": "kind", "eq": "task"}],
                                  "sort": [{"field": "occurredAt", "direction": "ASC"}],
                                  "after": after}), "activities")
        subjects += [e["node"]["subject"] for e in got["edges"]]
        if not got["pageInfo"]["hasNextPage"]:
            break
        after = got["pageInfo"]["endCursor"]
    assert subjects == ["task-4", "task-3", "task-1"]
    # A filter on the sealed body is refused (it has no blind index), and leaks nothing.
    refused = east.gql(LIST, {"filter": [{"field": "body", "eq": "x"}]})
    assert refused["data"]["activities"] is None and _codes(refused) == ["BAD_USER_INPUT"]
