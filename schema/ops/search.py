"""Filters and sorting on a record list, with stable keyset cursors.

Filters and sort keys name plaintext fields (sealed fields hold ciphertext: only their blind
index answers `eq`/`in`). A caller may filter or sort only on fields they may read in full (a
filter on a refused or masked field would answer questions about its value); such a request is
refused and audited. Sorting always ends with the id, so every order is total and a cursor names
one exact position; NULLs sort last in both directions.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, and_, case, false, or_, true
from sqlalchemy.types import TypeDecorator

from schema.ops import validation
from security.classification import FieldSpec
from security.errors import BadUserInput

if TYPE_CHECKING:
    from schema.context import RequestContext

MAX_IN = 100
MAX_SORT_KEYS = 3
#: Conditions per search: each is a clause, and SQLite refuses an expression tree over 1000 deep.
MAX_FILTERS = 20


@dataclass(frozen=True)
class FieldFilter:
    """One condition; `field` is the policy (snake_case) name. Values arrive as text."""

    field: str
    eq: str | None = None
    in_: Sequence[str] | None = None
    starts_with: str | None = None
    gte: str | None = None
    lte: str | None = None


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool = False


def _spec(ctx: RequestContext, object_type: str, name: str, purpose: str) -> FieldSpec:
    spec = ctx.guard.policy.spec(object_type)
    try:
        fspec = spec.field(name)
    except KeyError:
        raise BadUserInput(f"{object_type} has no field {name!r} to {purpose}",
                           field=f"{purpose}.field") from None
    if fspec.custom:
        raise BadUserInput(f"custom field {name!r} cannot be used to {purpose}",
                           field=f"{purpose}.field")
    return fspec


def _python_type(column: Any) -> type:
    column_type = column.type
    if isinstance(column_type, TypeDecorator):  # e.g. UTCDateTime: the type it stores as
        column_type = column_type.impl_instance
    try:
        return column_type.python_type  # type: ignore[no-any-return]
    except NotImplementedError:  # pragma: no cover - every filterable column has one
        return str


def coerce(column: Any, name: str, value: str) -> Any:
    """Text from the caller, as the column's type; BAD_USER_INPUT naming the field."""
    kind = _python_type(column)
    try:
        if kind is bool:
            if value not in ("true", "false"):
                raise ValueError
            return value == "true"
        if kind is int:
            return int(value)
        if kind is decimal.Decimal:
            number = decimal.Decimal(value)
            if not number.is_finite():
                raise ValueError
            return number
        if kind is dt.datetime:
            moment = dt.datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        if kind is dt.date:
            return dt.date.fromisoformat(value)
    except (ValueError, decimal.InvalidOperation):
        raise BadUserInput(f"{name}: {value!r} is not a valid {kind.__name__}",
                           field=f"filter.{name}") from None
    if len(value) > 300:
        raise BadUserInput(f"{name}: value longer than 300 characters", field=f"filter.{name}")
    return value


def filter_clauses(ctx: RequestContext, object_type: str, model: Any,
                   filters: Sequence[FieldFilter]) -> list[ColumnElement[bool]]:
    from schema.ops.records import check_searchable

    if len(filters) > MAX_FILTERS:
        raise BadUserInput(f"filters takes at most {MAX_FILTERS} conditions", field="filters")
    fspecs = [_spec(ctx, object_type, f.field, "filter") for f in filters]
    check_searchable(ctx, object_type, [f.name for f in fspecs])
    clauses: list[ColumnElement[bool]] = []
    for item, fspec in zip(filters, fspecs, strict=True):
        given = [op for op in ("eq", "in_", "starts_with", "gte", "lte")
                 if getattr(item, op) is not None]
        if not given:
            raise BadUserInput(f"filter on {item.field} has no condition", field="filter")
        if fspec.sealed:
            clauses.append(_sealed_clause(ctx, model, fspec, item, given))
            continue
        column = getattr(model, fspec.attr)
        if item.eq is not None:
            clauses.append(column == coerce(column, fspec.name, item.eq))
        if item.in_ is not None:
            if not 1 <= len(item.in_) <= MAX_IN:
                raise BadUserInput(f"in takes 1 to {MAX_IN} values", field=f"filter.{item.field}")
            clauses.append(column.in_([coerce(column, fspec.name, v) for v in item.in_]))
        if item.starts_with is not None:
            if _python_type(column) is not str:
                raise BadUserInput(f"startsWith applies to text fields, not {item.field}",
                                   field=f"filter.{item.field}")
            prefix = coerce(column, fspec.name, item.starts_with)
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(column.like(escaped + "%", escape="\\"))
        if item.gte is not None:
            clauses.append(column >= coerce(column, fspec.name, item.gte))
        if item.lte is not None:
            clauses.append(column <= coerce(column, fspec.name, item.lte))
    return clauses


def _sealed_clause(ctx: RequestContext, model: Any, fspec: FieldSpec, item: FieldFilter,
                   given: list[str]) -> ColumnElement[bool]:
    """Sealed fields answer exact matches through their blind index, nothing else."""
    if fspec.index_kind is None or set(given) - {"eq", "in_"}:
        raise BadUserInput(f"{item.field} is encrypted: only eq/in through its blind index "
                           "(where it has one) can search it", field=f"filter.{item.field}")
    column = getattr(model, f"{fspec.name}_bidx")
    check = validation.email if fspec.index_kind == "email" else validation.phone
    values = ([item.eq] if item.eq is not None else []) + list(item.in_ or [])
    if len(values) > MAX_IN:
        raise BadUserInput(f"in takes 1 to {MAX_IN} values", field=f"filter.{item.field}")
    indexes = [ctx.guard.search_index(fspec.index_kind, check(f"filter.{item.field}", v) or "")
               for v in values]
    return column.in_(indexes)


# -- sorting and cursors ------------------------------------------------------------------------

def _to_text(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def encode_sorted_cursor(values: Sequence[Any], record_id: str) -> str:
    payload = json.dumps({"k": [_to_text(v) for v in values], "id": record_id},
                         separators=(",", ":"))
    return base64.urlsafe_b64encode(b"k:" + payload.encode()).decode()


def decode_sorted_cursor(cursor: str, width: int) -> tuple[list[Any], str]:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode())
        if not raw.startswith(b"k:") or len(raw) > 2000:
            raise ValueError
        payload = json.loads(raw[2:])
        values, record_id = payload["k"], payload["id"]
        if not isinstance(values, list) or len(values) != width:
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadUserInput("after is not a cursor this API gave out for this sort",
                           field="after") from None
    return values, validation.record_id("after", record_id)


@dataclass(frozen=True)
class Ordering:
    """A resolved sort: the columns, their directions, and how to name a row's position."""

    columns: tuple[Any, ...]
    descending: tuple[bool, ...]
    attributes: tuple[str, ...]

    def order_by(self, model: Any) -> list[Any]:
        terms: list[Any] = []
        for column, desc in zip(self.columns, self.descending, strict=True):
            terms.append(case((column.is_(None), 1), else_=0))
            terms.append(column.desc() if desc else column.asc())
        terms.append(model.id.asc())
        return terms

    def cursor_of(self) -> Callable[[Any], str]:
        def cursor(row: Any) -> str:
            return encode_sorted_cursor([getattr(row, a) for a in self.attributes], row.id)
        return cursor

    def after(self, model: Any, cursor: str) -> ColumnElement[bool]:
        """Rows strictly after the cursor's position in this order."""
        texts, last_id = decode_sorted_cursor(cursor, len(self.columns))
        values = [None if t is None else coerce(c, a, str(t))
                  for c, a, t in zip(self.columns, self.attributes, texts, strict=True)]
        alternatives: list[ColumnElement[bool]] = []
        equal_so_far: list[ColumnElement[bool]] = []
        for column, desc, value in zip(self.columns, self.descending, values, strict=True):
            if value is None:  # NULLs come last: nothing sorts after them on this key
                greater: ColumnElement[bool] = false()
                equal: ColumnElement[bool] = column.is_(None)
            else:
                beyond = column < value if desc else column > value
                greater = or_(and_(column.is_not(None), beyond), column.is_(None))
                equal = column == value
            alternatives.append(and_(true(), *equal_so_far, greater))
            equal_so_far.append(equal)
        alternatives.append(and_(true(), *equal_so_far, model.id > last_id))
        return or_(*alternatives)


def resolve_sort(ctx: RequestContext, object_type: str, model: Any,
                 sort: Sequence[SortKey]) -> Ordering | None:
    if not sort:
        return None
    if len(sort) > MAX_SORT_KEYS:
        raise BadUserInput(f"sort takes at most {MAX_SORT_KEYS} keys", field="sort")
    from schema.ops.records import check_searchable

    fspecs = [_spec(ctx, object_type, key.field, "sort") for key in sort]
    sealed = [f.name for f in fspecs if f.sealed]
    if sealed:
        raise BadUserInput(f"{', '.join(sealed)} is encrypted and cannot be sorted on",
                           field="sort")
    check_searchable(ctx, object_type, [f.name for f in fspecs])
    return Ordering(tuple(getattr(model, f.attr) for f in fspecs),
                    tuple(key.descending for key in sort), tuple(f.attr for f in fspecs))


def apply(statement: Select[Any], clauses: Sequence[ColumnElement[bool]]) -> Select[Any]:
    for clause in clauses:
        statement = statement.where(clause)
    return statement
