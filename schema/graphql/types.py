"""GraphQL types. Thin: every guarded field asks the guard, which decides, audits and opens."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.ops.custom_values import read_custom
from storage.models import Account as AccountRow
from storage.models import Contact as ContactRow

if TYPE_CHECKING:
    from schema.graphql.fields import CustomFieldInput, CustomFieldValue

# Custom field types live in schema.graphql.fields, which imports this module: lazily here.
_FIELDS = "schema.graphql.fields"


def _reveal(info: Info[RequestContext, Any], object_type: str, row: Any, field: str) -> Any:
    return info.context.guard.reveal(object_type, row, field)


def _custom(info: Info[RequestContext, Any], object_type: str, row: Any,
            keys: list[str] | None) -> list[CustomFieldValue]:
    from schema.graphql.fields import _typed  # fields imports this module
    return [_typed(r.key, r.value_type, r.value)
            for r in read_custom(info.context, object_type, row, keys)]


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Account:
    row: strawberry.Private[AccountRow]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.row.id)

    @strawberry.field
    def name(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "account", self.row, "name")

    @strawberry.field
    def industry(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "account", self.row, "industry")

    @strawberry.field
    def website(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "account", self.row, "website")

    @strawberry.field
    def owner(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "account", self.row, "owner")

    @strawberry.field
    def team(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "account", self.row, "team")

    @strawberry.field
    def created_at(self, info: Info[RequestContext, Any]) -> dt.datetime | None:
        return _reveal(info, "account", self.row, "created_at")

    @strawberry.field
    def updated_at(self, info: Info[RequestContext, Any]) -> dt.datetime | None:
        return _reveal(info, "account", self.row, "updated_at")

    @strawberry.field(description="The custom values the caller may read; keys asked for by "
                                  "name that the caller may not read are refused.")
    def custom_fields(
        self, info: Info[RequestContext, Any], keys: list[str] | None = None,
    ) -> list[Annotated[CustomFieldValue, strawberry.lazy(_FIELDS)]]:
        return _custom(info, "account", self.row, keys)


@strawberry.type
class Contact:
    row: strawberry.Private[ContactRow]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.row.id)

    @strawberry.field
    def first_name(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "first_name")

    @strawberry.field
    def last_name(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "last_name")

    @strawberry.field
    def title(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "title")

    @strawberry.field
    def email(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "email")

    @strawberry.field
    def phone(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "phone")

    @strawberry.field
    def address(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "address")

    @strawberry.field(description="ISO date YYYY-MM-DD (or a masked form such as 1980-**-**)")
    def birth_date(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "birth_date")

    @strawberry.field
    def national_id(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "national_id")

    @strawberry.field
    def notes(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "notes")

    @strawberry.field
    def account(self, info: Info[RequestContext, Any]) -> Account | None:
        account_id = _reveal(info, "contact", self.row, "account")
        if account_id is None:
            return None
        row = info.context.accounts.load(account_id)
        return Account(row=row) if row is not None else None

    @strawberry.field
    def owner(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "owner")

    @strawberry.field
    def team(self, info: Info[RequestContext, Any]) -> str | None:
        return _reveal(info, "contact", self.row, "team")

    @strawberry.field
    def created_at(self, info: Info[RequestContext, Any]) -> dt.datetime | None:
        return _reveal(info, "contact", self.row, "created_at")

    @strawberry.field
    def updated_at(self, info: Info[RequestContext, Any]) -> dt.datetime | None:
        return _reveal(info, "contact", self.row, "updated_at")

    @strawberry.field(description="The custom values the caller may read; keys asked for by "
                                  "name that the caller may not read are refused.")
    def custom_fields(
        self, info: Info[RequestContext, Any], keys: list[str] | None = None,
    ) -> list[Annotated[CustomFieldValue, strawberry.lazy(_FIELDS)]]:
        return _custom(info, "contact", self.row, keys)


@strawberry.type
class AccountEdge:
    cursor: str
    node: Account


@strawberry.type
class AccountConnection:
    edges: list[AccountEdge]
    page_info: PageInfo


@strawberry.type
class ContactEdge:
    cursor: str
    node: Contact


@strawberry.type
class ContactConnection:
    edges: list[ContactEdge]
    page_info: PageInfo


@strawberry.type
class Me:
    id: str
    name: str
    roles: list[str]
    team: str | None


@strawberry.type
class AuditEvent:
    seq: int
    ts: str
    actor: str
    roles: list[str]
    action: str
    object_type: str | None
    object_ids: list[str]
    fields: list[str]
    decision: str
    reason: str | None
    request_id: str | None
    prev_hash: str
    hash: str


@strawberry.type
class AuditEventEdge:
    cursor: str
    node: AuditEvent


@strawberry.type
class AuditEventConnection:
    edges: list[AuditEventEdge]
    page_info: PageInfo


@strawberry.type
class PolicyRule:
    role: str
    object_type: str
    field: str
    action: str


@strawberry.type
class ApiClient:
    id: str
    name: str
    roles: list[str]
    team: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


@strawberry.type
class IssuedClient:
    client: ApiClient
    client_secret: str = strawberry.field(description="Shown once; store it now.")


@strawberry.type
class Deleted:
    id: strawberry.ID


@strawberry.type
class PolicyChange:
    policy_version: int


@strawberry.input
class AccountInput:
    name: str
    industry: str | None = None
    website: str | None = None
    custom_fields: list[Annotated[CustomFieldInput, strawberry.lazy(_FIELDS)]] | None = None


@strawberry.input
class AccountPatch:
    name: str | None = strawberry.UNSET
    industry: str | None = strawberry.UNSET
    website: str | None = strawberry.UNSET
    custom_fields: list[Annotated[CustomFieldInput, strawberry.lazy(_FIELDS)]] | None = None


@strawberry.input
class ContactInput:
    last_name: str
    first_name: str | None = None
    title: str | None = None
    account_id: strawberry.ID | None = None
    email: str | None = None
    phone: str | None = None
    address: str | None = None
    birth_date: str | None = None
    national_id: str | None = None
    notes: str | None = None
    custom_fields: list[Annotated[CustomFieldInput, strawberry.lazy(_FIELDS)]] | None = None


@strawberry.input
class ContactPatch:
    last_name: str | None = strawberry.UNSET
    first_name: str | None = strawberry.UNSET
    title: str | None = strawberry.UNSET
    account_id: strawberry.ID | None = strawberry.UNSET
    email: str | None = strawberry.UNSET
    phone: str | None = strawberry.UNSET
    address: str | None = strawberry.UNSET
    birth_date: str | None = strawberry.UNSET
    national_id: str | None = strawberry.UNSET
    notes: str | None = strawberry.UNSET
    custom_fields: list[Annotated[CustomFieldInput, strawberry.lazy(_FIELDS)]] | None = None


@strawberry.input
class ContactFilter:
    account_id: strawberry.ID | None = None
    owner: str | None = None
    email: str | None = None
    phone: str | None = None


@strawberry.input
class AuditEventFilter:
    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    decision: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@strawberry.input
class PolicyRuleInput:
    role: str
    object_type: str
    field: str
    action: str
