"""Data-subject rights: export everything held on a person, erase a person.

Both need the object-level permission `subject` manage (privacy_officer by default) and are
audited (`subject.export`, `subject.erase`).

What "held on a person" means here: the contact itself (every field, custom fields too), and the
records about them: leads converted into them, cases and opportunities naming them, activities
linked to them, to those cases or to those leads, their campaign memberships (and those of the
converted leads), their consent history; plus who accessed their data (audit entries naming any
of those ids).

Erasure decision: records *about the person* (converted leads, cases, activities, consent
events, campaign memberships) are deleted with the contact and their subject keys destroyed,
since their plain columns (an activity's subject line, say) may describe the person too and a
row whose sealed fields no longer open is only a trap for readers. Opportunities are the
account's business (amounts, stages, forecasts): they stay, unlinked from the person. Every
erased id is recorded in `erasures`, so restoring an older backup erases them again; queued
webhook deliveries about those ids are deleted (and their keys destroyed) too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select

from schema.context import RequestContext
from schema.names import camel
from schema.ops import validation
from schema.ops.custom_values import definitions
from security.authz import MANAGE, READ, PolicySnapshot, Rule
from security.classification import OBJECTS, FieldClass
from security.errors import NotFound
from security.guard import Guard
from security.principal import Principal
from storage.crm_models import (
    Activity,
    CampaignMember,
    Case,
    Consent,
    Lead,
    Opportunity,
    WebhookDelivery,
)
from storage.models import AuditEvent, Contact, Erasure, SubjectKey, utcnow

SUBJECT = "subject"
#: The role the export's own guard grants (see `_export_guard`); no stored policy names it.
EXPORT_ROLE = "subject_export"
#: At most this many access-log entries in one export (the newest are kept).
ACCESS_LOG_LIMIT = 50_000


@dataclass
class Linked:
    """The records about one contact."""

    leads: list[Lead] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    opportunities: list[Opportunity] = field(default_factory=list)
    activities: list[Activity] = field(default_factory=list)
    members: list[CampaignMember] = field(default_factory=list)
    consents: list[Consent] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [r.id for rows in (self.leads, self.cases, self.opportunities, self.activities,
                                  self.members, self.consents) for r in rows]


def linked_records(ctx: RequestContext, contact_id: str) -> Linked:
    session = ctx.session
    found = Linked()
    found.leads = list(session.scalars(
        select(Lead).where(Lead.converted_contact_id == contact_id).order_by(Lead.id)))
    found.cases = list(session.scalars(
        select(Case).where(Case.contact_id == contact_id).order_by(Case.id)))
    found.opportunities = list(session.scalars(
        select(Opportunity).where(Opportunity.contact_id == contact_id).order_by(Opportunity.id)))
    lead_ids = [r.id for r in found.leads]
    case_ids = [r.id for r in found.cases]
    about = [Activity.contact_id == contact_id]
    if lead_ids:
        about.append(Activity.lead_id.in_(lead_ids))
    if case_ids:
        about.append(Activity.case_id.in_(case_ids))
    found.activities = list(session.scalars(
        select(Activity).where(or_(*about)).order_by(Activity.id)))
    member_of = [CampaignMember.contact_id == contact_id]
    if lead_ids:
        member_of.append(CampaignMember.lead_id.in_(lead_ids))
    found.members = list(session.scalars(
        select(CampaignMember).where(or_(*member_of)).order_by(CampaignMember.id)))
    found.consents = list(session.scalars(
        select(Consent).where(Consent.contact_id == contact_id)
        .order_by(Consent.recorded_at, Consent.id)))
    return found


def _subject_contact(ctx: RequestContext, contact_id: Any) -> Contact:
    ctx.guard.require(SUBJECT, MANAGE)
    contact_id = validation.record_id("contactId", contact_id)
    contact = ctx.session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"Contact {contact_id} not found")
    return contact


# -- export -----------------------------------------------------------------------------------

def _export_guard(ctx: RequestContext) -> Guard:
    """A guard that may read every field of every CRM object, for this export only.

    Why not grant privacy_officer read on contacts: that grant would hold for every query the
    privacy officer makes, and the role is meant to read no personal field outside a
    data-subject request. Why not a bypass in the guard: then there would be a second way to
    plaintext. Instead the export runs its reads through an ordinary `Guard` whose policy
    snapshot is built here, in memory, granting one role (`subject_export`) read on every
    class of every object and nothing else. Its principal is the caller (same id, kind and
    team, roles plus `subject_export`), so each field opened is decided, decrypted and audited
    by the one reveal path, under the caller's name and visibly for the export's purpose. The
    snapshot is never stored or shared; the caller must already hold `subject` manage.
    """
    policy = ctx.guard.policy
    rules = [Rule(EXPORT_ROLE, obj, cls.policy_name, READ) for obj in OBJECTS for cls in FieldClass]
    rules += [Rule(EXPORT_ROLE, obj, "@all", READ) for obj in OBJECTS]
    snapshot = PolicySnapshot(policy.version, rules,
                              {obj: policy.custom_fields(obj) for obj in OBJECTS})
    p = ctx.principal
    principal = Principal(id=p.id, name=p.name, roles=(*p.roles, EXPORT_ROLE), team=p.team,
                          kind=p.kind, session_id=p.session_id)
    return type(ctx.guard)(principal=principal, policy=snapshot, keyring=ctx.guard.keyring,
                           session=ctx.session, request_id=ctx.request_id)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def _record(ctx: RequestContext, guard: Guard, object_type: str, row: Any) -> dict[str, Any]:
    spec = guard.policy.spec(object_type)
    out: dict[str, Any] = {"id": row.id}
    for fspec in spec.fields:
        if not fspec.custom:
            out[camel(fspec.name)] = _jsonable(guard.reveal(object_type, row, fspec.name))
    custom = {key: _jsonable(guard.reveal(object_type, row, fspec.name))
              for key, fspec in definitions(ctx, object_type).items()}
    if custom:
        out["customFields"] = custom
    return out


def _access_log(ctx: RequestContext, ids: Sequence[str]) -> list[dict[str, Any]]:
    if not ids:
        return []
    naming = [AuditEvent.object_ids.contains(f'"{i}"', autoescape=True) for i in ids[:500]]
    rows = list(ctx.session.scalars(select(AuditEvent).where(or_(*naming))
                                    .order_by(AuditEvent.seq.desc()).limit(ACCESS_LOG_LIMIT)))
    return [{"seq": r.seq, "time": r.ts, "actor": r.actor, "roles": json.loads(r.roles),
             "action": r.action, "objectType": r.object_type,
             "objectIds": [i for i in json.loads(r.object_ids) if i in ids],
             "fields": json.loads(r.fields), "decision": r.decision, "reason": r.reason}
            for r in reversed(rows)]


def export_subject(ctx: RequestContext, contact_id: str) -> dict[str, Any]:
    """Everything held on the person, as JSON-ready data; audited as `subject.export` (and
    every field opened as a read under the export's guard)."""
    contact = _subject_contact(ctx, contact_id)
    linked = linked_records(ctx, contact.id)
    ids = [contact.id, *linked.ids()]
    access = _access_log(ctx, ids)  # before this export's own entries
    guard = _export_guard(ctx)
    guard.preload([contact, *linked.leads, *linked.cases, *linked.opportunities,
                   *linked.activities, *linked.members, *linked.consents])
    document: dict[str, Any] = {
        "format": "enclave-subject-export/1",
        "subjectId": contact.id,
        "exportedAt": utcnow().isoformat(),
        "exportedBy": ctx.principal.actor,
        "contact": _record(ctx, guard, "contact", contact),
        "leads": [_record(ctx, guard, "lead", r) for r in linked.leads],
        "opportunities": [_record(ctx, guard, "opportunity", r) for r in linked.opportunities],
        "cases": [_record(ctx, guard, "case", r) for r in linked.cases],
        "activities": [_record(ctx, guard, "activity", r) for r in linked.activities],
        "campaignMemberships": [_record(ctx, guard, "campaign_member", r)
                                for r in linked.members],
        "consents": [_record(ctx, guard, "consent", r) for r in linked.consents],
        "accessLog": access,
    }
    ctx.record(guard.audit_entries())
    ctx.audit("subject.export", object_type="contact", object_ids=ids,
              fields=[f"{name}:{len(document[name])}" for name in
                      ("leads", "opportunities", "cases", "activities", "campaignMemberships",
                       "consents", "accessLog")])
    return document


# -- erasure ----------------------------------------------------------------------------------

def shred(ctx: RequestContext, object_type: str, rows: Iterable[Any]) -> list[str]:
    """Delete records, destroy their subject keys (no copy of their sealed values opens again,
    backups included), clear their blind indexes, and record each as erased so a restore of an
    older backup erases them again. Queued webhook deliveries about them go too. Not audited
    here: the caller audits the whole operation."""
    ids: list[str] = []
    now = utcnow()
    for row in rows:
        for attribute in ("email_bidx", "phone_bidx"):
            if hasattr(row, attribute):
                setattr(row, attribute, None)
        ctx.session.delete(row)
        ctx.guard.keyring.destroy_subject_keys(ctx.session, row.id)
        ctx.session.merge(Erasure(subject_id=row.id, erased_at=now, by=ctx.principal.actor))
        ctx.emit("deleted", object_type, row.id)
        ids.append(row.id)
    if ids:
        for delivery in list(ctx.session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.object_id.in_(ids)))):
            ctx.session.delete(delivery)
            ctx.guard.keyring.destroy_subject_keys(ctx.session, delivery.id)
        ctx.session.flush()
    return ids


@dataclass(frozen=True)
class ErasureReport:
    contact_id: str
    #: Erased record ids by object type (the contact included).
    erased: dict[str, list[str]]
    #: Opportunities kept but no longer linked to the person.
    unlinked_opportunities: list[str]


def erase_subject(ctx: RequestContext, contact_id: str) -> ErasureReport:
    """Erase a person in one transaction: their records about them deleted and crypto-shredded
    (see the module docstring), the contact row deleted with its keys and blind indexes, an
    erasure recorded for backups, and an audited tombstone (`subject.erase`) naming the ids."""
    contact = _subject_contact(ctx, contact_id)
    linked = linked_records(ctx, contact.id)
    for opportunity in linked.opportunities:
        opportunity.contact_id = None
        opportunity.updated_at = utcnow()
    erased: dict[str, list[str]] = {}
    for object_type, rows in (("campaign_member", linked.members), ("consent", linked.consents),
                              ("activity", linked.activities), ("case", linked.cases),
                              ("lead", linked.leads)):
        done = shred(ctx, object_type, rows)
        if done:
            erased[object_type] = done
    erased["contact"] = shred(ctx, "contact", [contact])
    remaining = ctx.session.scalar(select(SubjectKey.subject_id).where(
        SubjectKey.subject_id.in_([i for ids in erased.values() for i in ids])).limit(1))
    if remaining is not None:  # cannot happen unless a writer raced us; never commit half
        raise RuntimeError("a subject key survived erasure")
    ctx.audit("subject.erase", object_type="contact",
              object_ids=[contact.id, *(i for t, ids in erased.items() if t != "contact"
                                        for i in ids)],
              fields=["subject_keys:destroyed", "blind_indexes:cleared",
                      *(f"{t}:{len(ids)}" for t, ids in erased.items()),
                      f"opportunities_unlinked:{len(linked.opportunities)}"])
    return ErasureReport(contact.id, erased, [o.id for o in linked.opportunities])
