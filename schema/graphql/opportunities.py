"""GraphQL for opportunities, the pipeline and sales analytics (see schema/ops/opportunities.py,
schema/ops/pipeline.py and schema/ops/analytics.py). Amounts are the `Decimal` scalar (a string
on the wire), never floats."""

from __future__ import annotations

import datetime as dt
import decimal
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
from schema.ops import analytics, opportunities, pipeline
from storage.crm_models import Opportunity as OpportunityRow
from storage.crm_models import PipelineStage as StageRow

Ctx = Info[RequestContext, Any]
OBJECT = "opportunity"


@strawberry.type(description="A stage of the sales pipeline.")
class PipelineStage:
    id: strawberry.ID
    name: str
    position: int
    probability: int
    is_won: bool
    is_lost: bool

    @staticmethod
    def of(row: StageRow) -> PipelineStage:
        return PipelineStage(id=strawberry.ID(row.id), name=row.name, position=row.position,
                             probability=row.probability, is_won=bool(row.is_won),
                             is_lost=bool(row.is_lost))


@strawberry.type(description="One move of an opportunity between stages: who and when.")
class StageChange:
    from_stage: str | None = strawberry.field(description="Stage id; null for the first stage.")
    to_stage: str = strawberry.field(description="Stage id.")
    changed_by: str
    changed_at: dt.datetime


def _stage(root: Opportunity, info: Ctx) -> PipelineStage | None:
    stage_id = info.context.guard.reveal(OBJECT, root.row, "stage")
    if stage_id is None:
        return None
    row = info.context.session.get(StageRow, stage_id)
    return PipelineStage.of(row) if row is not None else None


class HistoryBatch:
    """The rows of one page: the first `stageHistory` asked for loads them all (one query)."""

    def __init__(self, rows: list[OpportunityRow]) -> None:
        self.rows = rows
        self.loaded: dict[str, list[Any]] | None = None


def _history(root: Opportunity, info: Ctx) -> list[StageChange]:
    loaded = None
    if root.batch is not None:
        if root.batch.loaded is None:
            root.batch.loaded = opportunities.stage_histories(info.context, root.batch.rows)
        loaded = root.batch.loaded
    return [StageChange(from_stage=c.from_stage, to_stage=c.to_stage, changed_by=c.changed_by,
                        changed_at=c.changed_at)
            for c in opportunities.stage_history(info.context, root.row, loaded)]


def _account(row: Any) -> t.Account:
    return t.Account(row=row)


def _contact(row: Any) -> t.Contact:
    return t.Contact(row=row)


@strawberry.type
class Opportunity:
    row: strawberry.Private[OpportunityRow]
    batch: strawberry.Private[HistoryBatch | None] = None
    id: strawberry.ID = record_id()
    name: str | None = guarded(OBJECT, "name")
    account: t.Account | None = reference(OBJECT, "account", "account", _account)
    contact: t.Contact | None = reference(OBJECT, "contact", "contact", _contact)
    amount: decimal.Decimal | None = guarded(OBJECT, "amount")
    currency: str | None = guarded(OBJECT, "currency")
    stage: PipelineStage | None = strawberry.field(resolver=_stage)
    probability: int | None = guarded(OBJECT, "probability")
    expected_close: dt.date | None = guarded(OBJECT, "expected_close")
    closed_at: dt.datetime | None = guarded(OBJECT, "closed_at")
    description: str | None = guarded(OBJECT, "description")
    owner: str | None = guarded(OBJECT, "owner")
    team: str | None = guarded(OBJECT, "team")
    created_at: dt.datetime | None = guarded(OBJECT, "created_at")
    updated_at: dt.datetime | None = guarded(OBJECT, "updated_at")
    custom_fields: list[CustomFieldValue] = custom_fields(OBJECT)
    stage_history: list[StageChange] | None = strawberry.field(
        resolver=_history, description="Every move, oldest first (needs read on `stage`).")


@strawberry.input
class OpportunityInput:
    name: str
    account_id: strawberry.ID | None = None
    contact_id: strawberry.ID | None = None
    amount: decimal.Decimal | None = None
    currency: str | None = strawberry.field(default=None, description="ISO 4217; default EUR")
    stage_id: strawberry.ID | None = strawberry.field(
        default=None, description="Default: the first open stage of the pipeline.")
    probability: int | None = strawberry.field(default=None,
                                               description="0-100; default: the stage's.")
    expected_close: dt.date | None = None
    description: str | None = None
    custom_fields: list[CustomFieldInput] | None = None


@strawberry.input(description="Only the fields given change; the stage moves with "
                  "moveOpportunity.")
class OpportunityPatch:
    name: str | None = strawberry.UNSET
    account_id: strawberry.ID | None = strawberry.UNSET
    contact_id: strawberry.ID | None = strawberry.UNSET
    amount: decimal.Decimal | None = strawberry.UNSET
    currency: str | None = strawberry.UNSET
    probability: int | None = strawberry.UNSET
    expected_close: dt.date | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    custom_fields: list[CustomFieldInput] | None = strawberry.UNSET


@strawberry.input
class PipelineStageInput:
    id: strawberry.ID
    name: str
    position: int
    probability: int
    is_won: bool = False
    is_lost: bool = False


@strawberry.type(description="Opportunities of one stage (and currency).")
class StageSummary:
    stage: PipelineStage
    currency: str | None
    count: int
    total_amount: decimal.Decimal
    weighted_amount: decimal.Decimal = strawberry.field(
        description="The sum of amount x probability / 100.")


@strawberry.type(description="Open opportunities expected to close in one month.")
class ForecastMonth:
    month: str = strawberry.field(description="YYYY-MM")
    currency: str | None
    count: int
    total_amount: decimal.Decimal
    weighted_amount: decimal.Decimal


@strawberry.type
class WinRate:
    won: int
    lost: int
    rate: float | None = strawberry.field(description="won / (won + lost); null when none "
                                          "closed in the period.")



@strawberry.type
class Queries:
    @strawberry.field
    def opportunities(self, info: Ctx, first: int | None = 20, after: str | None = None,
                      filter: list[RecordFilter] | None = None,
                      sort: list[RecordSort] | None = None) -> Connection[Opportunity] | None:
        page = opportunities.list_opportunities(info.context, first=first, after=after,
                                                filters=to_filters(filter), sort=to_sort(sort))
        batch = HistoryBatch(list(page.items))
        return to_connection(page, lambda row: Opportunity(row=row, batch=batch))

    @strawberry.field
    def opportunity(self, info: Ctx, id: strawberry.ID) -> Opportunity | None:
        return Opportunity(row=opportunities.get_opportunity(info.context, id))

    @strawberry.field(description="The pipeline's stages in order.")
    def pipeline_stages(self, info: Ctx) -> list[PipelineStage] | None:
        return [PipelineStage.of(row) for row in pipeline.list_stages(info.context)]

    @strawberry.field(description="Per stage, in pipeline order: count, total and weighted "
                      "amount of the opportunities you may see, per currency.")
    def pipeline_summary(self, info: Ctx,
                         currency: str | None = None) -> list[StageSummary] | None:
        return [StageSummary(stage=PipelineStage.of(f.stage), currency=f.currency,
                             count=f.count, total_amount=f.total_amount,
                             weighted_amount=f.weighted_amount)
                for f in analytics.pipeline_summary(info.context, currency=currency)]

    @strawberry.field(description="Weighted amount and count of open opportunities per month "
                      "of expected close (from and to inclusive).")
    def forecast(self, info: Ctx, from_: Annotated[dt.date, strawberry.argument(name="from")],
                 to: dt.date, currency: str | None = None) -> list[ForecastMonth] | None:
        return [ForecastMonth(month=f.month, currency=f.currency, count=f.count,
                              total_amount=f.total_amount, weighted_amount=f.weighted_amount)
                for f in analytics.forecast(info.context, start=from_, end=to,
                                            currency=currency)]

    @strawberry.field(description="Won and lost among opportunities closed in the period "
                      "(UTC days, inclusive).")
    def win_rate(self, info: Ctx, from_: Annotated[dt.date, strawberry.argument(name="from")],
                 to: dt.date) -> WinRate | None:
        found = analytics.win_rate(info.context, start=from_, end=to)
        return WinRate(won=found.won, lost=found.lost, rate=found.rate)


@strawberry.type
class Mutations:
    @strawberry.mutation
    def create_opportunity(self, info: Ctx, input: OpportunityInput) -> Opportunity | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = opportunities.create_opportunity(info.context, values, custom=custom)
        return Opportunity(row=row)

    @strawberry.mutation
    def update_opportunity(self, info: Ctx, id: strawberry.ID,
                           input: OpportunityPatch) -> Opportunity | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = opportunities.update_opportunity(info.context, id, values, custom=custom)
        return Opportunity(row=row)

    @strawberry.mutation(description="Move to another stage; recorded in stageHistory.")
    def move_opportunity(self, info: Ctx, id: strawberry.ID,
                         stage_id: strawberry.ID) -> Opportunity | None:
        with info.context.savepoint():
            row = opportunities.move_opportunity(info.context, id, stage_id)
        return Opportunity(row=row)

    @strawberry.mutation
    def delete_opportunity(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(opportunities.delete_opportunity(info.context, id)))

    @strawberry.mutation(description="Create or change a pipeline stage (admin).")
    def upsert_pipeline_stage(self, info: Ctx, input: PipelineStageInput) -> PipelineStage | None:
        with info.context.savepoint():
            row = pipeline.upsert_stage(info.context, pipeline.StageInput(
                id=str(input.id), name=input.name, position=input.position,
                probability=input.probability, is_won=input.is_won, is_lost=input.is_lost))
        return PipelineStage.of(row)

    @strawberry.mutation(description="Remove a stage no opportunity stands in (admin).")
    def delete_pipeline_stage(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(pipeline.delete_stage(info.context, id)))
