"""GraphQL for custom field definitions (see schema/ops/custom_fields.py). The values themselves
are `customFields` on each record type (schema/graphql/fields.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.ops import custom_fields as ops

Ctx = Info[RequestContext, Any]


@strawberry.type
class CustomFieldDefinition:
    object_type: str
    key: str
    type: str
    classification: str
    label: str | None
    created_at: dt.datetime


@strawberry.type
class RemovedCustomField:
    object_type: str
    key: str
    values_removed: int


def _definition(row: Any) -> CustomFieldDefinition:
    return CustomFieldDefinition(object_type=row.object_type, key=row.key, type=row.value_type,
                                 classification=row.classification, label=row.label,
                                 created_at=row.created_at)


@strawberry.type
class Queries:
    @strawberry.field(description="The custom fields defined on an object type.")
    def custom_field_definitions(self, info: Ctx,
                                 object_type: str) -> list[CustomFieldDefinition] | None:
        return [_definition(row) for row in ops.definitions(info.context, object_type)]


@strawberry.type
class Mutations:
    @strawberry.mutation(description="Add a custom field (admin). type: text, number, boolean or "
                         "date; classification: public, internal, confidential or restricted "
                         "(confidential and restricted values are encrypted).")
    def define_custom_field(self, info: Ctx, object_type: str, key: str, type: str,
                            classification: str,
                            label: str | None = None) -> CustomFieldDefinition | None:
        with info.context.savepoint():
            row = ops.define(info.context, object_type=object_type, key=key, value_type=type,
                             classification=classification, label=label)
        return _definition(row)

    @strawberry.mutation(description="Remove a custom field (admin) and its values from every "
                         "record.")
    def remove_custom_field(self, info: Ctx, object_type: str,
                            key: str) -> RemovedCustomField | None:
        with info.context.savepoint():
            removed = ops.remove(info.context, object_type=object_type, key=key)
        return RemovedCustomField(object_type=removed.object_type, key=removed.key,
                                  values_removed=removed.values_removed)
