"""Custom field definitions: an administrator (object-level `custom_field` manage) adds typed,
classified fields to any guarded object.

The classification decides everything else: confidential and restricted values are sealed with
the record's other sealed values, public and internal ones stay plain; the default policy's
grants by class cover custom fields of that class (a sales_rep, granted up to confidential, never
reads a restricted custom field). Defining or removing a field bumps the policy version, so every
guard picks up the new catalogue (`PolicySnapshot.objects`) with its next request.

Removing a field removes its values from every record in the same transaction: plain values are
dropped and sealed ones re-sealed without it under a new subject key version (the old subject
keys are destroyed, so copies in backups no longer open either). Policy rules naming the field
are revoked with it. A field that later gets the same key therefore starts empty and with only
its class's grants: no old value or old grant resurfaces under a weaker classification.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select

from schema.context import RequestContext
from schema.ops import validation
from schema.ops.custom_values import VALUE_TYPES
from security.authz import MANAGE, READ, bump_policy_version
from security.classification import OBJECTS, FieldClass, custom_field_name
from security.errors import BadUserInput, Conflict, Forbidden, NotFound
from storage.crm_models import CustomFieldDef
from storage.ids import new_id
from storage.models import MODELS, PolicyRule

OBJECT = "custom_field"
KEY = re.compile(r"[a-z][a-z0-9_]{0,40}")
CLASSIFICATIONS = tuple(c.value for c in FieldClass)


@dataclass(frozen=True)
class Removed:
    object_type: str
    key: str
    #: Records changed: those holding a plain value of the field, or (sealed field) every record
    #: with sealed custom values, all re-sealed without it.
    values_removed: int


def _object_type(value: str) -> str:
    if value not in OBJECTS:
        raise BadUserInput(f"objectType must be one of {', '.join(OBJECTS)}", field="objectType")
    return value


def _key(value: str) -> str:
    if not isinstance(value, str) or not KEY.fullmatch(value):
        raise BadUserInput("key must match [a-z][a-z0-9_]{0,40}", field="key")
    return value


def define(ctx: RequestContext, *, object_type: str, key: str, value_type: str,
           classification: str, label: str | None = None) -> CustomFieldDef:
    ctx.guard.require(OBJECT, MANAGE)
    object_type = _object_type(object_type)
    key = _key(key)
    if value_type not in VALUE_TYPES:
        raise BadUserInput(f"type must be one of {', '.join(VALUE_TYPES)}", field="type")
    if classification not in CLASSIFICATIONS:
        raise BadUserInput(f"classification must be one of {', '.join(CLASSIFICATIONS)}",
                           field="classification")
    label = validation.text("label", label, max_length=200)
    if key in OBJECTS[object_type].field_names:
        raise BadUserInput(f"{object_type} already has a built-in field {key}", field="key")
    if _find(ctx, object_type, key) is not None:
        raise Conflict(f"{object_type} already has a custom field {key}")
    row = CustomFieldDef(id=new_id(), object_type=object_type, key=key, label=label,
                         value_type=value_type, classification=classification)
    ctx.session.add(row)
    ctx.session.flush()
    version = bump_policy_version(ctx.session)
    ctx.audit("custom_field.define", object_type=OBJECT, object_ids=[row.id],
              fields=[f"{object_type}.{custom_field_name(key)}", f"type:{value_type}",
                      f"class:{classification}", f"policy:v{version}"])
    return row


def definitions(ctx: RequestContext, object_type: str) -> list[CustomFieldDef]:
    """The custom fields of an object type: for administrators and for whoever may read records
    of that type (they need the keys to ask for values); refused (audited) otherwise."""
    object_type = _object_type(object_type)
    if not (ctx.guard.permits(OBJECT, MANAGE) or ctx.guard.permits(OBJECT, READ)
            or ctx.guard.scopes(object_type, READ)):
        reason = (f"no policy grants reading {object_type} or managing custom fields to "
                  f"{', '.join(ctx.principal.roles) or 'no role'}")
        ctx.guard.refuse(OBJECT, (), ("@read",), reason)
        raise Forbidden(reason)
    return list(ctx.session.scalars(
        select(CustomFieldDef).where(CustomFieldDef.object_type == object_type)
        .order_by(CustomFieldDef.created_at, CustomFieldDef.id)))


def remove(ctx: RequestContext, *, object_type: str, key: str) -> Removed:
    """Remove a definition and its values from every record (see the module docstring)."""
    ctx.guard.require(OBJECT, MANAGE)
    object_type = _object_type(object_type)
    key = _key(key)
    row = _find(ctx, object_type, key)
    if row is None:
        raise NotFound(f"{object_type} has no custom field {key}")
    sealed = row.classification in (FieldClass.CONFIDENTIAL.value, FieldClass.RESTRICTED.value)
    model = MODELS[object_type]
    column = model.custom_sealed if sealed else model.custom_plain
    touched: list[str] = []
    records = list(ctx.session.scalars(
        select(model).where(column.is_not(None)).order_by(model.id)))
    if sealed:
        ctx.guard.preload(records)
    for record in records:
        if sealed:
            # The guard opens the record's sealed custom values (nothing is revealed to the
            # caller) and re-seals them without this one under a new subject key version.
            ctx.guard.seal_fields(object_type, record, {}, {key: None})
            touched.append(record.id)
        elif key in (record.custom_plain or {}):
            remaining = {k: v for k, v in record.custom_plain.items() if k != key}
            record.custom_plain = remaining or None
            touched.append(record.id)
    # Rules that name the field go with it: a later field of the same key starts ungranted.
    rules = list(ctx.session.scalars(select(PolicyRule).where(
        PolicyRule.object_type == object_type, PolicyRule.field == custom_field_name(key))))
    for rule in rules:
        ctx.session.delete(rule)
    ctx.session.delete(row)
    ctx.session.flush()
    version = bump_policy_version(ctx.session)
    ctx.audit("custom_field.remove", object_type=OBJECT, object_ids=[row.id],
              fields=[f"{object_type}.{custom_field_name(key)}", f"values_removed:{len(touched)}",
                      *(f"revoked:{'|'.join((r.role, r.object_type, r.field, r.action))}"
                        for r in rules),
                      f"policy:v{version}"])
    if touched:
        ctx.audit(f"{object_type}.custom_field_removed", object_type=object_type,
                  object_ids=touched, fields=[custom_field_name(key)])
    return Removed(object_type, key, len(touched))


def _find(ctx: RequestContext, object_type: str, key: str) -> CustomFieldDef | None:
    return ctx.session.scalar(select(CustomFieldDef).where(
        CustomFieldDef.object_type == object_type, CustomFieldDef.key == key))
