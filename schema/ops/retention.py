"""Retention rules: records of an object type that match a condition and are older than N days
are erased (deleted and crypto-shredded, like an erasure) by `enclave retention run`.

Conditions and the age they measure:

    lead      unconverted   never converted; age from created_at
    lead      any           every lead; age from created_at
    activity  done          done; age from done_at
    activity  any           every activity; age from occurred_at
    case      closed        status closed; age from resolved_at (updated_at when never resolved)
    case      resolved      status resolved or closed; age as for closed

Setting and running rules needs the object-level permission `retention` manage (admin and
privacy_officer by default); both are audited (`retention.set`, `retention.run` with the ids).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select

from schema.context import RequestContext
from schema.ops import privacy
from schema.ops.campaigns import choice
from security.authz import MANAGE
from security.errors import BadUserInput, NotFound
from storage.crm_models import Activity, CampaignMember, Case, Lead, RetentionRule
from storage.models import MODELS, utcnow

OBJECT = "retention"
MAX_DAYS = 36_500
#: At most this many records erased per object type in one run (run again for the rest).
BATCH = 5_000

Matcher = Callable[[dt.datetime], ColumnElement[bool]]

CONDITIONS: dict[str, dict[str, Matcher]] = {
    "lead": {
        "unconverted": lambda cutoff: and_(Lead.converted_at.is_(None),
                                           Lead.converted_contact_id.is_(None),
                                           Lead.created_at < cutoff),
        "any": lambda cutoff: Lead.created_at < cutoff,
    },
    "activity": {
        "done": lambda cutoff: and_(Activity.done_at.is_not(None), Activity.done_at < cutoff),
        "any": lambda cutoff: Activity.occurred_at < cutoff,
    },
    "case": {
        "closed": lambda cutoff: and_(
            Case.status == "closed", func.coalesce(Case.resolved_at, Case.updated_at) < cutoff),
        "resolved": lambda cutoff: and_(
            Case.status.in_(("resolved", "closed")),
            func.coalesce(Case.resolved_at, Case.updated_at) < cutoff),
    },
}


def set_rule(ctx: RequestContext, object_type: str, days: int, condition: str) -> RetentionRule:
    ctx.guard.require(OBJECT, MANAGE)
    object_type = choice("objectType", object_type, tuple(CONDITIONS), required=True) or ""
    condition = choice("condition", condition, tuple(CONDITIONS[object_type]),
                       required=True) or ""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise BadUserInput(f"days must be a whole number between 1 and {MAX_DAYS}", field="days")
    rule = ctx.session.get(RetentionRule, object_type)
    if rule is None:
        rule = RetentionRule(object_type=object_type, days=days, condition=condition)
        ctx.session.add(rule)
    rule.days, rule.condition, rule.updated_at = days, condition, utcnow()
    ctx.session.flush()
    ctx.audit("retention.set", object_type=object_type,
              fields=[f"days:{days}", f"condition:{condition}"])
    return rule


def remove_rule(ctx: RequestContext, object_type: str) -> str:
    ctx.guard.require(OBJECT, MANAGE)
    rule = ctx.session.get(RetentionRule, object_type)
    if rule is None:
        raise NotFound(f"no retention rule for {object_type}", field="objectType")
    ctx.session.delete(rule)
    ctx.session.flush()
    ctx.audit("retention.remove", object_type=object_type)
    return object_type


def list_rules(ctx: RequestContext) -> list[RetentionRule]:
    ctx.guard.require(OBJECT, MANAGE)
    return list(ctx.session.scalars(select(RetentionRule).order_by(RetentionRule.object_type)))


@dataclass(frozen=True)
class RetentionResult:
    object_type: str
    condition: str
    days: int
    #: The ids erased (or, in a dry run, that would be).
    ids: list[str]


def run(ctx: RequestContext, *, dry_run: bool = False,
        now: dt.datetime | None = None) -> list[RetentionResult]:
    """Apply every rule: erase matching records (unless `dry_run`); audited as `retention.run`
    with the ids."""
    ctx.guard.require(OBJECT, MANAGE)
    now = now or utcnow()
    results: list[RetentionResult] = []
    for rule in list_rules(ctx):
        matcher = CONDITIONS.get(rule.object_type, {}).get(rule.condition)
        if matcher is None:  # a rule a later release no longer knows: leave it alone
            continue
        model: Any = MODELS[rule.object_type]
        rows = list(ctx.session.scalars(
            select(model).where(matcher(now - dt.timedelta(days=rule.days)))
            .order_by(model.id).limit(BATCH)))
        if not dry_run:
            _erase(ctx, rule.object_type, rows)
        results.append(RetentionResult(rule.object_type, rule.condition, rule.days,
                                       [r.id for r in rows]))
    ctx.audit("retention.run", object_type=OBJECT,
              object_ids=[i for r in results for i in r.ids],
              fields=[*(f"{r.object_type}:{len(r.ids)}" for r in results),
                      *(["dry_run"] if dry_run else [])])
    return results


def _erase(ctx: RequestContext, object_type: str, rows: list[Any]) -> None:
    """Erase records and what only exists with them: a lead's campaign memberships. Links to
    them from other records (an activity's lead or case) are cleared."""
    ids = [r.id for r in rows]
    if not ids:
        return
    if object_type == "lead":
        privacy.shred(ctx, "campaign_member", list(ctx.session.scalars(
            select(CampaignMember).where(CampaignMember.lead_id.in_(ids)))))
        for activity in list(ctx.session.scalars(
                select(Activity).where(Activity.lead_id.in_(ids)))):
            activity.lead_id = None
    if object_type == "case":
        for activity in list(ctx.session.scalars(
                select(Activity).where(Activity.case_id.in_(ids)))):
            activity.case_id = None
    ctx.session.flush()
    privacy.shred(ctx, object_type, rows)
