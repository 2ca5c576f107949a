"""Contacts: people. Their personal fields are sealed under a key of their own."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, select

from schema.context import RequestContext
from schema.ops import search, validation
from schema.ops.custom_values import CustomValue, split_custom
from schema.ops.records import Page, authorise_write, get_visible, list_records
from security.authz import READ, WRITE, Decision
from security.classification import CONTACT
from security.errors import BadUserInput, Forbidden
from storage.ids import new_id
from storage.models import Account, Contact, Erasure, utcnow

OBJECT = "contact"

_CHECKS: dict[str, Callable[[Any], Any]] = {
    "first_name": lambda v: validation.text("firstName", v, max_length=100),
    "last_name": lambda v: validation.text("lastName", v, max_length=100, required=True),
    "title": lambda v: validation.text("title", v, max_length=200),
    "account_id": lambda v: None if v is None else validation.record_id("accountId", v),
    "email": lambda v: validation.email("email", v),
    "phone": lambda v: validation.phone("phone", v),
    "address": lambda v: validation.text("address", v, max_length=500),
    "birth_date": lambda v: validation.past_date("birthDate", v),
    "national_id": lambda v: validation.national_id("nationalId", v),
    "notes": lambda v: validation.text("notes", v, max_length=10_000),
}
_SEALED = {f.name for f in CONTACT.sealed_fields}


def _policy_field(name: str) -> str:
    return "account" if name == "account_id" else name


def _clean(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    unknown = set(data) - set(_CHECKS)
    if unknown:
        raise BadUserInput(f"unknown contact field(s): {', '.join(sorted(unknown))}")
    if creating and "last_name" not in data:
        data = {**data, "last_name": None}
    return {name: _CHECKS[name](value) for name, value in data.items()}


def _check_account(ctx: RequestContext, account_id: str | None) -> None:
    if account_id is None:
        return
    account = ctx.session.get(Account, account_id)
    if account is None or not ctx.guard.in_scope("account", account, READ):
        raise BadUserInput(f"accountId {account_id} is not an account you can see",
                           field="accountId")


def _check_searchable(ctx: RequestContext, field_names: list[str]) -> None:
    """A filter on a field the caller may not read would answer questions about its value."""
    denied = [name for name in field_names
              if ctx.guard.decision(OBJECT, name, READ) is Decision.DENY]
    if denied:
        reason = (f"no policy grants read on {OBJECT}.{', '.join(denied)} to "
                  f"{', '.join(ctx.principal.roles) or 'no role'}, so it cannot be searched")
        ctx.guard.refuse(OBJECT, (), denied, reason)
        raise Forbidden(reason, fields=denied)


def list_contacts(ctx: RequestContext, *, first: int | None = None, after: str | None = None,
                  account_id: str | None = None, owner: str | None = None,
                  email: str | None = None, phone: str | None = None,
                  filters: Sequence[search.FieldFilter] = (),
                  sort: Sequence[search.SortKey] = ()) -> Page[Contact]:
    _check_searchable(ctx, [name for name, value in (("account", account_id), ("owner", owner),
                                                     ("email", email), ("phone", phone))
                            if value is not None])
    where: list[ColumnElement[bool]] = []
    if account_id is not None:
        where.append(Contact.account_id == validation.record_id("filter.accountId", account_id))
    if owner is not None:
        where.append(Contact.owner == owner)
    if email is not None:
        where.append(Contact.email_bidx == ctx.guard.search_index(
            "email", validation.email("filter.email", email) or ""))
    if phone is not None:
        where.append(Contact.phone_bidx == ctx.guard.search_index(
            "phone", validation.phone("filter.phone", phone) or ""))
    result: Page[Contact] = list_records(ctx, OBJECT, first=first, after=after, where=where,
                                         filters=filters, sort=sort)
    ctx.accounts.prime(c.account_id for c in result.items)
    return result


def get_contact(ctx: RequestContext, contact_id: str) -> Contact:
    return get_visible(ctx, Contact, OBJECT, contact_id)


def create_contact(ctx: RequestContext, data: Mapping[str, Any], *,
                   custom: Sequence[CustomValue] = ()) -> Contact:
    authorise_write(ctx, OBJECT, data)  # create rights and the fields given, before values
    values = _clean(data, creating=True)
    ctx.guard.check_writable(OBJECT, [_policy_field(n) for n, v in values.items()
                                      if v is not None or n == "last_name"])
    _check_account(ctx, values.get("account_id"))
    contact = Contact(id=new_id(), owner=ctx.principal.id, team=ctx.principal.team,
                      key_version=None,
                      **{k: v for k, v in values.items() if k not in _SEALED})
    plain_custom, sealed_custom = split_custom(ctx, OBJECT, custom)
    contact.custom_plain = plain_custom or None
    ctx.guard.seal_fields(OBJECT, contact, {k: v for k, v in values.items() if k in _SEALED},
                          sealed_custom)
    ctx.session.add(contact)
    ctx.session.flush()
    ctx.audit("contact.create", object_type=OBJECT, object_ids=[contact.id],
              fields=[_policy_field(n) for n, v in values.items() if v is not None]
              + [c.policy_name for c in custom])
    ctx.emit("created", OBJECT, contact.id)
    return contact


def update_contact(ctx: RequestContext, contact_id: str, changes: Mapping[str, Any], *,
                   custom: Sequence[CustomValue] = ()) -> Contact:
    authorise_write(ctx, OBJECT, changes, record_id=contact_id)
    values = _clean(changes, creating=False)
    contact = get_visible(ctx, Contact, OBJECT, contact_id, WRITE)
    ctx.guard.check_writable(OBJECT, [_policy_field(n) for n in values])
    if "account_id" in values:
        _check_account(ctx, values["account_id"])
    for name, value in values.items():
        if name not in _SEALED:
            setattr(contact, name, value)
    plain_custom, sealed_custom = split_custom(ctx, OBJECT, custom)
    if plain_custom:
        contact.custom_plain = merge_plain(contact.custom_plain, plain_custom)
    sealed = {k: v for k, v in values.items() if k in _SEALED}
    if sealed or sealed_custom:
        ctx.guard.preload([contact])
        ctx.guard.seal_fields(OBJECT, contact, sealed, sealed_custom)
    contact.updated_at = utcnow()
    ctx.session.flush()
    ctx.audit("contact.update", object_type=OBJECT, object_ids=[contact.id],
              fields=[_policy_field(n) for n in values] + [c.policy_name for c in custom])
    ctx.emit("updated", OBJECT, contact.id)
    return contact


def merge_plain(current: Mapping[str, Any] | None,
                changes: Mapping[str, Any]) -> dict[str, Any] | None:
    """A record's plain custom values after `changes` (a None value clears its key)."""
    merged = dict(current or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged or None


def delete_contact(ctx: RequestContext, contact_id: str) -> str:
    """Erase the contact: delete it, destroy its subject keys (so no copy of its fields opens
    again) and record the erasure, so that restoring an older backup erases them again."""
    contact = get_visible(ctx, Contact, OBJECT, contact_id, WRITE)
    ctx.session.delete(contact)
    ctx.guard.keyring.destroy_subject_keys(ctx.session, contact.id)
    ctx.session.merge(Erasure(subject_id=contact.id, erased_at=utcnow(), by=ctx.principal.actor))
    ctx.session.flush()
    ctx.audit("contact.delete", object_type=OBJECT, object_ids=[contact.id],
              fields=["subject_keys:destroyed"])
    ctx.emit("deleted", OBJECT, contact.id)
    return contact.id


def contacts_needing_reencryption(ctx: RequestContext, version: int, limit: int) -> list[Contact]:
    return list(ctx.session.scalars(
        select(Contact).where(Contact.key_version != version).order_by(Contact.id).limit(limit)))
