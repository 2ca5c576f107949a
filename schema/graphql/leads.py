"""GraphQL for the leads module (see schema/ops/leads.py): leads, their conversion, and exact
search for people (contacts and leads) by email or phone."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from typing import Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.graphql import types as t
from schema.graphql.fields import (
    Connection,
    CustomFieldInput,
    CustomFieldValue,
    RecordFilter,
    RecordSort,
    custom_fields,
    guarded,
    record_id,
    reference,
    split_input,
    to_connection,
    to_filters,
    to_sort,
)
from schema.graphql.opportunities import Opportunity
from schema.ops import leads
from storage.crm_models import Lead as LeadRow

Ctx = Info[RequestContext, Any]


@strawberry.type
class Lead:
    row: strawberry.Private[LeadRow]
    id: strawberry.ID = record_id()
    first_name: str | None = guarded("lead", "first_name")
    last_name: str | None = guarded("lead", "last_name")
    company: str | None = guarded("lead", "company")
    email: str | None = guarded("lead", "email")
    phone: str | None = guarded("lead", "phone")
    source: str | None = guarded("lead", "source")
    status: str | None = guarded("lead", "status",
                                 description="new, working, qualified, unqualified or converted")
    score: int | None = guarded("lead", "score", description="0 to 100")
    converted_at: dt.datetime | None = guarded("lead", "converted_at")
    converted_contact: t.Contact | None = reference("lead", "converted_contact", "contact",
                                                    lambda row: t.Contact(row=row))
    converted_account: t.Account | None = reference("lead", "converted_account", "account",
                                                    lambda row: t.Account(row=row))
    converted_opportunity: Opportunity | None = reference(
        "lead", "converted_opportunity", "opportunity", lambda row: Opportunity(row=row))
    owner: str | None = guarded("lead", "owner")
    team: str | None = guarded("lead", "team")
    created_at: dt.datetime | None = guarded("lead", "created_at")
    updated_at: dt.datetime | None = guarded("lead", "updated_at")
    custom_fields: list[CustomFieldValue] = custom_fields("lead")


@strawberry.input
class LeadInput:
    last_name: str
    first_name: str | None = None
    company: str | None = None
    email: str | None = None
    phone: str | None = None
    source: str | None = None
    status: str | None = strawberry.field(
        default=None, description="new (the default), working, qualified or unqualified")
    score: int | None = None
    custom_fields: list[CustomFieldInput] | None = None


@strawberry.input
class LeadPatch:
    last_name: str | None = strawberry.UNSET
    first_name: str | None = strawberry.UNSET
    company: str | None = strawberry.UNSET
    email: str | None = strawberry.UNSET
    phone: str | None = strawberry.UNSET
    source: str | None = strawberry.UNSET
    status: str | None = strawberry.field(
        default=strawberry.UNSET,
        description="working, qualified, unqualified (converted only by convertLead)")
    score: int | None = strawberry.UNSET
    custom_fields: list[CustomFieldInput] | None = None


@strawberry.input
class OpportunityFromLead:
    name: str
    amount: decimal.Decimal | None = None
    currency: str = "EUR"
    stage_id: str | None = strawberry.field(
        default=None, description="The pipeline's first stage when left out")
    expected_close: dt.date | None = None


@strawberry.input
class ConvertLeadInput:
    account_id: strawberry.ID | None = strawberry.field(
        default=None, description="Link this existing account instead of creating one")
    account_name: str | None = strawberry.field(
        default=None, description="Name of the new account (the lead's company by default)")
    contact_id: strawberry.ID | None = strawberry.field(
        default=None, description="Link this existing contact instead of creating one")
    create_opportunity: OpportunityFromLead | None = None


@strawberry.type
class ConvertLeadResult:
    lead: Lead
    contact: t.Contact
    account: t.Account
    opportunity: Opportunity | None


@strawberry.type(description="People whose email or phone matches exactly, by kind of record. "
                             "Each list is refused on its own if the caller may not search it.")
class PeopleFound:
    email: strawberry.Private[str | None]
    phone: strawberry.Private[str | None]

    @strawberry.field
    def contacts(self, info: Ctx) -> list[t.Contact] | None:
        rows = leads.find(info.context, "contact", email=self.email, phone=self.phone)
        return [t.Contact(row=row) for row in rows]

    @strawberry.field
    def leads(self, info: Ctx) -> list[Lead] | None:
        rows = leads.find(info.context, "lead", email=self.email, phone=self.phone)
        return [Lead(row=row) for row in rows]



@strawberry.type
class Queries:
    @strawberry.field
    def leads(self, info: Ctx, first: int | None = 20, after: str | None = None,
              filter: list[RecordFilter] | None = None,
              sort: list[RecordSort] | None = None) -> Connection[Lead] | None:
        page = leads.list_leads(info.context, first=first, after=after,
                                filters=to_filters(filter), sort=to_sort(sort))
        return to_connection(page, lambda row: Lead(row=row))

    @strawberry.field
    def lead(self, info: Ctx, id: strawberry.ID) -> Lead | None:
        return Lead(row=leads.get_lead(info.context, id))

    @strawberry.field(description="Contacts and leads whose email or phone is exactly this "
                                  "(case and formatting aside), through the blind indexes.")
    def find_people(self, info: Ctx, email: str | None = None,
                    phone: str | None = None) -> PeopleFound | None:
        return PeopleFound(email=email, phone=phone)


@strawberry.type
class Mutations:
    @strawberry.mutation
    def create_lead(self, info: Ctx, input: LeadInput) -> Lead | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = leads.create_lead(info.context, values, custom=custom)
        return Lead(row=row)

    @strawberry.mutation
    def update_lead(self, info: Ctx, id: strawberry.ID, input: LeadPatch) -> Lead | None:
        values, custom = split_input(input)
        with info.context.savepoint():
            row = leads.update_lead(info.context, id, values, custom=custom)
        return Lead(row=row)

    @strawberry.mutation
    def delete_lead(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(leads.delete_lead(info.context, id)))

    @strawberry.mutation(description="Turn a lead into a contact, an account and optionally an "
                                     "opportunity, in one transaction. Converting twice is a "
                                     "CONFLICT.")
    def convert_lead(self, info: Ctx, id: strawberry.ID,
                     input: ConvertLeadInput | None = None) -> ConvertLeadResult | None:
        given = input or ConvertLeadInput()
        opportunity = (dataclasses.asdict(given.create_opportunity)
                       if given.create_opportunity is not None else None)
        with info.context.savepoint():
            done = leads.convert_lead(info.context, id, account_id=given.account_id,
                                      account_name=given.account_name,
                                      contact_id=given.contact_id, opportunity=opportunity)
        return ConvertLeadResult(
            lead=Lead(row=done.lead), contact=t.Contact(row=done.contact),
            account=t.Account(row=done.account),
            opportunity=Opportunity(row=done.opportunity) if done.opportunity else None)
