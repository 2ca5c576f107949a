"""GraphQL for data-subject rights and retention (see schema/ops/privacy.py and
schema/ops/retention.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from schema.context import RequestContext
from schema.ops import privacy, retention

Ctx = Info[RequestContext, Any]


@strawberry.type
class ErasedRecords:
    object_type: str
    ids: list[strawberry.ID]


@strawberry.type(description="What an erasure destroyed.")
class SubjectErasure:
    contact_id: strawberry.ID
    erased: list[ErasedRecords]
    unlinked_opportunities: list[strawberry.ID]


@strawberry.type
class RetentionRule:
    object_type: str
    days: int
    condition: str
    updated_at: dt.datetime


@strawberry.type
class RetentionOutcome:
    object_type: str
    condition: str
    days: int
    count: int
    ids: list[strawberry.ID]


def _rule(row: Any) -> RetentionRule:
    return RetentionRule(object_type=row.object_type, days=row.days, condition=row.condition,
                         updated_at=row.updated_at)


@strawberry.type
class Queries:
    @strawberry.field(description="Everything held on a person, as JSON, including who accessed "
                      "their data. Needs the `subject` manage permission; audited.")
    def export_subject_data(self, info: Ctx, contact_id: strawberry.ID) -> JSON | None:
        return cast(JSON, privacy.export_subject(info.context, contact_id))

    @strawberry.field
    def retention_rules(self, info: Ctx) -> list[RetentionRule] | None:
        return [_rule(row) for row in retention.list_rules(info.context)]


@strawberry.type
class Mutations:
    @strawberry.mutation(description="Erase a person: their records deleted, their keys "
                         "destroyed (crypto-shredding), an audited tombstone left.")
    def erase_subject(self, info: Ctx, contact_id: strawberry.ID) -> SubjectErasure | None:
        with info.context.savepoint():
            report = privacy.erase_subject(info.context, contact_id)
        return SubjectErasure(
            contact_id=strawberry.ID(report.contact_id),
            erased=[ErasedRecords(object_type=k, ids=[strawberry.ID(i) for i in v])
                    for k, v in report.erased.items()],
            unlinked_opportunities=[strawberry.ID(i) for i in report.unlinked_opportunities])

    @strawberry.mutation(description="lead: unconverted|any; activity: done|any; "
                         "case: closed|resolved. Records matching and older than `days` are "
                         "erased by `enclave retention run`.")
    def set_retention_rule(self, info: Ctx, object_type: str, days: int,
                           condition: str) -> RetentionRule | None:
        with info.context.savepoint():
            return _rule(retention.set_rule(info.context, object_type, days, condition))

    @strawberry.mutation
    def remove_retention_rule(self, info: Ctx, object_type: str) -> str | None:
        with info.context.savepoint():
            return retention.remove_rule(info.context, object_type)

    @strawberry.mutation(description="Apply the retention rules now (or, with dryRun, say what "
                         "they would erase).")
    def run_retention(self, info: Ctx, dry_run: bool = False) -> list[RetentionOutcome] | None:
        with info.context.savepoint():
            results = retention.run(info.context, dry_run=dry_run)
        return [RetentionOutcome(object_type=r.object_type, condition=r.condition, days=r.days,
                                 count=len(r.ids), ids=[strawberry.ID(i) for i in r.ids])
                for r in results]
