"""The CRM objects beyond accounts and contacts: leads, the pipeline and opportunities,
activities, cases and SLAs, campaigns and consent, custom field definitions, webhooks and
retention rules.

Sealed columns hold ciphertext only (see `storage.sealed`); blind indexes sit beside the fields
that are searchable by exact match. Amounts are `Numeric`, never floats.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from storage.base import Base, RecordMixin, utcnow
from storage.columns import UTCDateTime
from storage.sealed import Sealed, SealedColumn

_ID = String(36)
Money = Numeric(18, 2)


def _fk(target: str) -> Any:
    return ForeignKey(target, ondelete="SET NULL")


class Lead(RecordMixin, Base):
    __tablename__ = "leads"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    company: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[Sealed | None] = mapped_column(SealedColumn)
    email_bidx: Mapped[str | None] = mapped_column(String(64), index=True)
    phone: Mapped[Sealed | None] = mapped_column(SealedColumn)
    phone_bidx: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), index=True, default="new")
    score: Mapped[int | None] = mapped_column(Integer)
    converted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    converted_contact_id: Mapped[str | None] = mapped_column(_ID, _fk("contacts.id"))
    converted_account_id: Mapped[str | None] = mapped_column(_ID, _fk("accounts.id"))
    converted_opportunity_id: Mapped[str | None] = mapped_column(_ID, _fk("opportunities.id"))


class PipelineStage(Base):
    """One stage of the sales pipeline (configured by admin)."""

    __tablename__ = "pipeline_stages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer)
    probability: Mapped[int] = mapped_column(Integer)
    is_won: Mapped[bool] = mapped_column(Boolean, default=False)
    is_lost: Mapped[bool] = mapped_column(Boolean, default=False)


class Opportunity(RecordMixin, Base):
    __tablename__ = "opportunities"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str | None] = mapped_column(_ID, _fk("accounts.id"), index=True)
    contact_id: Mapped[str | None] = mapped_column(_ID, _fk("contacts.id"), index=True)
    amount: Mapped[decimal.Decimal | None] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    stage_id: Mapped[str] = mapped_column(String(40), ForeignKey("pipeline_stages.id"), index=True)
    probability: Mapped[int] = mapped_column(Integer)
    expected_close: Mapped[dt.date | None] = mapped_column(Date, index=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    description: Mapped[Sealed | None] = mapped_column(SealedColumn)


class StageChange(Base):
    """An opportunity's move from one stage to another: who and when."""

    __tablename__ = "opportunity_stage_changes"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    opportunity_id: Mapped[str] = mapped_column(
        _ID, ForeignKey("opportunities.id", ondelete="CASCADE"), index=True)
    from_stage: Mapped[str | None] = mapped_column(String(40))
    to_stage: Mapped[str] = mapped_column(String(40))
    changed_by: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Activity(RecordMixin, Base):
    """A task, call, meeting, note or logged email, linked to the records it concerns."""

    __tablename__ = "activities"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[Sealed | None] = mapped_column(SealedColumn)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    account_id: Mapped[str | None] = mapped_column(_ID, _fk("accounts.id"), index=True)
    contact_id: Mapped[str | None] = mapped_column(_ID, _fk("contacts.id"), index=True)
    lead_id: Mapped[str | None] = mapped_column(_ID, _fk("leads.id"), index=True)
    opportunity_id: Mapped[str | None] = mapped_column(_ID, _fk("opportunities.id"), index=True)
    case_id: Mapped[str | None] = mapped_column(_ID, _fk("cases.id"), index=True)


class SlaPolicy(Base):
    """Targets for one case priority, in minutes."""

    __tablename__ = "sla_policies"

    priority: Mapped[str] = mapped_column(String(16), primary_key=True)
    first_response_minutes: Mapped[int] = mapped_column(Integer)
    resolution_minutes: Mapped[int] = mapped_column(Integer)


class Case(RecordMixin, Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    description: Mapped[Sealed | None] = mapped_column(SealedColumn)
    contact_id: Mapped[str | None] = mapped_column(_ID, _fk("contacts.id"), index=True)
    account_id: Mapped[str | None] = mapped_column(_ID, _fk("accounts.id"), index=True)
    priority: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True, default="open")
    assignee: Mapped[str | None] = mapped_column(String(100), index=True)
    first_response_due: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolution_due: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    first_response_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    @property
    def response_breached(self) -> bool:
        return _breached(self.first_response_due, self.first_response_at)

    @property
    def resolution_breached(self) -> bool:
        return _breached(self.resolution_due, self.resolved_at)


def _breached(due: dt.datetime | None, done: dt.datetime | None) -> bool:
    """Late: done after the target, or still not done once the target has passed."""
    if due is None:
        return False
    return (done or utcnow()) > due


class Campaign(RecordMixin, Base):
    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="planned")
    budget: Mapped[decimal.Decimal | None] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    starts_on: Mapped[dt.date | None] = mapped_column(Date)
    ends_on: Mapped[dt.date | None] = mapped_column(Date)


class CampaignMember(RecordMixin, Base):
    __tablename__ = "campaign_members"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(
        _ID, ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[str | None] = mapped_column(
        _ID, ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    lead_id: Mapped[str | None] = mapped_column(
        _ID, ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="added")

    __table_args__ = (
        Index("uq_campaign_contact", "campaign_id", "contact_id", unique=True),
        Index("uq_campaign_lead", "campaign_id", "lead_id", unique=True),
    )


class Consent(RecordMixin, Base):
    """One consent event: a contact granted or withdrew a purpose on a channel. The newest
    event per (contact, purpose, channel) is the consent in force."""

    __tablename__ = "consents"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    contact_id: Mapped[str] = mapped_column(
        _ID, ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(50))
    channel: Mapped[str] = mapped_column(String(16))
    granted: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str | None] = mapped_column(String(100))
    evidence: Mapped[Sealed | None] = mapped_column(SealedColumn)

    __table_args__ = (Index("ix_consent_current", "contact_id", "purpose", "channel",
                            "recorded_at"),)


class CustomFieldDef(Base):
    """A field an administrator added to an object; its classification decides encryption and
    default policy."""

    __tablename__ = "custom_field_defs"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    object_type: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(200))
    value_type: Mapped[str] = mapped_column(String(16))
    classification: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("uq_custom_field", "object_type", "key", unique=True),)


class Webhook(Base):
    """An endpoint an administrator registered for event types, on behalf of an API client
    (whose roles decide what the payloads may carry)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), ForeignKey("api_clients.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSON)
    #: The HMAC signing secret, sealed under the webhook's own subject key.
    secret: Mapped[Sealed] = mapped_column(SealedColumn)
    key_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event to deliver to one webhook: its sealed payload and every attempt's outcome."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(
        _ID, ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(_ID)
    #: The filtered JSON payload, sealed under the delivery's own subject key.
    payload: Mapped[Sealed | None] = mapped_column(SealedColumn)
    key_version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RetentionRule(Base):
    """Delete (erase) records of an object type once they are older than `days` and match
    `condition` (e.g. leads never converted)."""

    __tablename__ = "retention_rules"

    object_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    days: Mapped[int] = mapped_column(Integer)
    condition: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
