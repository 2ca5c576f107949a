"""Accounts: organisations the customer does business with. No sealed fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schema.context import RequestContext
from schema.ops import validation
from schema.ops.records import Page, get_visible, page, require_create, visible_query
from security.authz import WRITE
from security.errors import BadUserInput
from storage.ids import new_id
from storage.models import Account, utcnow

OBJECT = "account"


def _clean(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    checks = {
        "name": lambda v: validation.text("name", v, max_length=200, required=True),
        "industry": lambda v: validation.text("industry", v, max_length=100),
        "website": lambda v: validation.url("website", v),
    }
    if creating and "name" not in data:
        data = {**data, "name": None}
    unknown = set(data) - set(checks)
    if unknown:
        raise BadUserInput(f"unknown account field(s): {', '.join(sorted(unknown))}")
    return {name: checks[name](value) for name, value in data.items()}


def list_accounts(ctx: RequestContext, *, first: int | None = None,
                  after: str | None = None) -> Page[Account]:
    return page(ctx, visible_query(ctx, Account, OBJECT), Account, first=first, after=after)


def get_account(ctx: RequestContext, account_id: str) -> Account:
    return get_visible(ctx, Account, OBJECT, account_id)


def create_account(ctx: RequestContext, data: Mapping[str, Any]) -> Account:
    values = _clean(data, creating=True)
    require_create(ctx, OBJECT)
    ctx.guard.check_writable(OBJECT, values)
    account = Account(id=new_id(), owner=ctx.principal.id, team=ctx.principal.team, **values)
    ctx.session.add(account)
    ctx.session.flush()
    ctx.audit("account.create", object_type=OBJECT, object_ids=[account.id], fields=list(values))
    return account


def update_account(ctx: RequestContext, account_id: str, changes: Mapping[str, Any]) -> Account:
    values = _clean(changes, creating=False)
    account = get_visible(ctx, Account, OBJECT, account_id, WRITE)
    ctx.guard.check_writable(OBJECT, values)
    for name, value in values.items():
        setattr(account, name, value)
    account.updated_at = utcnow()
    ctx.session.flush()
    ctx.audit("account.update", object_type=OBJECT, object_ids=[account.id], fields=list(values))
    return account


def delete_account(ctx: RequestContext, account_id: str) -> str:
    account = get_visible(ctx, Account, OBJECT, account_id, WRITE)
    ctx.session.delete(account)
    ctx.session.flush()
    ctx.audit("account.delete", object_type=OBJECT, object_ids=[account.id])
    return account.id
