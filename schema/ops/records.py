"""What every CRM record operation shares: record scopes as SQL, paging, lookups by id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, false, or_, select, true

from schema.context import RequestContext
from schema.ops import validation
from security.authz import READ, WRITE
from security.errors import Forbidden, NotFound

R = TypeVar("R")


@dataclass(frozen=True)
class Page(Generic[R]):
    items: Sequence[R]
    has_next: bool
    has_previous: bool

    @property
    def end_cursor(self) -> str | None:
        return validation.encode_cursor(self.items[-1].id) if self.items else None  # type: ignore[attr-defined]

    @property
    def start_cursor(self) -> str | None:
        return validation.encode_cursor(self.items[0].id) if self.items else None  # type: ignore[attr-defined]


def scope_clause(ctx: RequestContext, model: Any, object_type: str, action: str) -> ColumnElement[bool]:
    """The SQL form of the caller's record rules; refuses (audited) when none is granted."""
    scopes = ctx.guard.scopes(object_type, action)
    if not scopes:
        reason = (f"no record rule grants {action} on {object_type} to "
                  f"{', '.join(ctx.principal.roles) or 'no role'}")
        ctx.guard.refuse(object_type, (), (f"@{action}",), reason)
        raise Forbidden(reason)
    if "@all" in scopes:
        return true()
    conditions = []
    if "@team" in scopes and ctx.principal.team is not None:
        conditions.append(model.team == ctx.principal.team)
    if "@own" in scopes:
        conditions.append(model.owner == ctx.principal.id)
    return or_(*conditions) if conditions else false()


def page(ctx: RequestContext, statement: Select[Any], model: Any, *, first: int | None,
         after: str | None) -> Page[Any]:
    size = validation.page_size(first)
    after_id = validation.decode_cursor(after)
    if after_id is not None:
        statement = statement.where(model.id > after_id)
    rows = list(ctx.session.scalars(statement.order_by(model.id).limit(size + 1)))
    return Page(rows[:size], has_next=len(rows) > size, has_previous=after_id is not None)


def get_visible(ctx: RequestContext, model: Any, object_type: str, record_id: Any,
                action: str = READ) -> Any:
    """The record, if it exists and the caller's rules reach it for `action`.

    Out of read scope is NOT_FOUND (the record does not exist for them); readable but not
    writable is FORBIDDEN. Both are audited as refusals.
    """
    record_id = validation.record_id("id", record_id)
    record = ctx.session.get(model, record_id)
    label = object_type.capitalize()
    if record is None:
        raise NotFound(f"{label} {record_id} not found")
    if not ctx.guard.in_scope(object_type, record, READ):
        ctx.guard.refuse(object_type, (record_id,), ("@read",), "record outside the caller's scope")
        raise NotFound(f"{label} {record_id} not found")
    if action == WRITE and not ctx.guard.in_scope(object_type, record, WRITE):
        reason = f"no record rule lets {', '.join(ctx.principal.roles)} change this {object_type}"
        ctx.guard.refuse(object_type, (record_id,), ("@write",), reason)
        raise Forbidden(reason)
    return record


def visible_query(ctx: RequestContext, model: Any, object_type: str) -> Select[Any]:
    return select(model).where(scope_clause(ctx, model, object_type, READ))


def require_create(ctx: RequestContext, object_type: str) -> None:
    """Creating needs a write rule: the new record is the caller's own, in their team."""
    scopes = ctx.guard.scopes(object_type, WRITE)
    if not scopes or (scopes == {"@team"} and ctx.principal.team is None):
        reason = f"no record rule lets {', '.join(ctx.principal.roles)} create a {object_type}"
        ctx.guard.refuse(object_type, (), ("@write",), reason)
        raise Forbidden(reason)
