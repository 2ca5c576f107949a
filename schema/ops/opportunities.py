"""Opportunities: deals moving through the pipeline. Amounts are Decimal end to end.

An opportunity stands in one pipeline stage; its probability defaults to the stage's. Moving it
(`move_opportunity`) records who moved it and when (a StageChange row, audited
`opportunity.stage`), sets `closed_at` when the new stage is won or lost and clears it when the
deal is reopened. Creation records the first stage the same way, so the history is complete.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, select

from schema.context import RequestContext
from schema.ops import pipeline, search, validation
from schema.ops.custom_values import CustomValue
from schema.ops.records import (
    Page,
    authorise_write,
    check_reference,
    clean,
    create_record,
    delete_record,
    get_visible,
    list_records,
    update_record,
)
from security.authz import WRITE
from security.errors import BadUserInput
from storage.crm_models import Opportunity, PipelineStage, StageChange
from storage.ids import new_id
from storage.models import utcnow

OBJECT = "opportunity"
MAX_AMOUNT = decimal.Decimal(10) ** 15
_CENT = decimal.Decimal("0.01")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def amount(field: str, value: Any) -> decimal.Decimal | None:
    """A money amount: exact (never a float), >= 0, at most 2 decimal places, <= 10^15."""
    if value is None:
        return None
    if isinstance(value, float | bool):
        raise BadUserInput(f"{field} must be a decimal number given as text", field=field)
    try:
        number = decimal.Decimal(value) if isinstance(value, int | decimal.Decimal) \
            else decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise BadUserInput(f"{field} must be a decimal number", field=field) from None
    if not number.is_finite():
        raise BadUserInput(f"{field} must be a finite number", field=field)
    if number < 0:
        raise BadUserInput(f"{field} must not be negative", field=field)
    if number > MAX_AMOUNT:
        raise BadUserInput(f"{field} must be at most 10^15", field=field)
    if number != number.quantize(_CENT, context=decimal.Context(prec=40)):
        raise BadUserInput(f"{field} has at most 2 decimal places", field=field)
    return number.quantize(_CENT, context=decimal.Context(prec=40))


def currency(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise BadUserInput(f"{field} must be an ISO 4217 code of three capital letters",
                           field=field)
    return value


def _date(field: str, value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise BadUserInput(f"{field} must be a date as YYYY-MM-DD", field=field) from None


def _expected_close(value: Any) -> dt.date | None:
    found = _date("expectedClose", value)
    if found is not None and not 1900 <= found.year <= 2999:
        raise BadUserInput("expectedClose must be between 1900 and 2999", field="expectedClose")
    return found


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: validation.text("name", v, max_length=200, required=True),
    "account_id": lambda v: None if v is None else validation.record_id("accountId", v),
    "contact_id": lambda v: None if v is None else validation.record_id("contactId", v),
    "amount": lambda v: amount("amount", v),
    "currency": lambda v: currency("currency", v),
    "stage_id": lambda v: None if v is None else pipeline.stage_id("stageId", v),
    "probability": lambda v: None if v is None else pipeline.probability("probability", v),
    "expected_close": _expected_close,
    "description": lambda v: validation.text("description", v, max_length=10_000),
}
#: What `updateOpportunity` may change (the stage moves only through `move_opportunity`).
_PATCHABLE = set(_CHECKS) - {"stage_id"}


def _storable(ctx: RequestContext, values: Mapping[str, Any]) -> None:
    """SQLite keeps a NUMERIC value as a double: refuse an amount it would not give back to the
    cent (above about 7 * 10^13), rather than change someone's money silently."""
    value = values.get("amount")
    if value is None or ctx.session.get_bind().dialect.name != "sqlite":
        return
    if decimal.Decimal(float(value)).quantize(_CENT) != value:
        raise BadUserInput("amount is more than the embedded database (SQLite) holds to the "
                           "cent; PostgreSQL holds amounts up to 10^15", field="amount")


def _references(ctx: RequestContext, values: Mapping[str, Any]) -> None:
    if values.get("account_id") is not None:
        check_reference(ctx, "account", values["account_id"], "accountId")
    if values.get("contact_id") is not None:
        check_reference(ctx, "contact", values["contact_id"], "contactId")


def _record_move(ctx: RequestContext, opportunity_id: str, from_stage: str | None,
                 to_stage: str) -> None:
    ctx.session.add(StageChange(id=new_id(), opportunity_id=opportunity_id,
                                from_stage=from_stage, to_stage=to_stage,
                                changed_by=ctx.principal.actor, changed_at=utcnow()))


def _closed_at(stage: PipelineStage) -> dt.datetime | None:
    return utcnow() if stage.is_won or stage.is_lost else None


def list_opportunities(ctx: RequestContext, *, first: int | None = None,
                       after: str | None = None,
                       where: Iterable[ColumnElement[bool]] = (),
                       filters: Sequence[search.FieldFilter] = (),
                       sort: Sequence[search.SortKey] = ()) -> Page[Opportunity]:
    result: Page[Opportunity] = list_records(ctx, OBJECT, first=first, after=after, where=where,
                                             filters=filters, sort=sort)
    ctx.loader("account").prime(r.account_id for r in result.items)
    ctx.loader("contact").prime(r.contact_id for r in result.items)
    return result


def get_opportunity(ctx: RequestContext, opportunity_id: str) -> Opportunity:
    return get_visible(ctx, Opportunity, OBJECT, opportunity_id)


def create_opportunity(ctx: RequestContext, data: Mapping[str, Any], *,
                       custom: Sequence[CustomValue] = ()) -> Opportunity:
    """Create an opportunity in `stage_id` (default: the first open stage of the pipeline)."""
    authorise_write(ctx, OBJECT, data)
    data = dict(data)
    if data.get("currency") is None:
        data.pop("currency", None)
    values = clean(OBJECT, _CHECKS, data, required=("name",), creating=True)
    values.setdefault("currency", "EUR")
    if values.get("stage_id") is None:
        stage = pipeline.first_open_stage(ctx)
        if stage is None:
            raise BadUserInput("stageId is required: the pipeline has no open stage",
                               field="stageId")
    else:
        stage = pipeline.get_stage(ctx, values["stage_id"])
    values["stage_id"] = stage.id
    if values.get("probability") is None:
        values["probability"] = stage.probability
    values["closed_at"] = _closed_at(stage)
    _storable(ctx, values)
    _references(ctx, values)
    record = create_record(ctx, OBJECT, values, custom=custom)
    _record_move(ctx, record.id, None, stage.id)
    ctx.session.flush()
    return record


def update_opportunity(ctx: RequestContext, opportunity_id: str, changes: Mapping[str, Any], *,
                       custom: Sequence[CustomValue] = ()) -> Opportunity:
    authorise_write(ctx, OBJECT, changes, record_id=opportunity_id)
    if "stage_id" in changes:
        raise BadUserInput("the stage changes with moveOpportunity, which records it",
                           field="stageId")
    if "currency" in changes and changes["currency"] is None:
        raise BadUserInput("currency must be an ISO 4217 code of three capital letters",
                           field="currency")
    if "probability" in changes and changes["probability"] is None:
        raise BadUserInput("probability must be a whole number from 0 to 100",
                           field="probability")
    values = clean(OBJECT, {k: _CHECKS[k] for k in _PATCHABLE}, changes, creating=False)
    _storable(ctx, values)
    _references(ctx, values)
    return update_record(ctx, OBJECT, opportunity_id, values, custom=custom)  # type: ignore[no-any-return]


def move_opportunity(ctx: RequestContext, opportunity_id: str, stage_id: Any) -> Opportunity:
    """Move to another stage: its default probability, closed_at set (won/lost) or cleared
    (reopened), and a StageChange naming who and when. Audited as `opportunity.stage`."""
    record: Opportunity = get_visible(ctx, Opportunity, OBJECT, opportunity_id, WRITE)
    stage = pipeline.get_stage(ctx, stage_id)
    if stage.id == record.stage_id:
        raise BadUserInput(f"the opportunity is already in stage {stage.id}", field="stageId")
    closed_at = _closed_at(stage)
    from_stage = record.stage_id
    update_record(ctx, OBJECT, record.id, {"stage_id": stage.id, "probability": stage.probability,
                                           "closed_at": closed_at},
                  audit_action="opportunity.stage", record=record)
    _record_move(ctx, record.id, from_stage, stage.id)
    ctx.session.flush()
    return record


def delete_opportunity(ctx: RequestContext, opportunity_id: str) -> str:
    return delete_record(ctx, OBJECT, opportunity_id)


def stage_history(ctx: RequestContext, record: Opportunity,
                  loaded: Mapping[str, list[StageChange]] | None = None) -> list[StageChange]:
    """The record's moves, oldest first, for a caller who may read its `stage` (refused and
    audited otherwise, like the field itself). `loaded`: histories of a page, loaded at once
    by `stage_histories`."""
    ctx.guard.reveal(OBJECT, record, "stage")
    if loaded is not None and record.id in loaded:
        return loaded[record.id]
    return stage_histories(ctx, [record])[record.id]


def stage_histories(ctx: RequestContext,
                    records: Sequence[Opportunity]) -> dict[str, list[StageChange]]:
    """The histories of many records in one query (the caller's right to read `stage` is
    checked by the record asked about, in `stage_history`)."""
    ids = list(dict.fromkeys(r.id for r in records))
    found: dict[str, list[StageChange]] = {i: [] for i in ids}
    for change in ctx.session.scalars(
            select(StageChange).where(StageChange.opportunity_id.in_(ids))
            .order_by(StageChange.changed_at, StageChange.id)):
        found[change.opportunity_id].append(change)
    return found
