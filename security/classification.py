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
    #: The record attribute holding the value, when it differs from `name` (e.g. a reference
    #: field `account` held as `account_id`, or a computed property).
    attribute: str | None = None
    #: A `read_consented` grant shows this field only while the record's data subject has
    #: granted marketing consent on this channel.
    consent_channel: str | None = None
    #: A field an administrator defined (see `custom_fields`); held in the record's custom blobs.
    custom: bool = False
    #: The custom field's value type (text, number, boolean, date).
    value_type: str | None = None

    @property
    def attr(self) -> str:
        return self.attribute or self.name


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    table: str
    fields: tuple[FieldSpec, ...]
    #: The GraphQL/plural name of a list of these.
    plural: str = ""

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
        """The built-in sealed columns (a custom field's sealed value sits in `custom_sealed`)."""
        return tuple(f for f in self.fields if f.sealed and not f.custom)

    def with_fields(self, extra: tuple[FieldSpec, ...]) -> ObjectSpec:
        return ObjectSpec(self.name, self.table, self.fields + extra, self.plural)


_P, _I, _C, _R = (FieldClass.PUBLIC, FieldClass.INTERNAL, FieldClass.CONFIDENTIAL,
                  FieldClass.RESTRICTED)

#: Every CRM record carries these (record rules read owner and team).
_RECORD_META = (
    FieldSpec("owner", _I),
    FieldSpec("team", _I),
    FieldSpec("created_at", _I),
    FieldSpec("updated_at", _I),
)


def _ref(name: str) -> FieldSpec:
    """A reference to another record, held as `<name>_id`."""
    return FieldSpec(name, _I, attribute=f"{name}_id")


#: The pseudo-field holding the sealed custom values of a record (never granted by name).
CUSTOM_SEALED = FieldSpec("custom_sealed", _R, sealed=True)

ACCOUNT = ObjectSpec("account", "accounts", (
    FieldSpec("name", _P),
    FieldSpec("industry", _P),
    FieldSpec("website", _P),
    *_RECORD_META,
), plural="accounts")

CONTACT = ObjectSpec("contact", "contacts", (
    FieldSpec("first_name", _I, personal=True),
    FieldSpec("last_name", _I, personal=True),
    FieldSpec("title", _I),
    _ref("account"),
    FieldSpec("email", _C, sealed=True, index_kind="email", mask="email", personal=True,
              consent_channel="email"),
    FieldSpec("phone", _C, sealed=True, index_kind="phone", mask="phone", personal=True,
              consent_channel="phone"),
    FieldSpec("address", _C, sealed=True, personal=True),
    FieldSpec("notes", _C, sealed=True, personal=True),
    FieldSpec("birth_date", _R, sealed=True, mask="date", personal=True),
    FieldSpec("national_id", _R, sealed=True, personal=True),
    *_RECORD_META,
), plural="contacts")

LEAD = ObjectSpec("lead", "leads", (
    FieldSpec("first_name", _I, personal=True),
    FieldSpec("last_name", _I, personal=True),
    FieldSpec("company", _P),
    FieldSpec("email", _C, sealed=True, index_kind="email", mask="email", personal=True,
              consent_channel="email"),
    FieldSpec("phone", _C, sealed=True, index_kind="phone", mask="phone", personal=True,
              consent_channel="phone"),
    FieldSpec("source", _I),
    FieldSpec("status", _I),
    FieldSpec("score", _I),
    FieldSpec("converted_at", _I),
    _ref("converted_contact"),
    _ref("converted_account"),
    _ref("converted_opportunity"),
    *_RECORD_META,
), plural="leads")

OPPORTUNITY = ObjectSpec("opportunity", "opportunities", (
    FieldSpec("name", _P),
    _ref("account"),
    _ref("contact"),
    FieldSpec("amount", _I),
    FieldSpec("currency", _I),
    _ref("stage"),
    FieldSpec("probability", _I),
    FieldSpec("expected_close", _I),
    FieldSpec("closed_at", _I),
    FieldSpec("description", _C, sealed=True),
    *_RECORD_META,
), plural="opportunities")

ACTIVITY = ObjectSpec("activity", "activities", (
    FieldSpec("kind", _I),
    FieldSpec("subject", _I),
    FieldSpec("body", _C, sealed=True, personal=True),
    FieldSpec("occurred_at", _I),
    FieldSpec("due_at", _I),
    FieldSpec("done_at", _I),
    _ref("account"),
    _ref("contact"),
    _ref("lead"),
    _ref("opportunity"),
    _ref("case"),
    *_RECORD_META,
), plural="activities")

CASE = ObjectSpec("case", "cases", (
    FieldSpec("subject", _I),
    FieldSpec("description", _C, sealed=True, personal=True),
    _ref("contact"),
    _ref("account"),
    FieldSpec("priority", _I),
    FieldSpec("status", _I),
    FieldSpec("assignee", _I),
    FieldSpec("first_response_due", _I),
    FieldSpec("resolution_due", _I),
    FieldSpec("first_response_at", _I),
    FieldSpec("resolved_at", _I),
    FieldSpec("response_breached", _I),
    FieldSpec("resolution_breached", _I),
    *_RECORD_META,
), plural="cases")

CAMPAIGN = ObjectSpec("campaign", "campaigns", (
    FieldSpec("name", _P),
    FieldSpec("channel", _I),
    FieldSpec("status", _I),
    FieldSpec("budget", _I),
    FieldSpec("currency", _I),
    FieldSpec("starts_on", _I),
    FieldSpec("ends_on", _I),
    *_RECORD_META,
), plural="campaigns")

CAMPAIGN_MEMBER = ObjectSpec("campaign_member", "campaign_members", (
    _ref("campaign"),
    _ref("contact"),
    _ref("lead"),
    FieldSpec("status", _I),
    *_RECORD_META,
), plural="campaignMembers")

CONSENT = ObjectSpec("consent", "consents", (
    _ref("contact"),
    FieldSpec("purpose", _I),
    FieldSpec("channel", _I),
    FieldSpec("granted", _I),
    FieldSpec("recorded_at", _I),
    FieldSpec("source", _I),
    FieldSpec("evidence", _C, sealed=True, personal=True),
    *_RECORD_META,
), plural="consents")

#: The guarded CRM objects. Custom fields extend these at run time (`PolicySnapshot.spec`).
OBJECTS: dict[str, ObjectSpec] = {spec.name: spec for spec in (
    ACCOUNT, CONTACT, LEAD, OPPORTUNITY, ACTIVITY, CASE, CAMPAIGN, CAMPAIGN_MEMBER, CONSENT)}

#: Objects whose rows may carry sealed values (own sealed fields or sealed custom values): each
#: has `key_version` and is sealed under a subject key of its own id.
SEALED_OBJECTS = tuple(OBJECTS)

#: The purpose a `read_consented` grant checks consent for.
MARKETING_PURPOSE = "marketing"


def custom_field_name(key: str) -> str:
    """The policy and guard name of a custom field."""
    return f"custom:{key}"


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
