"""GraphQL for campaigns, their members and consent (see schema/ops/campaigns.py and
schema/ops/consent.py). Types are thin: every field asks the guard."""

from __future__ import annotations

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
    custom_inputs,
    guarded,
    record_id,
    reference,
    split_input,
    to_connection,
    to_filters,
    to_sort,
)
from schema.graphql.leads import Lead
from schema.ops import campaigns as ops
from schema.ops import consent as consent_ops
from schema.ops.records import get_visible
from storage.crm_models import Campaign as CampaignRow
from storage.crm_models import CampaignMember as CampaignMemberRow
from storage.crm_models import Consent as ConsentRow

Ctx = Info[RequestContext, Any]


@strawberry.type
class Campaign:
    row: strawberry.Private[CampaignRow]
    id: strawberry.ID = record_id()
    name: str | None = guarded("campaign", "name")
    channel: str | None = guarded("campaign", "channel",
                                  description="email, phone, event, web or print")
    status: str | None = guarded("campaign", "status",
                                 description="planned, active, completed or cancelled")
    budget: decimal.Decimal | None = guarded("campaign", "budget")
    currency: str | None = guarded("campaign", "currency")
    starts_on: dt.date | None = guarded("campaign", "starts_on")
    ends_on: dt.date | None = guarded("campaign", "ends_on")
    owner: str | None = guarded("campaign", "owner")
    team: str | None = guarded("campaign", "team")
    created_at: dt.datetime | None = guarded("campaign", "created_at")
    updated_at: dt.datetime | None = guarded("campaign", "updated_at")
    custom_fields: list[CustomFieldValue] = custom_fields("campaign")

    @strawberry.field(description="The campaign's members the caller may see.")
    def members(self, info: Ctx, first: int | None = 20,
                after: str | None = None) -> Connection[CampaignMember] | None:
        page = ops.list_members(info.context, self.row.id, first=first, after=after)
        return to_connection(page, lambda row: CampaignMember(row=row))


@strawberry.type
class CampaignMember:
    row: strawberry.Private[CampaignMemberRow]
    id: strawberry.ID = record_id()
    campaign: Campaign | None = reference("campaign_member", "campaign", "campaign",
                                          lambda row: Campaign(row=row))
    contact: t.Contact | None = reference("campaign_member", "contact", "contact",
                                          lambda row: t.Contact(row=row))
    lead: Lead | None = reference("campaign_member", "lead", "lead", lambda row: Lead(row=row))
    lead_id: strawberry.ID | None = guarded("campaign_member", "lead")
    status: str | None = guarded("campaign_member", "status",
                                 description="added, sent, responded, attended, converted or "
                                 "opted_out")
    owner: str | None = guarded("campaign_member", "owner")
    team: str | None = guarded("campaign_member", "team")
    created_at: dt.datetime | None = guarded("campaign_member", "created_at")
    updated_at: dt.datetime | None = guarded("campaign_member", "updated_at")
    custom_fields: list[CustomFieldValue] = custom_fields("campaign_member")


@strawberry.type(description="One consent event: granted or withdrawn, when, where from.")
class Consent:
    row: strawberry.Private[ConsentRow]
    id: strawberry.ID = record_id()
    contact: t.Contact | None = reference("consent", "contact", "contact",
                                          lambda row: t.Contact(row=row))
    purpose: str | None = guarded("consent", "purpose")
    channel: str | None = guarded("consent", "channel")
    granted: bool | None = guarded("consent", "granted")
    recorded_at: dt.datetime | None = guarded("consent", "recorded_at")
    source: str | None = guarded("consent", "source")
    evidence: str | None = guarded("consent", "evidence")
    owner: str | None = guarded("consent", "owner")
    team: str | None = guarded("consent", "team")
    created_at: dt.datetime | None = guarded("consent", "created_at")
    updated_at: dt.datetime | None = guarded("consent", "updated_at")
    custom_fields: list[CustomFieldValue] = custom_fields("consent")


@strawberry.type(description="The consent in force for one purpose and channel (the newest "
                 "event wins).")
class ConsentState:
    purpose: str
    channel: str
    granted: bool
    recorded_at: dt.datetime
    source: str | None
    consent_id: strawberry.ID


@strawberry.input
class CampaignInput:
    name: str
    channel: str
    status: str | None = None
    budget: decimal.Decimal | None = None
    currency: str | None = None
    starts_on: dt.date | None = None
    ends_on: dt.date | None = None
    custom_fields: list[CustomFieldInput] | None = None


@strawberry.input
class CampaignPatch:
    name: str | None = strawberry.UNSET
    channel: str | None = strawberry.UNSET
    status: str | None = strawberry.UNSET
    budget: decimal.Decimal | None = strawberry.UNSET
    currency: str | None = strawberry.UNSET
    starts_on: dt.date | None = strawberry.UNSET
    ends_on: dt.date | None = strawberry.UNSET
    custom_fields: list[CustomFieldInput] | None = strawberry.UNSET



@strawberry.type
class Queries:
    @strawberry.field
    def campaigns(self, info: Ctx, first: int | None = 20, after: str | None = None,
                  filter: list[RecordFilter] | None = None,
                  sort: list[RecordSort] | None = None) -> Connection[Campaign] | None:
        page = ops.list_campaigns(info.context, first=first, after=after,
                                  filters=to_filters(filter), sort=to_sort(sort))
        return to_connection(page, lambda row: Campaign(row=row))

    @strawberry.field
    def campaign(self, info: Ctx, id: strawberry.ID) -> Campaign | None:
        return Campaign(row=ops.get_campaign(info.context, id))

    @strawberry.field
    def campaign_member(self, info: Ctx, id: strawberry.ID) -> CampaignMember | None:
        return CampaignMember(row=get_visible(info.context, CampaignMemberRow, "campaign_member",
                                              id))

    @strawberry.field(description="One consent event by id.")
    def consent(self, info: Ctx, id: strawberry.ID) -> Consent | None:
        return Consent(row=get_visible(info.context, ConsentRow, "consent", id))

    @strawberry.field(description="The members the campaign may reach on its channel: contacts "
                      "whose marketing consent on that channel is in force. Leads never are.")
    def campaign_audience(self, info: Ctx,
                          campaign_id: strawberry.ID) -> list[CampaignMember] | None:
        return [CampaignMember(row=row) for row in ops.audience(info.context, campaign_id)]

    @strawberry.field(description="A contact's consent events, oldest first.")
    def consents(self, info: Ctx, contact_id: strawberry.ID, first: int | None = 20,
                 after: str | None = None) -> Connection[Consent] | None:
        page = consent_ops.history(info.context, contact_id, first=first, after=after)
        return to_connection(page, lambda row: Consent(row=row))

    @strawberry.field(description="The consent in force per purpose and channel.")
    def consent_status(self, info: Ctx, contact_id: strawberry.ID) -> list[ConsentState] | None:
        return [ConsentState(purpose=s.purpose, channel=s.channel, granted=s.granted,
                             recorded_at=s.recorded_at, source=s.source,
                             consent_id=strawberry.ID(s.consent_id))
                for s in consent_ops.status(info.context, contact_id)]


@strawberry.type
class Mutations:
    @strawberry.mutation
    def create_campaign(self, info: Ctx, input: CampaignInput) -> Campaign | None:
        data, custom = split_input(input)
        with info.context.savepoint():
            row = ops.create_campaign(info.context, data, custom=custom)
        return Campaign(row=row)

    @strawberry.mutation
    def update_campaign(self, info: Ctx, id: strawberry.ID,
                        input: CampaignPatch) -> Campaign | None:
        data, custom = split_input(input)
        with info.context.savepoint():
            row = ops.update_campaign(info.context, id, data, custom=custom)
        return Campaign(row=row)

    @strawberry.mutation(description="Delete a campaign and its member list.")
    def delete_campaign(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(ops.delete_campaign(info.context, id)))

    @strawberry.mutation(description="Add a contact or a lead (exactly one) to a campaign.")
    def add_campaign_member(self, info: Ctx, campaign_id: strawberry.ID,
                            contact_id: strawberry.ID | None = None,
                            lead_id: strawberry.ID | None = None, status: str | None = None,
                            custom_fields: list[CustomFieldInput] | None = None,
                            ) -> CampaignMember | None:
        with info.context.savepoint():
            row = ops.add_member(info.context, campaign_id, contact_id=contact_id,
                                 lead_id=lead_id, status=status,
                                 custom=custom_inputs(custom_fields))
        return CampaignMember(row=row)

    @strawberry.mutation
    def update_campaign_member(self, info: Ctx, id: strawberry.ID, status: str | None = None,
                               custom_fields: list[CustomFieldInput] | None = None,
                               ) -> CampaignMember | None:
        with info.context.savepoint():
            row = ops.update_member(info.context, id, status=status,
                                    custom=custom_inputs(custom_fields))
        return CampaignMember(row=row)

    @strawberry.mutation
    def remove_campaign_member(self, info: Ctx, id: strawberry.ID) -> t.Deleted | None:
        with info.context.savepoint():
            return t.Deleted(id=strawberry.ID(ops.remove_member(info.context, id)))

    @strawberry.mutation(description="Append a consent event (granted or withdrawn) for a "
                         "contact; the evidence is sealed.")
    def record_consent(self, info: Ctx, contact_id: strawberry.ID, purpose: str, channel: str,
                       granted: bool, source: str | None = None,
                       evidence: str | None = None) -> Consent | None:
        with info.context.savepoint():
            row = consent_ops.record_consent(info.context, contact_id, purpose_=purpose,
                                             channel_=channel, granted=granted, source=source,
                                             evidence=evidence)
        return Consent(row=row)
