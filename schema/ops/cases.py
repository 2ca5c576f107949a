"""Cases: customer-service requests with a priority, a status, an assignee and SLA targets.

SLA rules:
- `first_response_due` and `resolution_due` are computed when a case is opened, from its
  creation time and the `SlaPolicy` of its priority; if the priority changes while the case is
  open or pending, both are recomputed from the creation time and the new priority's policy.
  Changing a policy (`set_sla_policy`) applies to cases opened (or re-prioritised) afterwards.
- `first_response_at` is set by `respond_to_case` (the first call wins; later calls leave it).
  Logging an activity on the case does not set it: a response is a deliberate act by someone who
  may work the case.
- `resolved_at` is set when the status becomes resolved (or closed, if it was never resolved) and
  cleared when a case is reopened (open or pending).
- A target is breached when it was met late, or is still unmet once it has passed.

`sla_report` counts only cases the caller may see (their record rules as SQL) and only when they
may read the fields it counts by.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select

from schema.context import RequestContext
from schema.ops import validation
from schema.ops.activities import moment
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
    scope_clause,
    update_record,
)
from security.authz import MANAGE, READ, WRITE
from security.errors import BadUserInput, Conflict, Forbidden
from storage.crm_models import Case, SlaPolicy

OBJECT = "case"
PRIORITIES = ("urgent", "high", "normal", "low")
STATUSES = ("open", "pending", "resolved", "closed")
OPEN_STATUSES = ("open", "pending")
#: Longest SLA target accepted: one year.
MAX_MINUTES = 366 * 24 * 60
_PRINCIPAL_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,100}$")


def now() -> dt.datetime:
    """The clock of this module (tests replace it)."""
    return dt.datetime.now(dt.UTC)


def _choice(field: str, options: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if value not in options:
            raise BadUserInput(f"{field} must be one of {', '.join(options)}", field=field)
        return str(value)
    return check


def _assignee(value: Any) -> str | None:
    value = validation.text("assignee", value, max_length=100)
    if value is not None and not _PRINCIPAL_ID.match(value):
        raise BadUserInput("assignee must be a principal id (letters, digits, '_', '.', ':', "
                           "'@', '-')", field="assignee")
    return value


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "subject": lambda v: validation.text("subject", v, max_length=200, required=True),
    "description": lambda v: validation.text("description", v, max_length=20_000),
    "contact_id": lambda v: None if v is None else validation.record_id("contactId", v),
    "account_id": lambda v: None if v is None else validation.record_id("accountId", v),
    "priority": _choice("priority", PRIORITIES),
    "status": _choice("status", STATUSES),
    "assignee": _assignee,
}


def _check_links(ctx: RequestContext, values: Mapping[str, Any]) -> None:
    if values.get("contact_id") is not None:
        check_reference(ctx, "contact", values["contact_id"], "contactId")
    if values.get("account_id") is not None:
        check_reference(ctx, "account", values["account_id"], "accountId")


def _policy(ctx: RequestContext, priority: str) -> SlaPolicy:
    policy = ctx.session.get(SlaPolicy, priority)
    if policy is None:
        raise BadUserInput(f"no SLA policy is set for priority {priority}", field="priority")
    return policy


def _due(ctx: RequestContext, priority: str, opened: dt.datetime) -> dict[str, dt.datetime]:
    policy = _policy(ctx, priority)
    return {
        "first_response_due": opened + dt.timedelta(minutes=policy.first_response_minutes),
        "resolution_due": opened + dt.timedelta(minutes=policy.resolution_minutes),
    }


def open_case(ctx: RequestContext, data: Mapping[str, Any],
              custom: Sequence[CustomValue] = ()) -> Case:
    """Open a case (status open), owned by the caller, with SLA targets from its priority."""
    authorise_write(ctx, OBJECT, data)
    if "status" in data:
        raise BadUserInput("a case opens with status open", field="status")
    values = clean(OBJECT, _CHECKS, {"priority": "normal", **data}, required=("subject",),
                   creating=True)
    if values.get("priority") is None:
        raise BadUserInput("priority is required", field="priority")
    _check_links(ctx, values)
    opened = now()
    values.update(status="open", created_at=opened, updated_at=opened,
                  **_due(ctx, values["priority"], opened))
    record: Case = create_record(ctx, OBJECT, values, custom=custom, audit_action="case.open")
    return record


def _transition(ctx: RequestContext, record: Case, values: dict[str, Any]) -> None:
    """Add the SLA consequences of a change to `values`."""
    status = values.get("status", record.status)
    if "status" in values:
        if status in OPEN_STATUSES:
            if record.resolved_at is not None:
                values["resolved_at"] = None
        elif record.resolved_at is None:
            values["resolved_at"] = now()
    priority = values.get("priority", record.priority)
    if priority != record.priority and status in OPEN_STATUSES:
        values.update(_due(ctx, priority, record.created_at))


def update_case(ctx: RequestContext, case_id: str, data: Mapping[str, Any],
                custom: Sequence[CustomValue] = (), *, audit_action: str | None = None) -> Case:
    authorise_write(ctx, OBJECT, data, record_id=case_id)
    values = clean(OBJECT, _CHECKS, data, creating=False)
    for attr, field in (("subject", "subject"), ("priority", "priority"), ("status", "status")):
        if attr in values and values[attr] is None:
            raise BadUserInput(f"{field} must not be null", field=field)
    record: Case = get_visible(ctx, Case, OBJECT, case_id, WRITE)
    _check_links(ctx, values)
    _transition(ctx, record, values)
    updated: Case = update_record(ctx, OBJECT, record.id, values, custom=custom, record=record,
                                  audit_action=audit_action)
    return updated


def assign_case(ctx: RequestContext, case_id: str, assignee: str | None) -> Case:
    return update_case(ctx, case_id, {"assignee": assignee}, audit_action="case.assign")


def respond_to_case(ctx: RequestContext, case_id: str) -> Case:
    """Record the first response (once; a later call changes nothing)."""
    record: Case = get_visible(ctx, Case, OBJECT, case_id, WRITE)
    if record.first_response_at is not None:
        return record
    updated: Case = update_record(ctx, OBJECT, record.id, {"first_response_at": now()},
                                  record=record, audit_action="case.respond")
    return updated


def resolve_case(ctx: RequestContext, case_id: str) -> Case:
    record: Case = get_visible(ctx, Case, OBJECT, case_id, WRITE)
    if record.status not in OPEN_STATUSES:
        raise Conflict(f"case {record.id} is already {record.status}")
    return update_case(ctx, record.id, {"status": "resolved"}, audit_action="case.resolve")


def delete_case(ctx: RequestContext, case_id: str) -> str:
    return delete_record(ctx, OBJECT, case_id, audit_action="case.delete")


def get_case(ctx: RequestContext, case_id: str) -> Case:
    record: Case = get_visible(ctx, Case, OBJECT, case_id)
    return record


def list_cases(ctx: RequestContext, *, first: int | None = None, after: str | None = None,
               **search: Any) -> Page[Case]:
    return list_records(ctx, OBJECT, first=first, after=after, **search)


# -- SLA policies ---------------------------------------------------------------------------

def list_sla_policies(ctx: RequestContext) -> list[SlaPolicy]:
    """Anyone who reads cases (or manages SLAs) may see the targets."""
    if not ctx.guard.scopes(OBJECT, READ) and not ctx.guard.permits("sla", MANAGE):
        reason = (f"no policy grants read on cases or manage on sla to "
                  f"{', '.join(ctx.principal.roles) or 'no role'}")
        ctx.guard.refuse("sla", (), ("@read",), reason)
        raise Forbidden(reason)
    rows = {p.priority: p for p in ctx.session.scalars(select(SlaPolicy))}
    return [rows[p] for p in PRIORITIES if p in rows]


def _minutes(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MINUTES:
        raise BadUserInput(f"{field} must be a whole number of minutes from 1 to {MAX_MINUTES}",
                           field=field)
    return value


def set_sla_policy(ctx: RequestContext, priority: str, first_response_minutes: int,
                   resolution_minutes: int) -> SlaPolicy:
    """Set the targets of one priority (object-level manage on `sla`; audited)."""
    ctx.guard.require("sla", MANAGE)
    priority = _choice("priority", PRIORITIES)(priority) or ""
    if not priority:
        raise BadUserInput("priority is required", field="priority")
    first = _minutes("firstResponseMinutes", first_response_minutes)
    resolution = _minutes("resolutionMinutes", resolution_minutes)
    if first > resolution:
        raise BadUserInput("firstResponseMinutes must not exceed resolutionMinutes",
                           field="firstResponseMinutes")
    policy = ctx.session.get(SlaPolicy, priority)
    before = None if policy is None else (policy.first_response_minutes,
                                          policy.resolution_minutes)
    if policy is None:
        policy = SlaPolicy(priority=priority)
        ctx.session.add(policy)
    policy.first_response_minutes = first
    policy.resolution_minutes = resolution
    ctx.session.flush()
    ctx.audit("sla.set", object_type="sla", object_ids=[priority],
              fields=["first_response_minutes", "resolution_minutes"],
              reason=(f"{priority}: {before} -> {(first, resolution)} "
                      "(first response, resolution minutes)"))
    return policy


# -- the SLA report -------------------------------------------------------------------------

@dataclass(frozen=True)
class SlaLine:
    priority: str
    opened: int
    resolved: int
    response_breaches: int
    resolution_breaches: int
    open_breached_now: int
    #: Cases opened in the period that breached either target.
    breached: int

    @property
    def breach_rate(self) -> float:
        """Share of the cases opened in the period that breached either target."""
        return 0.0 if not self.opened else round(self.breached / self.opened, 4)


def _late(due: dt.datetime | None, done: dt.datetime | None, at: dt.datetime) -> bool:
    return due is not None and (done or at) > due


#: The fields the report counts by: a caller who may not read them gets no report.
REPORT_FIELDS = ("priority", "status", "created_at", "resolved_at", "first_response_due",
                 "first_response_at", "resolution_due")


def sla_report(ctx: RequestContext, start: Any, end: Any) -> list[SlaLine]:
    """Per priority, over cases the caller may see: opened in [start, end), resolved in it,
    response and resolution breaches among those opened in it, and cases open now that have
    breached a target (whenever opened)."""
    since = moment("from", start)
    until = moment("to", end)
    if since is None or until is None:
        raise BadUserInput("from and to are required", field="from" if since is None else "to")
    if since >= until:
        raise BadUserInput("from must be before to", field="from")
    check_searchable(ctx, OBJECT, REPORT_FIELDS)
    at = now()
    statement = select(Case.priority, Case.status, Case.created_at, Case.resolved_at,
                       Case.first_response_due, Case.first_response_at,
                       Case.resolution_due).where(
        scope_clause(ctx, Case, OBJECT, READ),
        or_(Case.created_at.between(since, until), Case.resolved_at.between(since, until),
            Case.status.in_(OPEN_STATUSES)))
    counts = {p: [0, 0, 0, 0, 0, 0] for p in PRIORITIES}
    ids_seen = 0
    for priority, status, created, resolved, r_due, r_at, s_due in ctx.session.execute(statement):
        row = counts.setdefault(priority, [0, 0, 0, 0, 0, 0])
        ids_seen += 1
        response_late = _late(r_due, r_at, at)
        resolution_late = _late(s_due, resolved, at)
        if since <= created < until:
            row[0] += 1
            row[2] += response_late
            row[3] += resolution_late
            row[5] += response_late or resolution_late
        if resolved is not None and since <= resolved < until:
            row[1] += 1
        if status in OPEN_STATUSES and (response_late or resolution_late):
            row[4] += 1
    ctx.audit("case.sla_report", object_type=OBJECT, fields=list(REPORT_FIELDS),
              reason=f"{since.isoformat()} .. {until.isoformat()}: {ids_seen} case(s) counted")
    return [SlaLine(p, *values) for p, values in counts.items()]
