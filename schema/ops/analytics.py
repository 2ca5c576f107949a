"""Sales analytics: the pipeline by stage, the forecast by month, the win rate over a period.

Every figure is a SQL aggregate (GROUP BY) over the opportunities the caller may read (the same
record-rule clause as their lists), and only for a caller granted plain read on every field it
aggregates; otherwise FORBIDDEN, audited as a refusal. Amounts are never added across
currencies: figures come per currency (or for the one asked for).

Money stays exact on both databases. PostgreSQL sums `numeric` exactly. SQLite holds a NUMERIC
value as a double, which is exact to the cent only after rounding, and a SUM of doubles drifts
(0.10 thirty times is not 3.00), so on SQLite each amount is first turned into whole cents
(ROUND(amount * 100), exact for any amount the column holds to the cent) and the integers are
summed. The weighted amount is the sum of cents x probability / 10000, kept exact (up to 4
places); the database groups by probability too, so that the products are made here.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, func, select

from schema.context import RequestContext
from schema.ops import pipeline
from schema.ops.opportunities import currency as check_currency
from schema.ops.records import scope_clause
from security.authz import READ, Decision
from security.errors import BadUserInput, Forbidden
from storage.crm_models import Opportunity, PipelineStage

OBJECT = "opportunity"
MAX_MONTHS = 120
_HUNDRED = decimal.Decimal(100)


@dataclass(frozen=True)
class StageFigures:
    stage: PipelineStage
    currency: str | None
    count: int
    total_amount: decimal.Decimal
    weighted_amount: decimal.Decimal


@dataclass(frozen=True)
class MonthFigures:
    month: str  # YYYY-MM
    currency: str | None
    count: int
    total_amount: decimal.Decimal
    weighted_amount: decimal.Decimal


@dataclass(frozen=True)
class WinRate:
    won: int
    lost: int
    rate: float | None


def require_readable(ctx: RequestContext, fields: Iterable[str], purpose: str) -> None:
    """An aggregate over a field the caller may not read in full would tell them about its
    values: refused (audited) unless every field is plainly readable."""
    wanted = list(fields)
    denied = [name for name in wanted
              if ctx.guard.decision(OBJECT, name, READ) is not Decision.ALLOW]
    if denied:
        reason = (f"no policy grants read on {OBJECT}.{', '.join(denied)} to "
                  f"{', '.join(ctx.principal.roles) or 'no role'}, so {purpose} is refused")
        ctx.guard.refuse(OBJECT, (), denied, reason)
        raise Forbidden(reason, fields=denied)


def _cents(ctx: RequestContext) -> ColumnElement[Any]:
    """The amount in whole cents, exactly, on either database."""
    if ctx.session.get_bind().dialect.name == "sqlite":
        return cast(func.round(Opportunity.amount * 100), Integer)
    return Opportunity.amount * 100


def _month(ctx: RequestContext) -> ColumnElement[Any]:
    if ctx.session.get_bind().dialect.name == "sqlite":
        return func.strftime("%Y-%m", Opportunity.expected_close)
    return func.to_char(Opportunity.expected_close, "YYYY-MM")


def _money(cents: Any) -> decimal.Decimal:
    if cents is None:
        return decimal.Decimal("0.00")
    if isinstance(cents, float):  # never: both paths give integers or numerics
        raise TypeError("a money aggregate came back as a float")
    return (decimal.Decimal(cents) / _HUNDRED).quantize(decimal.Decimal("0.01"))


def _weighted(cents_times_probability: Any) -> decimal.Decimal:
    if cents_times_probability is None:
        return decimal.Decimal("0.00")
    if isinstance(cents_times_probability, float):
        raise TypeError("a money aggregate came back as a float")
    value = decimal.Decimal(cents_times_probability) / (_HUNDRED * _HUNDRED)
    return value.quantize(decimal.Decimal("0.0001")) \
        if value != value.quantize(decimal.Decimal("0.01")) \
        else value.quantize(decimal.Decimal("0.01"))


def _fold(rows: Iterable[Any]) -> dict[tuple[Any, Any], tuple[int, Any, Any]]:
    """Rows (key, currency, probability, count, sum of cents) folded per (key, currency) into
    (count, cents, cents x probability). Grouping by probability in SQL keeps the products
    out of the database's integers (SQLite's SUM stops at 2^63)."""
    folded: dict[tuple[Any, Any], tuple[int, Any, Any]] = {}
    for key, row_currency, probability, count, cents in rows:
        n, total, weighted = folded.get((key, row_currency), (0, 0, 0))
        cents = cents or 0
        folded[(key, row_currency)] = (n + int(count), total + cents,
                                       weighted + cents * int(probability or 0))
    return folded


def _currency(value: str | None) -> str | None:
    return None if value is None else check_currency("currency", value)


def pipeline_summary(ctx: RequestContext, *, currency: str | None = None) -> list[StageFigures]:
    """Per stage, in pipeline order: count, total and weighted amount of the visible
    opportunities (per currency, or in `currency` only). Stages holding none show zeros."""
    wanted = _currency(currency)
    require_readable(ctx, ("stage", "amount", "probability", "currency"), "the pipeline summary")
    scope = scope_clause(ctx, Opportunity, OBJECT, READ)
    cents = _cents(ctx)
    statement = (select(Opportunity.stage_id, Opportunity.currency, Opportunity.probability,
                        func.count(), func.sum(cents))
                 .where(scope).group_by(Opportunity.stage_id, Opportunity.currency,
                                        Opportunity.probability))
    if wanted is not None:
        statement = statement.where(Opportunity.currency == wanted)
    found: dict[str, list[StageFigures]] = {}
    stages = pipeline.ordered_stages(ctx)
    by_id = {s.id: s for s in stages}
    for (stage_id, row_currency), (count, total, weighted) in \
            _fold(ctx.session.execute(statement)).items():
        found.setdefault(stage_id, []).append(StageFigures(
            by_id[stage_id], row_currency, int(count), _money(total), _weighted(weighted)))
    figures: list[StageFigures] = []
    for stage in stages:
        rows = sorted(found.get(stage.id, []), key=lambda f: f.currency or "")
        figures += rows or [StageFigures(stage, wanted, 0, decimal.Decimal("0.00"),
                                         decimal.Decimal("0.00"))]
    return figures


def _months(start: dt.date, end: dt.date) -> list[str]:
    months = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def _period(start: dt.date, end: dt.date) -> None:
    if start > end:
        raise BadUserInput("from must not be after to", field="from")
    if (end.year - start.year) * 12 + end.month - start.month >= MAX_MONTHS:
        raise BadUserInput(f"the period spans at most {MAX_MONTHS} months", field="to")


def forecast(ctx: RequestContext, *, start: dt.date, end: dt.date,
             currency: str | None = None) -> list[MonthFigures]:
    """Per month of expected close in [start, end]: count, total and weighted amount of the
    visible open opportunities (stage neither won nor lost). With `currency`, every month of
    the period appears (zeros too); without it, each month and currency that has figures."""
    wanted = _currency(currency)
    _period(start, end)
    require_readable(ctx, ("stage", "amount", "probability", "currency", "expected_close"),
                     "the forecast")
    scope = scope_clause(ctx, Opportunity, OBJECT, READ)
    cents = _cents(ctx)
    month = _month(ctx).label("month")
    statement = (
        select(month, Opportunity.currency, Opportunity.probability, func.count(),
               func.sum(cents))
        .select_from(Opportunity)
        .join(PipelineStage, PipelineStage.id == Opportunity.stage_id)
        .where(scope, PipelineStage.is_won.is_(False), PipelineStage.is_lost.is_(False),
               Opportunity.expected_close >= start, Opportunity.expected_close <= end)
        .group_by(month, Opportunity.currency, Opportunity.probability))
    if wanted is not None:
        statement = statement.where(Opportunity.currency == wanted)
    rows = sorted((MonthFigures(str(m), c, n, _money(total), _weighted(weighted))
                   for (m, c), (n, total, weighted) in
                   _fold(ctx.session.execute(statement)).items()),
                  key=lambda r: (r.month, r.currency or ""))
    if wanted is None:
        return rows
    by_month = {r.month: r for r in rows}
    return [by_month.get(m) or MonthFigures(m, wanted, 0, decimal.Decimal("0.00"),
                                            decimal.Decimal("0.00"))
            for m in _months(start, end)]


def win_rate(ctx: RequestContext, *, start: dt.date, end: dt.date) -> WinRate:
    """Won and lost among the visible opportunities closed in [start, end] (UTC days), and
    won / (won + lost), None when none closed."""
    _period(start, end)
    require_readable(ctx, ("stage", "closed_at"), "the win rate")
    scope = scope_clause(ctx, Opportunity, OBJECT, READ)
    since = dt.datetime.combine(start, dt.time(), dt.UTC)
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    statement = (
        select(PipelineStage.is_won, func.count())
        .select_from(Opportunity)
        .join(PipelineStage, PipelineStage.id == Opportunity.stage_id)
        .where(scope, Opportunity.closed_at >= since, Opportunity.closed_at < until,
               (PipelineStage.is_won.is_(True)) | (PipelineStage.is_lost.is_(True)))
        .group_by(PipelineStage.is_won))
    won = lost = 0
    for is_won, count in ctx.session.execute(statement):
        if is_won:
            won = int(count)
        else:
            lost = int(count)
    return WinRate(won, lost, won / (won + lost) if won + lost else None)
