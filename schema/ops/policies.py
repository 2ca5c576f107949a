"""Policies live in the database and change only here: admin-only, validated, audited."""

from __future__ import annotations

from sqlalchemy import select

from schema.context import RequestContext
from security.authz import MANAGE, READ, Rule, bump_policy_version, validate_rule
from security.errors import BadUserInput, Conflict, NotFound
from storage.models import PolicyRule

OBJECT = "policy"


def list_rules(ctx: RequestContext) -> list[Rule]:
    ctx.guard.require(OBJECT, READ)
    return [Rule(*row) for row in ctx.session.execute(
        select(PolicyRule.role, PolicyRule.object_type, PolicyRule.field, PolicyRule.action)
        .order_by(PolicyRule.role, PolicyRule.object_type, PolicyRule.field, PolicyRule.action))]


def _find(ctx: RequestContext, rule: Rule) -> PolicyRule | None:
    return ctx.session.scalar(select(PolicyRule).where(
        PolicyRule.role == rule.role, PolicyRule.object_type == rule.object_type,
        PolicyRule.field == rule.field, PolicyRule.action == rule.action))


def grant(ctx: RequestContext, rule: Rule) -> int:
    ctx.guard.require(OBJECT, MANAGE)
    objects = ctx.guard.policy.objects
    problem = validate_rule(rule, objects[rule.object_type].fields if rule.object_type in objects
                            else ())
    if problem:
        raise BadUserInput(problem)
    if _find(ctx, rule) is not None:
        raise Conflict("that rule is already granted")
    ctx.session.add(PolicyRule(role=rule.role, object_type=rule.object_type, field=rule.field,
                               action=rule.action))
    version = bump_policy_version(ctx.session)
    ctx.audit("policy.grant", object_type=OBJECT, object_ids=[f"v{version}"],
              fields=["|".join(rule.as_tuple())])
    return version


def revoke(ctx: RequestContext, rule: Rule) -> int:
    ctx.guard.require(OBJECT, MANAGE)
    found = _find(ctx, rule)
    if found is None:
        raise NotFound("no such rule")
    ctx.session.delete(found)
    version = bump_policy_version(ctx.session)
    ctx.audit("policy.revoke", object_type=OBJECT, object_ids=[f"v{version}"],
              fields=["|".join(rule.as_tuple())])
    return version
