"""Accounts: organisations the customer does business with. No sealed fields of their own;
confidential or restricted custom values are sealed under the account's key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schema.context import RequestContext
from schema.ops import search, validation
from schema.ops.contacts import merge_plain
from schema.ops.custom_values import CustomValue, split_custom
from schema.ops.records import Page, authorise_write, get_visible, list_records
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


def list_accounts(ctx: RequestContext, *, first: int | None = None, after: str | None = None,
                  filters: Sequence[search.FieldFilter] = (),
                  sort: Sequence[search.SortKey] = ()) -> Page[Account]:
    result: Page[Account] = list_records(ctx, OBJECT, first=first, after=after,
                                         filters=filters, sort=sort)
    return result


def get_account(ctx: RequestContext, account_id: str) -> Account:
    return get_visible(ctx, Account, OBJECT, account_id)


def create_account(ctx: RequestContext, data: Mapping[str, Any], *,
                   custom: Sequence[CustomValue] = ()) -> Account:
    authorise_write(ctx, OBJECT, data)  # create rights and the fields given, before values
    values = _clean(data, creating=True)
    ctx.guard.check_writable(OBJECT, values)
    account = Account(id=new_id(), owner=ctx.principal.id, team=ctx.principal.team, **values)
    plain_custom, sealed_custom = split_custom(ctx, OBJECT, custom)
    account.custom_plain = plain_custom or None
    if sealed_custom:
        ctx.guard.seal_fields(OBJECT, account, {}, sealed_custom)
    ctx.session.add(account)
    ctx.session.flush()
    ctx.audit("account.create", object_type=OBJECT, object_ids=[account.id],
              fields=list(values) + [c.policy_name for c in custom])
    ctx.emit("created", OBJECT, account.id)
    return account


def update_account(ctx: RequestContext, account_id: str, changes: Mapping[str, Any], *,
                   custom: Sequence[CustomValue] = ()) -> Account:
    authorise_write(ctx, OBJECT, changes, record_id=account_id)
    values = _clean(changes, creating=False)
    account = get_visible(ctx, Account, OBJECT, account_id, WRITE)
    ctx.guard.check_writable(OBJECT, values)
    for name, value in values.items():
        setattr(account, name, value)
    plain_custom, sealed_custom = split_custom(ctx, OBJECT, custom)
    if plain_custom:
        account.custom_plain = merge_plain(account.custom_plain, plain_custom)
    if sealed_custom:
        ctx.guard.preload([account])
        ctx.guard.seal_fields(OBJECT, account, {}, sealed_custom)
    account.updated_at = utcnow()
    ctx.session.flush()
    ctx.audit("account.update", object_type=OBJECT, object_ids=[account.id],
              fields=list(values) + [c.policy_name for c in custom])
    ctx.emit("updated", OBJECT, account.id)
    return account


def delete_account(ctx: RequestContext, account_id: str) -> str:
    account = get_visible(ctx, Account, OBJECT, account_id, WRITE)
    ctx.session.delete(account)
    shredded = account.key_version is not None
    if shredded:  # sealed custom values: no copy of them opens again
        ctx.guard.keyring.destroy_subject_keys(ctx.session, account.id)
    ctx.session.flush()
    ctx.audit("account.delete", object_type=OBJECT, object_ids=[account.id],
              fields=["subject_keys:destroyed"] if shredded else [])
    ctx.emit("deleted", OBJECT, account.id)
    return account.id
