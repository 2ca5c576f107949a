"""GraphQL for activities and the timeline (see schema/ops/activities.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.graphql import types as t
from schema.graphql.cases import Case
from schema.graphql.fields import (
    Connection,
    CustomFieldInput,
    CustomFieldValue,
    RecordFilter,
    RecordSort,
    custom_fields,
    guarded,
    record_id,
    reference,
    split_input,
    to_connection,
    to_filters,
    to_sort,
)
from schema.graphql.leads import Lead
from schema.graphql.opportunities import Opportunity
from schema.ops import activities
from storage.crm_models import Activity as ActivityRow

Ctx = Info[RequestContext, Any]


def _linked_id(field_name: str) -> Any:
    """A link shown as an id: granted by the guard, and null when the linked record is outside
    the caller's scope (as a reference would be)."""
    def resolve(root: Any, info: Ctx) -> strawberry.ID | None:
        target = info.context.guard.reveal("activity", root.row, field_name)
        if target is None or info.context.loader(field_name).load(target) is None:
            return None
        return strawberry.ID(target)
    return strawberry.field(resolver=resolve)


def _overdue(root: Any, info: Ctx) -> bool | None:
    """A task not done whose due time has passed (read through the guard)."""
    guard = info.context.guard
    kind = guard.reveal("activity", root.row, "kind")
    due = guard.reveal("activity", root.row, "due_at")
    done = guard.reveal("activity", root.row, "done_at")
    return kind == "task" and done is None and due is not None and due < activities.now()


@strawberry.type(description="A task, call, meeting, note or logged email (body encrypted).")
class Activity:
    row: strawberry.Private[ActivityRow]
    id: strawberry.ID = record_id()
    kind: str | None = guarded("activity", "kind",
                               description="task, call, meeting, note or email")
    subject: str | None = guarded("activity", "subject")
    body: str | None = guarded("activity", "body")
    occurred_at: dt.datetime | None = guarded("activity", "occurred_at")
    due_at: dt.datetime | None = guarded("activity", "due_at", description="tasks only")
    done_at: dt.datetime | None = guarded("activity", "done_at", description="tasks only")
    overdue: bool | None = strawberry.field(resolver=_overdue)
    account: t.Account | None = reference("activity", "account", "account",
                                          lambda row: t.Account(row=row))
    contact: t.Contact | None = reference("activity", "contact", "contact",
                                          lambda row: t.Contact(row=row))
    lead: Lead | None = reference("activity", "lead", "lead", lambda row: Lead(row=row))
    opportunity: Opportunity | None = reference("activity", "opportunity", "opportunity",
                                                lambda row: Opportunity(row=row))
    lead_id: strawberry.ID | None = _linked_id("lead")
    opportunity_id: strawberry.ID | None = _linked_id("opportunity")
    case: Case | None = reference("activity", "case", "case", lambda row: Case(row=row))
    owner: str | None = guarded("activity", "owner")
    team: str | None = guarded("activity", "team")
    created_at: dt.datetime | None = guarded("activity", "created_at")
    updated_at: dt.datetime | None = guarded("activity", "updated_at")
    custom_fields: list[CustomFieldValue] = custom_fields("activity")


@strawberry.input(description="An activity links to at least one account, contact, lead, "
                              "opportunity or case you can see. Times need a time zone.")
class ActivityInput:
    kind: str
    subject: str
    body: str | None = None
    occurred_at: dt.datetime | None = strawberry.field(default=None,
                                                       description="default: now")
    due_at: dt.datetime | None = None
    done_at: dt.datetime | None = None
    account_id: strawberry.ID | None = None
    contact_id: strawberry.ID | None = None
    lead_id: strawberry.ID | None = None
    opportunity_id: strawberry.ID | None = None
    case_id: strawberry.ID | None = None
    custom_fields: list[CustomFieldInput] | None = None


@strawberry.input
class ActivityPatch:
    kind: str | None = strawberry.UNSET
    subject: str | None = strawberry.UNSET
    body: str | None = strawberry.UNSET
    occurred_at: dt.datetime | None = strawberry.UNSET
    due_at: dt.datetime | None = strawberry.UNSET
    done_at: dt.datetime | None = strawberry.UNSET
    account_id: strawberry.ID | None = strawberry.UNSET
    contact_id: strawberry.ID | None = strawberry.UNSET
    lead_id: strawberry.ID | None = strawberry.UNSET
    opportunity_id: strawberry.ID | None = strawberry.UNSET
    case_id: strawberry.ID | None = strawberry.UNSET
    custom_fields: list[CustomFieldInput] | None = strawberry.UNSET


def _wrap(row: Any) -> Activity:
    return Activity(row=row)


@strawberry.type
class Queries:
    @strawberry.field
    def activities(self, info: Ctx, first: int | None = 20, after: str | None = None,
                   filter: list[RecordFilter] | None = None,
                   sort: list[RecordSort] | None = None) -> Connection[Activity] | None:
        page = activities.list_activities(info.context, first=first, after=after,
                                          filters=to_filters(filter), sort=to_sort(sort))
        return to_connection(page, _wrap)

    @strawberry.field
    def activity(self, info: Ctx, id: strawberry.ID) -> Activity | None:
        return Activity(row=activities.get_activity(info.context, id))

    @strawberry.field(description="Every activity you may see linked to this account, contact, "
                                  "lead, opportunity or case, newest first (ties by id).")
    def timeline(self, info: Ctx, id: strawberry.ID, first: int | None = 50,
                 after: str | None = None) -> Connection[Activity] | None:
        return to_connection(activities.timeline(info.context, id, first=first, after=after),
                             _wrap)

    @strawberry.field(description="Tasks not done (of `owner`, when given), by due time; tasks "
                                  "without one come last.")
    def open_tasks(self, info: Ctx, owner: str | None = None, first: int | None = 20,
                   after: str | None = None) -> Connection[Activity] | None:
        page = activities.open_tasks(info.context, owner=owner, first=first, after=after)
        return to_connection(page, _wrap)


@strawberry.type
class Mutations:
    @strawberry.mutation
    def log_activity(self, info: Ctx, input: ActivityInput) -> Activity | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = activities.log_activity(info.context, values, custom=custom)
        return Activity(row=row)

    @strawberry.mutation
    def update_activity(self, info: Ctx, id: strawberry.ID,
                        input: ActivityPatch) -> Activity | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = activities.update_activity(info.context, id, values, custom=custom)
        return Activity(row=row)

    @strawberry.mutation(description="Mark a task done now (other kinds are refused).")
    def complete_task(self, info: Ctx, id: strawberry.ID) -> Activity | None:
        with info.context.savepoint():
            row = activities.complete_task(info.context, id)
        return Activity(row=row)

    @strawberry.mutation
    def delete_activity(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(activities.delete_activity(info.context, id)))
