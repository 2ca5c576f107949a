"""Building blocks for guarded GraphQL types: every field of a record asks the guard, which
decides, audits and opens; references load through the request's loaders (no N+1).

    @strawberry.type
    class Lead:
        row: strawberry.Private[LeadRow]
        id: strawberry.ID = record_id()
        email: str | None = guarded("lead", "email")
        converted_contact: Contact | None = reference("lead", "converted_contact", "contact",
                                                      lambda row: Contact(row=row))
        custom_fields: list[CustomFieldValue] = custom_fields("lead")

The GraphQL type of each field comes from its annotation on the class.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import Callable
from enum import Enum
from typing import Any, Generic, TypeVar

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.graphql.types import PageInfo
from schema.names import snake
from schema.ops import search
from schema.ops.custom_values import CustomValue, read_custom
from schema.ops.records import Page
from security.errors import BadUserInput

Ctx = Info[RequestContext, Any]


def record_id() -> Any:
    def resolve(root: Any) -> Any:
        return strawberry.ID(root.row.id)
    return strawberry.field(resolver=resolve)


def guarded(object_type: str, field_name: str, *, description: str | None = None) -> Any:
    """A field read through the guard: plain, masked, or null with a FORBIDDEN error."""
    def resolve(root: Any, info: Ctx) -> Any:
        return info.context.guard.reveal(object_type, root.row, field_name)
    return strawberry.field(resolver=resolve, description=description)


def reference(object_type: str, field_name: str, target_type: str,
              wrap: Callable[[Any], Any]) -> Any:
    """A reference field: the guard decides whether the caller may see the link; the target
    record then loads (batched) only if it is in the caller's scope."""
    def resolve(root: Any, info: Ctx) -> Any:
        target_id = info.context.guard.reveal(object_type, root.row, field_name)
        if target_id is None:
            return None
        row = info.context.loader(target_type).load(target_id)
        return wrap(row) if row is not None else None
    return strawberry.field(resolver=resolve)


@strawberry.type(description="A custom field's value; the member matching `type` is set.")
class CustomFieldValue:
    key: str
    type: str
    text: str | None = None
    number: decimal.Decimal | None = None
    boolean: bool | None = None
    date: dt.date | None = None


def _typed(key: str, value_type: str, value: Any) -> CustomFieldValue:
    result = CustomFieldValue(key=key, type=value_type)
    if value is None:
        return result
    if value_type == "number":
        result.number = decimal.Decimal(str(value))
    elif value_type == "boolean":
        result.boolean = bool(value)
    elif value_type == "date":
        # A masked date is not a date: it shows as text.
        try:
            result.date = dt.date.fromisoformat(str(value))
        except ValueError:
            result.text = str(value)
    else:
        result.text = str(value)
    return result


def custom_fields(object_type: str) -> Any:
    """`customFields(keys: [String!])`: the record's custom values the caller may read. Keys
    asked for by name that the caller may not read are refused (FORBIDDEN)."""
    def resolve(root: Any, info: Ctx, keys: list[str] | None = None) -> list[CustomFieldValue]:
        return [_typed(r.key, r.value_type, r.value)
                for r in read_custom(info.context, object_type, root.row, keys)]
    return strawberry.field(resolver=resolve)


@strawberry.input(description="Set (or, with every value member null, clear) a custom field.")
class CustomFieldInput:
    key: str
    text: str | None = None
    number: decimal.Decimal | None = None
    boolean: bool | None = None
    date: dt.date | None = None

    def to_value(self) -> CustomValue:
        given = [v for v in (self.text, self.number, self.boolean, self.date) if v is not None]
        if len(given) > 1:
            raise BadUserInput(f"customFields.{self.key} takes one value", field="customFields")
        value = given[0] if given else None
        if isinstance(value, dt.date):
            value = value.isoformat()
        return CustomValue(self.key, value)


def custom_inputs(items: list[CustomFieldInput] | None) -> list[CustomValue]:
    return [item.to_value() for item in items or []]


def split_input(item: Any) -> tuple[dict[str, Any], list[CustomValue]]:
    """An input's values the caller set (UNSET ones left out), by attribute, and its custom
    field values."""
    values = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)
              if f.name != "custom_fields" and getattr(item, f.name) is not strawberry.UNSET}
    given = getattr(item, "custom_fields", None)
    return values, custom_inputs(None if given is strawberry.UNSET else given)


# -- lists: filters, sorting, connections ------------------------------------------------------

@strawberry.input(description="A condition on one plaintext field (GraphQL name). Values are "
                  "text: numbers, dates (YYYY-MM-DD), times (ISO 8601), true/false. An "
                  "encrypted field with a blind index (email, phone) takes eq/in only.")
class RecordFilter:
    field: str
    eq: str | None = None
    in_: list[str] | None = strawberry.field(default=None, name="in")
    starts_with: str | None = None
    gte: str | None = None
    lte: str | None = None


@strawberry.enum
class SortDirection(Enum):
    ASC = "asc"
    DESC = "desc"


@strawberry.input(description="Sort by a plaintext field; ties break by id. NULLs come last.")
class RecordSort:
    field: str
    direction: SortDirection = SortDirection.ASC


def to_filters(items: list[RecordFilter] | None) -> list[search.FieldFilter]:
    return [search.FieldFilter(field=snake(f.field), eq=f.eq, in_=f.in_,
                               starts_with=f.starts_with, gte=f.gte, lte=f.lte)
            for f in items or []]


def to_sort(items: list[RecordSort] | None) -> list[search.SortKey]:
    return [search.SortKey(field=snake(s.field),
                           descending=s.direction is SortDirection.DESC) for s in items or []]


T = TypeVar("T")


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo


def to_connection(page: Page[Any], wrap: Callable[[Any], T]) -> Connection[T]:
    return Connection(
        edges=[Edge(cursor=page.cursor_of(row), node=wrap(row)) for row in page.items],
        page_info=PageInfo(has_next_page=page.has_next, has_previous_page=page.has_previous,
                           start_cursor=page.start_cursor, end_cursor=page.end_cursor))
