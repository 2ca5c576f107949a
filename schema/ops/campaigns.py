"""Campaigns and their members. A campaign reaches only the members whose marketing consent on
its channel is in force (`audience`); leads carry no consent records and are never reachable.

Members inherit their campaign's owner and team, so whoever works the campaign works its list.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import select

from schema.context import RequestContext
from schema.ops import records, validation
from schema.ops.custom_values import CustomValue
from schema.ops.records import Page
from security.authz import WRITE
from security.errors import BadUserInput, Conflict
from storage.crm_models import Campaign, CampaignMember

OBJECT = "campaign"
MEMBER = "campaign_member"
CHANNELS = ("email", "phone", "event", "web", "print")
STATUSES = ("planned", "active", "completed", "cancelled")
MEMBER_STATUSES = ("added", "sent", "responded", "attended", "converted", "opted_out")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_BUDGET = decimal.Decimal(10) ** 15


def choice(field: str, value: Any, allowed: Sequence[str], *, required: bool = False) -> str | None:
    value = validation.text(field, value, max_length=32, required=required)
    if value is not None and value not in allowed:
        raise BadUserInput(f"{field} must be one of {', '.join(allowed)}", field=field)
    return value


def money(field: str, value: Any) -> decimal.Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        raise BadUserInput(f"{field} must be a decimal, not a float", field=field)
    try:
        amount = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        raise BadUserInput(f"{field} must be a decimal number", field=field) from None
    if not amount.is_finite() or amount < 0 or amount >= _MAX_BUDGET:
        raise BadUserInput(f"{field} must be between 0 and 10^15", field=field)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise BadUserInput(f"{field} takes at most 2 decimal places", field=field)
    return amount


def currency(field: str, value: Any) -> str | None:
    value = validation.text(field, value, max_length=3)
    if value is not None and not _CURRENCY.match(value):
        raise BadUserInput(f"{field} must be an ISO 4217 code such as EUR", field=field)
    return value


def date(field: str, value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise BadUserInput(f"{field} must be a date as YYYY-MM-DD", field=field)
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadUserInput(f"{field} must be a date as YYYY-MM-DD", field=field) from None


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: validation.text("name", v, max_length=200, required=True),
    "channel": lambda v: choice("channel", v, CHANNELS, required=True),
    "status": lambda v: choice("status", v, STATUSES, required=True),
    "budget": lambda v: money("budget", v),
    "currency": lambda v: currency("currency", v),
    "starts_on": lambda v: date("startsOn", v),
    "ends_on": lambda v: date("endsOn", v),
}


def _check_period(starts_on: dt.date | None, ends_on: dt.date | None) -> None:
    if starts_on is not None and ends_on is not None and ends_on < starts_on:
        raise BadUserInput("endsOn must not be before startsOn", field="endsOn")


def _clean(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    data = dict(data)
    if creating:
        if data.get("status") is None:
            data["status"] = "planned"
        if data.get("currency") is None:
            data["currency"] = "EUR"
    elif "currency" in data and data["currency"] is None:
        raise BadUserInput("currency must not be empty", field="currency")
    return records.clean(OBJECT, _CHECKS, data, required=("name", "channel"), creating=creating)


def create_campaign(ctx: RequestContext, data: Mapping[str, Any], *,
                    custom: Sequence[CustomValue] = ()) -> Campaign:
    records.authorise_write(ctx, OBJECT, data)
    values = _clean(data, creating=True)
    _check_period(values.get("starts_on"), values.get("ends_on"))
    return records.create_record(ctx, OBJECT, values, custom=custom)  # type: ignore[no-any-return]


def update_campaign(ctx: RequestContext, campaign_id: str, changes: Mapping[str, Any], *,
                    custom: Sequence[CustomValue] = ()) -> Campaign:
    records.authorise_write(ctx, OBJECT, changes, record_id=campaign_id)
    values = _clean(changes, creating=False)
    campaign = records.get_visible(ctx, Campaign, OBJECT, campaign_id, WRITE)
    _check_period(values.get("starts_on", campaign.starts_on),
                  values.get("ends_on", campaign.ends_on))
    return records.update_record(  # type: ignore[no-any-return]
        ctx, OBJECT, campaign.id, values, custom=custom, record=campaign)


def delete_campaign(ctx: RequestContext, campaign_id: str) -> str:
    """Delete a campaign and its member list (each member's keys destroyed too)."""
    campaign = records.get_visible(ctx, Campaign, OBJECT, campaign_id, WRITE)
    for member in list(ctx.session.scalars(
            select(CampaignMember).where(CampaignMember.campaign_id == campaign.id))):
        records.delete_record(ctx, MEMBER, member.id)
    return records.delete_record(ctx, OBJECT, campaign.id)


def get_campaign(ctx: RequestContext, campaign_id: str) -> Campaign:
    return records.get_visible(ctx, Campaign, OBJECT, campaign_id)  # type: ignore[no-any-return]


def list_campaigns(ctx: RequestContext, *, first: int | None = None, after: str | None = None,
                   **search: Any) -> Page[Campaign]:
    return records.list_records(ctx, OBJECT, first=first, after=after, **search)


# -- members ----------------------------------------------------------------------------------

def add_member(ctx: RequestContext, campaign_id: str, *, contact_id: str | None = None,
               lead_id: str | None = None, status: str | None = None,
               custom: Sequence[CustomValue] = ()) -> CampaignMember:
    """Put a contact or a lead (exactly one) on a campaign the caller may change; the member
    inherits the campaign's owner and team. Twice on one campaign: CONFLICT."""
    if (contact_id is None) == (lead_id is None):
        raise BadUserInput("give exactly one of contactId and leadId",
                           field="contactId" if contact_id is None else "leadId")
    campaign_id = validation.record_id("campaignId", campaign_id)
    campaign = records.get_visible(ctx, Campaign, OBJECT, campaign_id, WRITE)
    values: dict[str, Any] = {
        "campaign_id": campaign.id,
        "status": choice("status", status or "added", MEMBER_STATUSES, required=True),
    }
    if contact_id is not None:
        target = records.check_reference(ctx, "contact", contact_id, "contactId")
        values["contact_id"] = target.id
        duplicate = CampaignMember.contact_id == target.id
        label = f"contact {target.id}"
    else:
        target = records.check_reference(ctx, "lead", lead_id, "leadId")
        values["lead_id"] = target.id
        duplicate = CampaignMember.lead_id == target.id
        label = f"lead {target.id}"
    existing = ctx.session.scalar(select(CampaignMember.id).where(
        CampaignMember.campaign_id == campaign.id, duplicate))
    if existing is not None:
        raise Conflict(f"{label} is already a member of campaign {campaign.id}",
                       field="contactId" if contact_id is not None else "leadId")
    return records.create_record(  # type: ignore[no-any-return]
        ctx, MEMBER, values, custom=custom, owner=campaign.owner, team=campaign.team)


def update_member(ctx: RequestContext, member_id: str, *, status: str | None = None,
                  custom: Sequence[CustomValue] = ()) -> CampaignMember:
    values = {} if status is None else {"status": choice("status", status, MEMBER_STATUSES,
                                                         required=True)}
    return records.update_record(ctx, MEMBER, member_id, values,  # type: ignore[no-any-return]
                                 custom=custom)


def remove_member(ctx: RequestContext, member_id: str) -> str:
    return records.delete_record(ctx, MEMBER, member_id)


def list_members(ctx: RequestContext, campaign_id: str, *, first: int | None = None,
                 after: str | None = None) -> Page[CampaignMember]:
    campaign = get_campaign(ctx, campaign_id)
    return records.list_records(ctx, MEMBER, first=first, after=after,
                                where=[CampaignMember.campaign_id == campaign.id])


def audience(ctx: RequestContext, campaign_id: str) -> list[CampaignMember]:
    """The members the campaign may actually reach on its channel: contact members the caller
    can see whose marketing consent on that channel is in force (the newest consent event says
    granted). Lead members have no consent records, so they are never reachable."""
    campaign = get_campaign(ctx, campaign_id)
    members = list(ctx.session.scalars(
        records.visible_query(ctx, CampaignMember, MEMBER)
        .where(CampaignMember.campaign_id == campaign.id,
               CampaignMember.contact_id.is_not(None))
        .order_by(CampaignMember.id)))
    contacts = ctx.loader("contact")
    contacts.prime(m.contact_id for m in members)
    reachable = []
    for member in members:
        if member.contact_id is None or contacts.load(member.contact_id) is None:
            continue
        if ctx.guard.consents(member.contact_id, campaign.channel):
            reachable.append(member)
    ctx.audit("campaign.audience", object_type=OBJECT, object_ids=[campaign.id],
              fields=[f"channel:{campaign.channel}", f"members:{len(members)}",
                      f"reachable:{len(reachable)}"])
    return reachable

