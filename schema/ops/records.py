"""What every CRM record operation shares: record scopes as SQL, paging, lookups by id."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, false, or_, select, true
from sqlalchemy.orm import with_expression

from schema.context import RequestContext
from schema.ops import search, validation
from schema.ops.custom_values import CustomValue, split_custom
from security.authz import READ, WRITE, Decision
from security.errors import BadUserInput, Forbidden, NotFound
from storage.ids import new_id
from storage.models import MODELS, current_subject_key, utcnow

R = TypeVar("R")


def _id_cursor(row: Any) -> str:
    return validation.encode_cursor(row.id)


@dataclass(frozen=True)
class Page(Generic[R]):
    items: Sequence[R]
    has_next: bool
    has_previous: bool
    #: How to name a row's position (the id, or the sort values and the id).
    cursor_of: Callable[[Any], str] = _id_cursor

    @property
    def end_cursor(self) -> str | None:
        return self.cursor_of(self.items[-1]) if self.items else None

    @property
    def start_cursor(self) -> str | None:
        return self.cursor_of(self.items[0]) if self.items else None


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


def authorise_write(ctx: RequestContext, object_type: str, data: Mapping[str, Any], *,
                    record_id: str | None = None) -> None:
    """Refuse (and audit) a create, or a change of record `record_id`, that the caller may not
    make at all, before any value is looked at: a forbidden attempt must be refused and audited
    as such even when one of its values is also invalid (it used to be BAD_USER_INPUT, with no
    audit entry, and it told the caller the rules of a field it may not write). A create names
    the fields given a value; a change, every field given. Attributes the object does not
    have are left to the caller's own cleaning to refuse."""
    if record_id is None:
        require_create(ctx, object_type)
        given = [name for name, value in data.items() if value is not None]
    else:
        get_visible(ctx, model_of(object_type), object_type, record_id, WRITE)
        given = list(data)
    known = {f.attr for f in ctx.guard.policy.spec(object_type).fields}
    ctx.guard.check_writable(object_type,
                             policy_names(ctx, object_type, [a for a in given if a in known]))


# -- the generic record life cycle (every CRM object goes through these) ---------------------

Check = Callable[[Any], Any]


def model_of(object_type: str) -> Any:
    """The table class of a guarded object type."""
    return MODELS[object_type]


def clean(object_type: str, checks: Mapping[str, Check], data: Mapping[str, Any], *,
          required: Iterable[str] = (), creating: bool) -> dict[str, Any]:
    """Validate `data` (keyed by record attribute) with one check per attribute; on create,
    required attributes that were left out are checked as None (and so refused)."""
    unknown = set(data) - set(checks)
    if unknown:
        raise BadUserInput(f"unknown {object_type} field(s): {', '.join(sorted(unknown))}")
    if creating:
        data = {**{name: None for name in required}, **data}
    return {name: checks[name](value) for name, value in data.items()}


def policy_names(ctx: RequestContext, object_type: str, attributes: Iterable[str]) -> list[str]:
    """The policy field names of record attributes (`account_id` is the field `account`)."""
    by_attr = {f.attr: f.name for f in ctx.guard.policy.spec(object_type).fields}
    return [by_attr.get(a, a) for a in attributes]


def sealed_attributes(ctx: RequestContext, object_type: str) -> set[str]:
    return {f.name for f in ctx.guard.policy.spec(object_type).sealed_fields}


def check_reference(ctx: RequestContext, object_type: str, record_id: str | None,
                    field: str) -> Any:
    """The referenced record, if the caller can see it; otherwise BAD_USER_INPUT naming the
    field (a record outside their scope does not exist for them)."""
    if record_id is None:
        return None
    record_id = validation.record_id(field, record_id)
    record = ctx.session.get(model_of(object_type), record_id)
    if record is None or not ctx.guard.in_scope(object_type, record, READ):
        raise BadUserInput(f"{field} {record_id} is not a {object_type.replace('_', ' ')} you "
                           "can see", field=field)
    return record


def check_searchable(ctx: RequestContext, object_type: str, field_names: Iterable[str]) -> None:
    """A filter or sort on a field the caller may not read would answer questions about its
    value: refused (audited)."""
    denied = [name for name in field_names
              if ctx.guard.decision(object_type, name, READ) is not Decision.ALLOW]
    if denied:
        reason = (f"no policy grants read on {object_type}.{', '.join(denied)} to "
                  f"{', '.join(ctx.principal.roles) or 'no role'}, so it cannot be searched")
        ctx.guard.refuse(object_type, (), denied, reason)
        raise Forbidden(reason, fields=denied)


def create_record(ctx: RequestContext, object_type: str, values: Mapping[str, Any], *,
                  custom: Sequence[CustomValue] = (), owner: str | None = None,
                  team: str | None = None, audit_action: str | None = None) -> Any:
    """Create a record owned by the caller (or `owner`/`team` when given, e.g. a campaign
    member inherits its campaign's), sealing its sealed fields under a key of its own.
    `values` are cleaned, keyed by attribute. Checks create rights and write grants first."""
    require_create(ctx, object_type)
    sealed = sealed_attributes(ctx, object_type)
    written = [name for name, value in values.items() if value is not None]
    ctx.guard.check_writable(object_type, policy_names(ctx, object_type, written))
    model = model_of(object_type)
    record = model(id=new_id(), owner=owner or ctx.principal.id,
                   team=team if owner is not None else ctx.principal.team,
                   key_version=None, **{k: v for k, v in values.items() if k not in sealed})
    sealed_values = {k: v for k, v in values.items() if k in sealed}
    plain_custom, sealed_custom = split_custom(ctx, object_type, custom)
    record.custom_plain = plain_custom or None
    if any(v is not None for v in sealed_values.values()) or sealed_custom:
        ctx.guard.seal_fields(object_type, record, sealed_values, sealed_custom)
    ctx.session.add(record)
    ctx.session.flush()
    ctx.audit(audit_action or f"{object_type}.create", object_type=object_type,
              object_ids=[record.id],
              fields=policy_names(ctx, object_type, written) + [c.policy_name for c in custom])
    ctx.emit("created", object_type, record.id)
    return record


def update_record(ctx: RequestContext, object_type: str, record_id: str,
                  values: Mapping[str, Any], *, custom: Sequence[CustomValue] = (),
                  audit_action: str | None = None, record: Any = None) -> Any:
    """Change a record the caller may write; `values` are cleaned, keyed by attribute."""
    if record is None:
        record = get_visible(ctx, model_of(object_type), object_type, record_id, WRITE)
    ctx.guard.check_writable(object_type, policy_names(ctx, object_type, values))
    sealed = sealed_attributes(ctx, object_type)
    for name, value in values.items():
        if name not in sealed:
            setattr(record, name, value)
    plain_custom, sealed_custom = split_custom(ctx, object_type, custom)
    if plain_custom:
        merged = dict(record.custom_plain or {})
        for key, value in plain_custom.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        record.custom_plain = merged or None
    sealed_values = {k: v for k, v in values.items() if k in sealed}
    if sealed_values or sealed_custom:
        ctx.guard.preload([record])
        ctx.guard.seal_fields(object_type, record, sealed_values, sealed_custom)
    record.updated_at = utcnow()
    ctx.session.flush()
    ctx.audit(audit_action or f"{object_type}.update", object_type=object_type,
              object_ids=[record.id],
              fields=policy_names(ctx, object_type, values) + [c.policy_name for c in custom])
    ctx.emit("updated", object_type, record.id)
    return record


def delete_record(ctx: RequestContext, object_type: str, record_id: str, *,
                  audit_action: str | None = None) -> str:
    """Delete a record the caller may write and destroy its subject keys, so that no copy of
    its sealed values (in a backup, say) opens again."""
    record = get_visible(ctx, model_of(object_type), object_type, record_id, WRITE)
    ctx.session.delete(record)
    shredded = record.key_version is not None
    if shredded:
        ctx.guard.keyring.destroy_subject_keys(ctx.session, record.id)
    ctx.session.flush()
    ctx.audit(audit_action or f"{object_type}.delete", object_type=object_type,
              object_ids=[record.id], fields=["subject_keys:destroyed"] if shredded else [])
    ctx.emit("deleted", object_type, record.id)
    return str(record.id)


def list_records(ctx: RequestContext, object_type: str, *, first: int | None,
                 after: str | None, where: Iterable[ColumnElement[bool]] = (),
                 filters: Sequence[search.FieldFilter] = (),
                 sort: Sequence[search.SortKey] = ()) -> Page[Any]:
    """A page of the records of `object_type` the caller may see, filtered and sorted (by id
    when no sort is given), with their subject keys loaded in the same query."""
    model = model_of(object_type)
    statement = visible_query(ctx, model, object_type).options(
        with_expression(model.current_wrapped_key, current_subject_key(model)))
    statement = search.apply(statement, list(where))
    statement = search.apply(statement, search.filter_clauses(ctx, object_type, model, filters))
    ordering = search.resolve_sort(ctx, object_type, model, sort)
    if ordering is None:
        result = page(ctx, statement, model, first=first, after=after)
    else:
        size = validation.page_size(first)
        if after is not None:
            statement = statement.where(ordering.after(model, after))
        rows = list(ctx.session.scalars(
            statement.order_by(*ordering.order_by(model)).limit(size + 1)))
        result = Page(rows[:size], has_next=len(rows) > size, has_previous=after is not None,
                      cursor_of=ordering.cursor_of())
    ctx.guard.preload(result.items)
    return result
