"""GraphQL for cases and SLAs (see schema/ops/cases.py)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.graphql import types as t
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
from schema.ops import cases
from storage.crm_models import Case as CaseRow

Ctx = Info[RequestContext, Any]


@strawberry.type(description="A customer-service case. SLA targets come from the policy of its "
                             "priority when it is opened (and when its priority changes while "
                             "open); a target is breached when met late or still unmet after it.")
class Case:
    row: strawberry.Private[CaseRow]
    id: strawberry.ID = record_id()
    subject: str | None = guarded("case", "subject")
    description: str | None = guarded("case", "description")
    contact: t.Contact | None = reference("case", "contact", "contact",
                                          lambda row: t.Contact(row=row))
    account: t.Account | None = reference("case", "account", "account",
                                          lambda row: t.Account(row=row))
    priority: str | None = guarded("case", "priority", description="urgent, high, normal or low")
    status: str | None = guarded("case", "status",
                                 description="open, pending, resolved or closed")
    assignee: str | None = guarded("case", "assignee", description="a principal id")
    first_response_due: dt.datetime | None = guarded("case", "first_response_due")
    resolution_due: dt.datetime | None = guarded("case", "resolution_due")
    first_response_at: dt.datetime | None = guarded(
        "case", "first_response_at", description="set by respondToCase (the first call)")
    resolved_at: dt.datetime | None = guarded("case", "resolved_at")
    response_breached: bool | None = guarded("case", "response_breached")
    resolution_breached: bool | None = guarded("case", "resolution_breached")
    owner: str | None = guarded("case", "owner", description="who opened the case")
    team: str | None = guarded("case", "team")
    created_at: dt.datetime | None = guarded("case", "created_at")
    updated_at: dt.datetime | None = guarded("case", "updated_at")
    custom_fields: list[CustomFieldValue] = custom_fields("case")


@strawberry.type
class SlaPolicy:
    priority: str
    first_response_minutes: int
    resolution_minutes: int


@strawberry.type(description="SLA figures of one priority over a period, counting only cases "
                             "the caller may see.")
class SlaReportLine:
    priority: str
    opened: int = strawberry.field(description="cases opened in the period")
    resolved: int = strawberry.field(description="cases resolved in the period")
    response_breaches: int = strawberry.field(
        description="cases opened in the period whose first response was (or is) late")
    resolution_breaches: int = strawberry.field(
        description="cases opened in the period whose resolution was (or is) late")
    open_breached_now: int = strawberry.field(
        description="cases open or pending now with a breached target, whenever opened")
    breach_rate: float = strawberry.field(
        description="share of the cases opened in the period that breached either target")


@strawberry.input
class CaseInput:
    subject: str
    description: str | None = None
    contact_id: strawberry.ID | None = None
    account_id: strawberry.ID | None = None
    priority: str = "normal"
    assignee: str | None = None
    custom_fields: list[CustomFieldInput] | None = None


@strawberry.input
class CasePatch:
    subject: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    contact_id: strawberry.ID | None = strawberry.UNSET
    account_id: strawberry.ID | None = strawberry.UNSET
    priority: str | None = strawberry.UNSET
    status: str | None = strawberry.UNSET
    assignee: str | None = strawberry.UNSET
    custom_fields: list[CustomFieldInput] | None = strawberry.UNSET



def _line(line: cases.SlaLine) -> SlaReportLine:
    return SlaReportLine(priority=line.priority, opened=line.opened, resolved=line.resolved,
                         response_breaches=line.response_breaches,
                         resolution_breaches=line.resolution_breaches,
                         open_breached_now=line.open_breached_now,
                         breach_rate=line.breach_rate)


def _policy(row: Any) -> SlaPolicy:
    return SlaPolicy(priority=row.priority, first_response_minutes=row.first_response_minutes,
                     resolution_minutes=row.resolution_minutes)


@strawberry.type
class Queries:
    @strawberry.field
    def cases(self, info: Ctx, first: int | None = 20, after: str | None = None,
              filter: list[RecordFilter] | None = None,
              sort: list[RecordSort] | None = None) -> Connection[Case] | None:
        page = cases.list_cases(info.context, first=first, after=after,
                                filters=to_filters(filter), sort=to_sort(sort))
        return to_connection(page, lambda row: Case(row=row))

    @strawberry.field
    def case(self, info: Ctx, id: strawberry.ID) -> Case | None:
        return Case(row=cases.get_case(info.context, id))

    @strawberry.field(description="The SLA targets per priority, in minutes.")
    def sla_policies(self, info: Ctx) -> list[SlaPolicy] | None:
        return [_policy(row) for row in cases.list_sla_policies(info.context)]

    @strawberry.field(description="SLA figures per priority over [from, to).")
    def sla_report(self, info: Ctx,
                   from_: Annotated[dt.datetime, strawberry.argument(name="from")],
                   to: dt.datetime) -> list[SlaReportLine] | None:
        return [_line(line) for line in cases.sla_report(info.context, from_, to)]


@strawberry.type
class Mutations:
    @strawberry.mutation(description="Open a case; its SLA targets come from its priority.")
    def open_case(self, info: Ctx, input: CaseInput) -> Case | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = cases.open_case(info.context, values, custom=custom)
        return Case(row=row)

    @strawberry.mutation
    def update_case(self, info: Ctx, id: strawberry.ID, input: CasePatch) -> Case | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = cases.update_case(info.context, id, values, custom=custom)
        return Case(row=row)

    @strawberry.mutation
    def assign_case(self, info: Ctx, id: strawberry.ID, assignee: str | None) -> Case | None:
        with info.context.savepoint():
            row = cases.assign_case(info.context, id, assignee)
        return Case(row=row)

    @strawberry.mutation(description="Record the first response (a later call changes nothing).")
    def respond_to_case(self, info: Ctx, id: strawberry.ID) -> Case | None:
        with info.context.savepoint():
            row = cases.respond_to_case(info.context, id)
        return Case(row=row)

    @strawberry.mutation
    def resolve_case(self, info: Ctx, id: strawberry.ID) -> Case | None:
        with info.context.savepoint():
            row = cases.resolve_case(info.context, id)
        return Case(row=row)

    @strawberry.mutation
    def delete_case(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(cases.delete_case(info.context, id)))

    @strawberry.mutation(description="Set the SLA targets of a priority (admin; audited). "
                                     "Applies to cases opened or re-prioritised afterwards.")
    def set_sla_policy(self, info: Ctx, priority: str, first_response_minutes: int,
                       resolution_minutes: int) -> SlaPolicy | None:
        with info.context.savepoint():
            row = cases.set_sla_policy(info.context, priority, first_response_minutes,
                                       resolution_minutes)
        return _policy(row)
