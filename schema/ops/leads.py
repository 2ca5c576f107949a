"""Leads: people who might become customers, and their conversion into a contact, an account and
(optionally) an opportunity. Email and phone are sealed under the lead's own key and findable
by exact match through their blind indexes."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select

from schema.context import RequestContext
from schema.ops import accounts as account_ops
from schema.ops import contacts as contact_ops
from schema.ops import opportunities as opportunity_ops
from schema.ops import pipeline, records, search, validation
from schema.ops.custom_values import CustomValue
from security.authz import READ, WRITE, Decision
from security.errors import BadUserInput, Conflict, Forbidden
from storage.crm_models import Lead, Opportunity, PipelineStage
from storage.models import Account, Contact, Erasure, utcnow

OBJECT = "lead"
STATUSES = ("new", "working", "qualified", "unqualified", "converted")
#: Statuses a caller may set; `converted` is set by conversion only.
SETTABLE_STATUSES = STATUSES[:-1]


def _status(value: Any) -> str | None:
    if value is None:
        return None
    if value == "converted":
        raise BadUserInput("status converted is set by convertLead only", field="status")
    if value not in SETTABLE_STATUSES:
        raise BadUserInput(f"status must be one of {', '.join(SETTABLE_STATUSES)}",
                           field="status")
    return str(value)


def _score(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise BadUserInput("score must be a whole number from 0 to 100", field="score")
    return value


CHECKS: dict[str, Callable[[Any], Any]] = {
    "first_name": lambda v: validation.text("firstName", v, max_length=100),
    "last_name": lambda v: validation.text("lastName", v, max_length=100, required=True),
    "company": lambda v: validation.text("company", v, max_length=200),
    "email": lambda v: validation.email("email", v),
    "phone": lambda v: validation.phone("phone", v),
    "source": lambda v: validation.text("source", v, max_length=50),
    "status": _status,
    "score": _score,
}


def clean(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Lead values keyed by attribute, validated; failures name their field."""
    values = records.clean(OBJECT, CHECKS, data, required=("last_name",), creating=creating)
    if creating and values.get("status") is None:
        values["status"] = "new"
    return values


def list_leads(ctx: RequestContext, *, first: int | None = None, after: str | None = None,
               where: Iterable[ColumnElement[bool]] = (),
               filters: Sequence[search.FieldFilter] = (),
               sort: Sequence[search.SortKey] = ()) -> records.Page[Lead]:
    """A page of the leads the caller may see, filtered and sorted."""
    result: records.Page[Lead] = records.list_records(ctx, OBJECT, first=first, after=after,
                                                      where=where, filters=filters, sort=sort)
    ctx.loader("contact").prime(r.converted_contact_id for r in result.items)
    ctx.loader("account").prime(r.converted_account_id for r in result.items)
    return result


def get_lead(ctx: RequestContext, lead_id: str) -> Lead:
    return records.get_visible(ctx, Lead, OBJECT, lead_id)


def create_lead(ctx: RequestContext, data: Mapping[str, Any], *,
                custom: Sequence[CustomValue] = ()) -> Lead:
    records.authorise_write(ctx, OBJECT, data)
    lead: Lead = records.create_record(ctx, OBJECT, clean(data, creating=True), custom=custom)
    return lead


def update_lead(ctx: RequestContext, lead_id: str, changes: Mapping[str, Any], *,
                custom: Sequence[CustomValue] = ()) -> Lead:
    records.authorise_write(ctx, OBJECT, changes, record_id=lead_id)
    values = clean(changes, creating=False)
    if "last_name" in values and values["last_name"] is None:
        raise BadUserInput("lastName is required", field="lastName")
    if "status" in values and values["status"] is None:
        raise BadUserInput("status cannot be cleared", field="status")
    record = records.get_visible(ctx, Lead, OBJECT, lead_id, WRITE)
    if record.status == "converted" and "status" in values:
        raise Conflict(f"lead {record.id} is converted; its status stays converted",
                       field="status")
    lead: Lead = records.update_record(ctx, OBJECT, record.id, values, custom=custom,
                                       record=record)
    return lead


def delete_lead(ctx: RequestContext, lead_id: str) -> str:
    return records.delete_record(ctx, OBJECT, lead_id)


# -- conversion ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpportunityRequest:
    name: str
    amount: decimal.Decimal | None
    currency: str
    stage: PipelineStage
    expected_close: dt.date | None = None


@dataclass(frozen=True)
class Conversion:
    lead: Lead
    contact: Contact
    account: Account
    opportunity: Opportunity | None


_OPP = "createOpportunity"


def opportunity_request(ctx: RequestContext, data: Mapping[str, Any]) -> OpportunityRequest:
    """The `createOpportunity` part of a conversion, checked before anything is written (with
    the opportunities module's own rules; failures name `createOpportunity.<field>`)."""
    name = validation.text(f"{_OPP}.name", data.get("name"), max_length=200, required=True)
    amount = opportunity_ops.amount(f"{_OPP}.amount", data.get("amount"))
    currency = opportunity_ops.currency(f"{_OPP}.currency", data.get("currency") or "EUR")
    if data.get("stage_id") is not None:
        stage = pipeline.get_stage(ctx, data["stage_id"], field=f"{_OPP}.stageId")
    else:
        first = pipeline.first_open_stage(ctx)
        if first is None:
            raise BadUserInput(f"{_OPP}.stageId is required: the pipeline has no open stage",
                               field=f"{_OPP}.stageId")
        stage = first
    expected = data.get("expected_close")
    if expected is not None and not isinstance(expected, dt.date):
        try:
            expected = dt.date.fromisoformat(str(expected))
        except ValueError:
            raise BadUserInput(f"{_OPP}.expectedClose must be a date as YYYY-MM-DD",
                               field=f"{_OPP}.expectedClose") from None
    return OpportunityRequest(name=name or "", amount=amount, currency=currency, stage=stage,
                              expected_close=expected)


def _lead_values(ctx: RequestContext, lead: Lead) -> dict[str, Any]:
    """The lead's name, email and phone in the clear, for its contact. Conversion copies them,
    so the caller must be allowed to read each one it copies (plainly, not masked)."""
    names = ("first_name", "last_name", "email", "phone")
    denied = [n for n in names if getattr(lead, n) is not None
              and ctx.guard.decision(OBJECT, n, READ) is not Decision.ALLOW]
    if denied:
        reason = (f"converting copies lead.{', '.join(denied)}, which no policy lets "
                  f"{', '.join(ctx.principal.roles) or 'no role'} read")
        ctx.guard.refuse(OBJECT, (lead.id,), denied, reason)
        raise Forbidden(reason, fields=denied)
    ctx.guard.preload([lead])
    return {n: ctx.guard.reveal(OBJECT, lead, n) for n in names}


def convert_lead(ctx: RequestContext, lead_id: str, *, account_id: str | None = None,
                 account_name: str | None = None, contact_id: str | None = None,
                 opportunity: Mapping[str, Any] | None = None) -> Conversion:
    """Turn a lead into a contact (new, or `contact_id`), an account (new named `account_name`
    or the lead's company, or `account_id`) and optionally an opportunity at the pipeline's
    open stage. Run it inside one savepoint: any failure leaves nothing written."""
    lead = records.get_visible(ctx, Lead, OBJECT, lead_id, WRITE)
    if lead.status == "converted" or lead.converted_at is not None:
        raise Conflict(f"lead {lead.id} was already converted", field="id")
    if account_id is not None and account_name is not None:
        raise BadUserInput("give accountId or accountName, not both", field="accountName")
    name = validation.text("accountName", account_name, max_length=200)
    wanted = opportunity_request(ctx, opportunity) if opportunity is not None else None

    account: Account | None = records.check_reference(ctx, "account", account_id, "accountId")
    contact: Contact | None = records.check_reference(ctx, "contact", contact_id, "contactId")
    if account is None and (name or lead.company) is None:
        raise BadUserInput("accountName is required: the lead has no company and no accountId "
                           "was given", field="accountName")

    if account is None:
        account = account_ops.create_account(ctx, {"name": name or lead.company})
    if contact is None:
        values = _lead_values(ctx, lead)
        contact = contact_ops.create_contact(ctx, {
            **{k: v for k, v in values.items() if v is not None}, "account_id": account.id})
    opp: Opportunity | None = None
    if wanted is not None:  # at its stage's probability, its first move recorded
        opp = opportunity_ops.create_opportunity(ctx, {
            "name": wanted.name, "account_id": account.id, "contact_id": contact.id,
            "amount": wanted.amount, "currency": wanted.currency, "stage_id": wanted.stage.id,
            "expected_close": wanted.expected_close})
    records.update_record(ctx, OBJECT, lead.id, {
        "status": "converted", "converted_at": utcnow(), "converted_contact_id": contact.id,
        "converted_account_id": account.id,
        "converted_opportunity_id": opp.id if opp is not None else None,
    }, record=lead, audit_action="lead.convert")
    ctx.session.flush()
    return Conversion(lead=lead, contact=contact, account=account, opportunity=opp)


# -- exact search across people -----------------------------------------------------------------

MAX_FOUND = 100


def find(ctx: RequestContext, object_type: str, *, email: str | None,
         phone: str | None) -> list[Any]:
    """Records of `object_type` (contact or lead) the caller may see whose blind index matches
    `email` and/or `phone` exactly (after the index's normalisation). Searching a field the
    caller may not read in the clear is refused."""
    email = validation.email("email", email)
    phone = validation.phone("phone", phone)
    if email is None and phone is None:
        raise BadUserInput("give email or phone to search for", field="email")
    records.check_searchable(ctx, object_type, [n for n, v in (("email", email),
                                                               ("phone", phone)) if v])
    model = records.model_of(object_type)
    where = [~model.id.in_(select(Erasure.subject_id))]
    if email:
        where.append(model.email_bidx == ctx.guard.search_index("email", email))
    if phone:
        where.append(model.phone_bidx == ctx.guard.search_index("phone", phone))
    page = records.list_records(ctx, object_type, first=MAX_FOUND, after=None, where=where)
    # Who looked a person up by email or phone, and whom it found, is on the record even
    # when the caller then reads nothing of them.
    ctx.audit(f"{object_type}.search", object_type=object_type,
              object_ids=[r.id for r in page.items],
              fields=[n for n, v in (("email", email), ("phone", phone)) if v])
    return list(page.items)
