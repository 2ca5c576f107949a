"""Activities: tasks, calls, meetings, notes and logged emails, linked to the records they
concern. Bodies are sealed under the activity's own key and read only through the guard.

Rules:
- every activity links to at least one account, contact, lead, opportunity or case, and each
  link must be a record the caller can see (`records.check_reference`);
- `due_at` and `done_at` belong to tasks only; `complete_task` refuses other kinds;
- times carry a time zone (a naive time is refused, not guessed).

`timeline` merges the activities linked to one record, newest first (ties broken by id, so
paging is stable); `open_tasks` lists tasks not done by due date (no due date last).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schema.context import RequestContext
from schema.ops import validation
from schema.ops.custom_values import CustomValue
from schema.ops.records import (
    Page,
    authorise_write,
    check_reference,
    check_searchable,
    clean,
    create_record,
    delete_record,
    get_visible,
    list_records,
    model_of,
    update_record,
)
from schema.ops.search import SortKey
from security.authz import WRITE
from security.errors import BadUserInput, Conflict, NotFound
from storage.crm_models import Activity

OBJECT = "activity"
KINDS = ("task", "call", "meeting", "note", "email")
#: Link attribute -> the object type it refers to (and the GraphQL argument naming it).
LINKS: dict[str, tuple[str, str]] = {
    "account_id": ("account", "accountId"),
    "contact_id": ("contact", "contactId"),
    "lead_id": ("lead", "leadId"),
    "opportunity_id": ("opportunity", "opportunityId"),
    "case_id": ("case", "caseId"),
}
#: The record types a timeline can be asked for, in the order an id is looked up.
TIMELINE_TYPES = ("account", "contact", "lead", "opportunity", "case")
MAX_BODY = 50_000


def now() -> dt.datetime:
    """The clock of this module (tests replace it)."""
    return dt.datetime.now(dt.UTC)


def _kind(value: Any) -> str:
    if value not in KINDS:
        raise BadUserInput(f"kind must be one of {', '.join(KINDS)}", field="kind")
    return str(value)


def moment(field: str, value: Any) -> dt.datetime | None:
    """An aware datetime (normalised to UTC), or BAD_USER_INPUT naming the field."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise BadUserInput(f"{field} must be an ISO 8601 date and time",
                               field=field) from None
    if not isinstance(value, dt.datetime):
        raise BadUserInput(f"{field} must be a date and time", field=field)
    if value.tzinfo is None:
        raise BadUserInput(f"{field} must carry a time zone (e.g. Z or +01:00)", field=field)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise BadUserInput(f"{field} is out of range", field=field) from None


def _link(field: str) -> Callable[[Any], Any]:
    return lambda v: None if v is None else validation.record_id(field, v)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "kind": _kind,
    "subject": lambda v: validation.text("subject", v, max_length=200, required=True),
    "body": lambda v: validation.text("body", v, max_length=MAX_BODY),
    "occurred_at": lambda v: moment("occurredAt", v),
    "due_at": lambda v: moment("dueAt", v),
    "done_at": lambda v: moment("doneAt", v),
    **{attr: _link(arg) for attr, (_, arg) in LINKS.items()},
}


def _check_links(ctx: RequestContext, values: Mapping[str, Any]) -> None:
    for attr, (object_type, arg) in LINKS.items():
        if values.get(attr) is not None:
            check_reference(ctx, object_type, values[attr], arg)


def _check_shape(state: Mapping[str, Any]) -> None:
    """The whole record (after a change) must be consistent."""
    if not any(state.get(attr) for attr in LINKS):
        raise BadUserInput("an activity links to at least one account, contact, lead, "
                           "opportunity or case", field="links")
    if state.get("kind") != "task":
        for attr, arg in (("due_at", "dueAt"), ("done_at", "doneAt")):
            if state.get(attr) is not None:
                raise BadUserInput(f"{arg} is for tasks only", field=arg)


def log_activity(ctx: RequestContext, data: Mapping[str, Any],
                 custom: Sequence[CustomValue] = ()) -> Activity:
    authorise_write(ctx, OBJECT, data)
    values = clean(OBJECT, _CHECKS, data, required=("kind", "subject"), creating=True)
    if values.get("occurred_at") is None:
        values["occurred_at"] = now()
    _check_shape(values)
    _check_links(ctx, values)
    record: Activity = create_record(ctx, OBJECT, values, custom=custom,
                                     audit_action="activity.log")
    return record


def update_activity(ctx: RequestContext, activity_id: str, data: Mapping[str, Any],
                    custom: Sequence[CustomValue] = ()) -> Activity:
    authorise_write(ctx, OBJECT, data, record_id=activity_id)
    values = clean(OBJECT, _CHECKS, data, creating=False)
    if "subject" in values and values["subject"] is None:
        raise BadUserInput("subject must not be empty", field="subject")
    if "kind" in values and values["kind"] is None:
        raise BadUserInput("kind is required", field="kind")
    if "occurred_at" in values and values["occurred_at"] is None:
        raise BadUserInput("occurredAt must not be null", field="occurredAt")
    record = get_visible(ctx, Activity, OBJECT, activity_id, WRITE)
    state = {name: getattr(record, name) for name in ("kind", "due_at", "done_at", *LINKS)}
    state.update(values)
    _check_shape(state)
    _check_links(ctx, {k: v for k, v in values.items() if k in LINKS})
    updated: Activity = update_record(ctx, OBJECT, record.id, values, custom=custom,
                                      record=record)
    return updated


def complete_task(ctx: RequestContext, activity_id: str) -> Activity:
    record = get_visible(ctx, Activity, OBJECT, activity_id, WRITE)
    if record.kind != "task":
        raise BadUserInput(f"activity {record.id} is a {record.kind}, not a task; only tasks "
                           "are completed", field="id")
    if record.done_at is not None:
        raise Conflict(f"task {record.id} was already completed at {record.done_at.isoformat()}")
    updated: Activity = update_record(ctx, OBJECT, record.id, {"done_at": now()}, record=record,
                                      audit_action="activity.complete")
    return updated


def delete_activity(ctx: RequestContext, activity_id: str) -> str:
    return delete_record(ctx, OBJECT, activity_id, audit_action="activity.delete")


def get_activity(ctx: RequestContext, activity_id: str) -> Activity:
    record: Activity = get_visible(ctx, Activity, OBJECT, activity_id)
    return record


def list_activities(ctx: RequestContext, *, first: int | None = None,
                    after: str | None = None, **search: Any) -> Page[Activity]:
    """A page of the activities the caller may see (`search`: the generic filters and sort,
    when given)."""
    return list_records(ctx, OBJECT, first=first, after=after, **search)


# -- time-ordered lists (the generic sort: NULLs last, ties by id, keyset cursors) ----------

def timeline(ctx: RequestContext, record_id: str, *, first: int | None = None,
             after: str | None = None) -> Page[Activity]:
    """The activities linked to one account, contact, lead, opportunity or case that the caller
    may see, newest first (ties by id). The record itself must be visible to the caller
    (NOT_FOUND otherwise, like any record outside their scope)."""
    rid = validation.record_id("id", record_id)
    found = next((t for t in TIMELINE_TYPES
                  if ctx.session.get(model_of(t), rid) is not None), None)
    if found is None:
        raise NotFound(f"no account, contact, lead, opportunity or case {rid}")
    get_visible(ctx, model_of(found), found, rid)
    check_searchable(ctx, OBJECT, [found])
    return list_records(ctx, OBJECT, first=first, after=after,
                        where=[getattr(Activity, f"{found}_id") == rid],
                        sort=[SortKey("occurred_at", descending=True)])


def open_tasks(ctx: RequestContext, *, owner: str | None = None, first: int | None = None,
               after: str | None = None) -> Page[Activity]:
    """Tasks not done that the caller may see (of `owner`, when given), by due time, tasks
    without one last; ties by id."""
    check_searchable(ctx, OBJECT, ["kind", "done_at"] + (["owner"] if owner is not None else []))
    where = [Activity.kind == "task", Activity.done_at.is_(None)]
    if owner is not None:
        where.append(Activity.owner == validation.text("owner", owner, max_length=100,
                                                       required=True))
    return list_records(ctx, OBJECT, first=first, after=after, where=where,
                        sort=[SortKey("due_at")])


def is_overdue(record: Activity, at: dt.datetime | None = None) -> bool:
    """A task not done whose due time has passed."""
    return (record.kind == "task" and record.done_at is None and record.due_at is not None
            and record.due_at < (at or now()))
