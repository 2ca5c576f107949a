"""What each guarded field is: its classification, whether it is sealed, how it is masked.

The catalogue is the one vocabulary that storage, the guard, policies and GraphQL share. A
field's classification drives both its encryption and the default policy (grants by class).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FieldClass(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"

    @property
    def policy_name(self) -> str:
        return f"class:{self.value}"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    classification: FieldClass
    sealed: bool = False
    #: Searchable by exact match through a blind index of this kind.
    index_kind: str | None = None
    #: How a `mask` decision shows the value.
    mask: str = "default"
    #: Reads of this field are personal-data reads and are audited.
    personal: bool = False


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    table: str
    fields: tuple[FieldSpec, ...]

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} has no field {name!r}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def sealed_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.sealed)


_P, _I, _C, _R = (FieldClass.PUBLIC, FieldClass.INTERNAL, FieldClass.CONFIDENTIAL,
                  FieldClass.RESTRICTED)

ACCOUNT = ObjectSpec("account", "accounts", (
    FieldSpec("name", _P),
    FieldSpec("industry", _P),
    FieldSpec("website", _P),
    FieldSpec("owner", _I),
    FieldSpec("team", _I),
    FieldSpec("created_at", _I),
    FieldSpec("updated_at", _I),
))

CONTACT = ObjectSpec("contact", "contacts", (
    FieldSpec("first_name", _I, personal=True),
    FieldSpec("last_name", _I, personal=True),
    FieldSpec("title", _I),
    FieldSpec("account", _I),
    FieldSpec("email", _C, sealed=True, index_kind="email", mask="email", personal=True),
    FieldSpec("phone", _C, sealed=True, index_kind="phone", mask="phone", personal=True),
    FieldSpec("address", _C, sealed=True, personal=True),
    FieldSpec("notes", _C, sealed=True, personal=True),
    FieldSpec("birth_date", _R, sealed=True, mask="date", personal=True),
    FieldSpec("national_id", _R, sealed=True, personal=True),
    FieldSpec("owner", _I),
    FieldSpec("team", _I),
    FieldSpec("created_at", _I),
    FieldSpec("updated_at", _I),
))

OBJECTS: dict[str, ObjectSpec] = {spec.name: spec for spec in (ACCOUNT, CONTACT)}


def mask_value(kind: str, value: str) -> str:
    """Show enough to recognise a value, not enough to use it."""
    if kind == "email" and "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind == "phone":
        digits = [c for c in value if c.isdigit()]
        return "***" + "".join(digits[-2:])
    if kind == "date":
        return value[:4] + "-**-**"
    return value[:1] + "***" if value else value
