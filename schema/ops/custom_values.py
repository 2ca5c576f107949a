"""Custom field values on records: validated by the field's type, split by its classification
(public and internal values stay plain; confidential and restricted ones are sealed with the
record's other sealed values), read through the guard like any other field."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from security.authz import Decision
from security.classification import FieldSpec, custom_field_name
from security.errors import BadUserInput

if TYPE_CHECKING:
    from schema.context import RequestContext

VALUE_TYPES = ("text", "number", "boolean", "date")
MAX_TEXT = 2000


@dataclass(frozen=True)
class CustomValue:
    """One custom field set on a record; `value` None clears it."""

    key: str
    value: Any

    @property
    def policy_name(self) -> str:
        return custom_field_name(self.key)


def coerce(value_type: str, key: str, value: Any) -> Any:
    """The stored (JSON) form of a custom value, or BAD_USER_INPUT naming the field."""
    label = f"customFields.{key}"
    if value is None:
        return None
    if value_type == "text":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise BadUserInput(f"{label} must be text of at most {MAX_TEXT} characters",
                               field=label)
        return value
    if value_type == "number":
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise BadUserInput(f"{label} must be a number", field=label) from None
        if not number.is_finite():
            raise BadUserInput(f"{label} must be a finite number", field=label)
        return str(number)  # a string keeps the decimal exact through JSON
    if value_type == "boolean":
        if not isinstance(value, bool):
            raise BadUserInput(f"{label} must be true or false", field=label)
        return value
    if value_type == "date":
        try:
            return dt.date.fromisoformat(str(value)).isoformat()
        except ValueError:
            raise BadUserInput(f"{label} must be a date as YYYY-MM-DD", field=label) from None
    raise BadUserInput(f"{label} has an unknown type {value_type!r}", field=label)


def definitions(ctx: RequestContext, object_type: str) -> dict[str, FieldSpec]:
    """The custom fields defined on `object_type`, by key."""
    return {f.attr: f for f in ctx.guard.policy.custom_fields(object_type)}


def split_custom(ctx: RequestContext, object_type: str,
                 values: Sequence[CustomValue]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check write grants and types; the plain values and the sealed ones, by key."""
    if not values:
        return {}, {}
    defined = definitions(ctx, object_type)
    unknown = [v.key for v in values if v.key not in defined]
    if unknown:
        raise BadUserInput(f"{object_type} has no custom field {', '.join(unknown)}",
                           field="customFields")
    if len({v.key for v in values}) != len(values):
        raise BadUserInput("a custom field is given twice", field="customFields")
    ctx.guard.check_writable(object_type, [v.policy_name for v in values])
    plain: dict[str, Any] = {}
    sealed: dict[str, Any] = {}
    for item in values:
        spec = defined[item.key]
        (sealed if spec.sealed else plain)[item.key] = coerce(spec.value_type or "text",
                                                               item.key, item.value)
    return plain, sealed


@dataclass(frozen=True)
class CustomReading:
    key: str
    value_type: str
    value: Any


def read_custom(ctx: RequestContext, object_type: str, record: Any,
                keys: Iterable[str] | None = None) -> list[CustomReading]:
    """The custom values of a record the caller may read. Without `keys`, fields the caller is
    refused are left out (and not audited as refusals); keys asked for by name go through the
    guard, which refuses them (FORBIDDEN, audited) when not granted."""
    defined = definitions(ctx, object_type)
    if keys is None:
        wanted = [k for k, spec in defined.items()
                  if ctx.guard.decision(object_type, spec.name) is not Decision.DENY]
    else:
        wanted = list(keys)
        unknown = [k for k in wanted if k not in defined]
        if unknown:
            raise BadUserInput(f"{object_type} has no custom field {', '.join(unknown)}",
                               field="keys")
    readings = []
    for key in wanted:
        spec = defined[key]
        value = ctx.guard.reveal(object_type, record, spec.name)
        readings.append(CustomReading(key, spec.value_type or "text", value))
    return readings
