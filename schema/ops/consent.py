"""Consent: an append-only history of events per contact, purpose and channel (granted or
withdrawn, when, where from, with sealed evidence). The newest event per (purpose, channel) is
the consent in force; the guard reads the same history for `read_consented` grants.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from schema.context import RequestContext
from schema.ops import records, validation
from schema.ops.records import Page
from security.errors import BadUserInput
from storage.crm_models import Consent
from storage.models import Contact, utcnow

OBJECT = "consent"
#: The channels consent is given on (a campaign's channel is one of them).
CHANNELS = ("email", "phone", "sms", "post", "event", "web", "print")
_PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,49}$")


def purpose(field: str, value: Any) -> str:
    text = validation.text(field, value, max_length=50, required=True) or ""
    if not _PURPOSE.match(text):
        raise BadUserInput(f"{field} must be a lower-case word such as marketing", field=field)
    return text


def channel(field: str, value: Any) -> str:
    text = validation.text(field, value, max_length=16, required=True) or ""
    if text not in CHANNELS:
        raise BadUserInput(f"{field} must be one of {', '.join(CHANNELS)}", field=field)
    return text


def record_consent(ctx: RequestContext, contact_id: str, *, purpose_: str, channel_: str,
                   granted: bool, source: str | None = None,
                   evidence: str | None = None) -> Consent:
    """Append one consent event for a contact the caller can see. The event belongs with the
    contact: it takes the contact's owner and team, so whoever works the contact sees its
    consent history."""
    if not isinstance(granted, bool):
        raise BadUserInput("granted must be true or false", field="granted")
    values: dict[str, Any] = {
        "purpose": purpose("purpose", purpose_),
        "channel": channel("channel", channel_),
        "granted": granted,
        "source": validation.text("source", source, max_length=100),
        "evidence": validation.text("evidence", evidence, max_length=10_000),
        "recorded_at": utcnow(),
    }
    contact: Contact = records.check_reference(ctx, "contact", contact_id, "contactId")
    values["contact_id"] = contact.id
    return records.create_record(  # type: ignore[no-any-return]
        ctx, OBJECT, values, owner=contact.owner, team=contact.team,
        audit_action="consent.granted" if granted else "consent.withdrawn")


def history(ctx: RequestContext, contact_id: str, *, first: int | None = None,
            after: str | None = None) -> Page[Consent]:
    """The consent events of a contact the caller can see, oldest first (ids are time-ordered)."""
    contact = records.get_visible(ctx, Contact, "contact", contact_id)
    return records.list_records(ctx, OBJECT, first=first, after=after,
                                where=[Consent.contact_id == contact.id])


@dataclass(frozen=True)
class ConsentState:
    purpose: str
    channel: str
    granted: bool
    recorded_at: dt.datetime
    source: str | None
    #: The event that decided the state.
    consent_id: str


def status(ctx: RequestContext, contact_id: str) -> list[ConsentState]:
    """The consent in force per (purpose, channel): the newest event wins. Reads the caller's
    visible consent events only, through the guard (fields they may not read are refused)."""
    contact = records.get_visible(ctx, Contact, "contact", contact_id)
    rows = list(ctx.session.scalars(
        records.visible_query(ctx, Consent, OBJECT).where(Consent.contact_id == contact.id)
        .order_by(Consent.recorded_at, Consent.id)))
    latest: dict[tuple[str, str], Consent] = {}
    for row in rows:
        latest[(row.purpose, row.channel)] = row
    reveal = ctx.guard.reveal
    return [ConsentState(purpose=reveal(OBJECT, row, "purpose"),
                         channel=reveal(OBJECT, row, "channel"),
                         granted=reveal(OBJECT, row, "granted"),
                         recorded_at=reveal(OBJECT, row, "recorded_at"),
                         source=reveal(OBJECT, row, "source"), consent_id=row.id)
            for row in sorted(latest.values(), key=lambda r: (r.purpose, r.channel))]

