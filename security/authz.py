"""Authorisation with Casbin, decided once per policy version and (role, object, field, action).

One pycasbin `enforce` costs about 110 µs, so decisions are memoised in a snapshot tied to the
policy version; a request asks the snapshot, never Casbin per row or per field resolver.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import casbin
from sqlalchemy import select
from sqlalchemy.orm import Session

from security.classification import OBJECTS, FieldClass, FieldSpec, ObjectSpec, custom_field_name
from storage.counters import bump_counter, read_counter
from storage.crm_models import CustomFieldDef
from storage.models import PolicyRule

MODEL_PATH = Path(__file__).with_name("authz_model.conf")
POLICY_VERSION_KEY = "policy_version"

READ, READ_MASKED, WRITE, MANAGE = "read", "read_masked", "write", "manage"
#: Read a field only while the record's data subject consents to marketing on its channel.
READ_CONSENTED = "read_consented"
ACTIONS = (READ, READ_MASKED, READ_CONSENTED, WRITE, MANAGE)
SCOPES = ("@own", "@team", "@all")
#: Objects that are not CRM records: permissions on them are object-level ("@all").
#: pipeline, sla, custom_field, webhook, retention: configuration an administrator manages;
#: subject: data-subject rights (export everything on a person, erase them); document: the
#: trusted GraphQL documents.
SYSTEM_OBJECTS = ("client", "policy", "audit", "key", "user", "pipeline", "sla", "custom_field",
                  "webhook", "retention", "subject", "document")
ROLE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


class Decision(StrEnum):
    ALLOW = "allow"
    MASK = "mask"
    #: Allowed for records whose data subject consents on the field's channel; refused otherwise.
    CONSENTED = "consented"
    DENY = "deny"


@dataclass(frozen=True)
class Rule:
    role: str
    object_type: str
    field: str
    action: str

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.role, self.object_type, self.field, self.action)


def validate_rule(rule: Rule, custom: Iterable[FieldSpec] = ()) -> str | None:
    """Why `rule` is not a rule Enclave understands, or None when it is. `custom`: the custom
    fields defined on `rule.object_type`."""
    if not rule.role or not set(rule.role) <= ROLE_NAME_CHARS or len(rule.role) > 64:
        return "role must be 1-64 characters of a-z, 0-9, _ and -"
    if rule.action not in ACTIONS:
        return f"action must be one of {', '.join(ACTIONS)}"
    if rule.object_type in SYSTEM_OBJECTS:
        if rule.field != "@all" or rule.action not in (READ, MANAGE):
            return f"{rule.object_type} takes field '@all' with action read or manage"
        return None
    spec = OBJECTS.get(rule.object_type)
    if spec is None:
        return f"unknown object type {rule.object_type!r}"
    if rule.field in SCOPES:
        if rule.action not in (READ, WRITE):
            return "record rules (@own, @team, @all) take action read or write"
        return None
    classes = {c.policy_name for c in FieldClass}
    names = set(spec.field_names) | {f.name for f in custom}
    if rule.field not in names and rule.field not in classes:
        return f"{rule.object_type} has no field or class {rule.field!r}"
    if rule.action == MANAGE:
        return "fields take action read, read_masked, read_consented or write"
    if rule.action == READ_CONSENTED and rule.field in names and not (
            spec.with_fields(tuple(custom)).field(rule.field).consent_channel):
        return f"{rule.object_type}.{rule.field} has no consent channel"
    return None


def custom_specs(definitions: Iterable[CustomFieldDef]) -> dict[str, tuple[FieldSpec, ...]]:
    """The guard's view of custom field definitions, by object type."""
    found: dict[str, list[FieldSpec]] = {}
    for d in definitions:
        cls = FieldClass(d.classification)
        found.setdefault(d.object_type, []).append(FieldSpec(
            custom_field_name(d.key), cls,
            sealed=cls in (FieldClass.CONFIDENTIAL, FieldClass.RESTRICTED),
            personal=cls in (FieldClass.CONFIDENTIAL, FieldClass.RESTRICTED),
            custom=True, value_type=d.value_type, attribute=d.key))
    return {obj: tuple(specs) for obj, specs in found.items()}


class PolicySnapshot:
    """The policy at one version, with every decision memoised."""

    def __init__(self, version: int, rules: Iterable[Rule],
                 custom: dict[str, tuple[FieldSpec, ...]] | None = None) -> None:
        self.version = version
        self.rules = tuple(rules)
        #: The catalogue at this version: built-in objects plus their custom fields.
        self.objects: dict[str, ObjectSpec] = {
            name: spec.with_fields((custom or {}).get(name, ())) for name, spec in OBJECTS.items()}
        self._enforcer = casbin.Enforcer(str(MODEL_PATH))
        if self.rules:
            self._enforcer.add_policies([list(r.as_tuple()) for r in self.rules])
        self._fields: dict[tuple[tuple[str, ...], str, str, str], Decision] = {}
        self._scopes: dict[tuple[tuple[str, ...], str, str], frozenset[str]] = {}
        self._lock = threading.Lock()

    def _enforce(self, role: str, obj: str, fld: str, cls: str, act: str) -> bool:
        with self._lock:  # the enforcer is not documented as thread-safe
            return bool(self._enforcer.enforce(role, obj, fld, cls, act))

    def field(self, roles: Sequence[str], obj: str, field: str, action: str = READ) -> Decision:
        key = (tuple(roles), obj, field, action)
        decision = self._fields.get(key)
        if decision is None:
            decision = self._decide_field(roles, obj, field, action)
            self._fields[key] = decision
        return decision

    def spec(self, obj: str) -> ObjectSpec:
        return self.objects[obj]

    def custom_fields(self, obj: str) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.objects[obj].fields if f.custom)

    def _decide_field(self, roles: Sequence[str], obj: str, field: str, action: str) -> Decision:
        fspec = self.objects[obj].field(field)
        cls = fspec.classification.policy_name
        if any(self._enforce(role, obj, field, cls, action) for role in roles):
            return Decision.ALLOW
        if action != READ:
            return Decision.DENY
        if any(self._enforce(role, obj, field, cls, READ_MASKED) for role in roles):
            return Decision.MASK
        if fspec.consent_channel and any(
            self._enforce(role, obj, field, cls, READ_CONSENTED) for role in roles
        ):
            return Decision.CONSENTED
        return Decision.DENY

    def scopes(self, roles: Sequence[str], obj: str, action: str) -> frozenset[str]:
        """The record rules granted to any of `roles` for `action` on `obj`."""
        key = (tuple(roles), obj, action)
        found = self._scopes.get(key)
        if found is None:
            found = frozenset(
                scope for scope in SCOPES
                if any(self._enforce(role, obj, scope, "", action) for role in roles)
            )
            self._scopes[key] = found
        return found

    def permits(self, roles: Sequence[str], obj: str, action: str) -> bool:
        """Object-level permission (manage clients, read the audit log, ...)."""
        return "@all" in self.scopes(roles, obj, action)


class Authoriser:
    """Hands out the snapshot for the policy version currently in the database."""

    def __init__(self) -> None:
        self._snapshot: PolicySnapshot | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> PolicySnapshot | None:
        """The snapshot last handed out (None before the first), without asking the database."""
        return self._snapshot

    def snapshot(self, session: Session, version: int | None = None) -> PolicySnapshot:
        if version is None:
            version = current_policy_version(session)
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == version:
            return snapshot
        with self._lock:
            if self._snapshot is None or self._snapshot.version != version:
                rules = [Rule(*row) for row in session.execute(
                    select(PolicyRule.role, PolicyRule.object_type, PolicyRule.field,
                           PolicyRule.action).order_by(PolicyRule.id)
                )]
                custom = custom_specs(session.scalars(
                    select(CustomFieldDef).order_by(CustomFieldDef.created_at,
                                                    CustomFieldDef.id)))
                self._snapshot = PolicySnapshot(version, rules, custom)
            return self._snapshot


def current_policy_version(session: Session) -> int:
    return read_counter(session, POLICY_VERSION_KEY)


def bump_policy_version(session: Session) -> int:
    return bump_counter(session, POLICY_VERSION_KEY)
