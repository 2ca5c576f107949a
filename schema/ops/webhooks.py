"""Webhooks: an administrator (object-level `webhook` manage) registers an endpoint on behalf of
an API client, for event types such as `contact.created`, `lead.updated`, `case.deleted`.

Record events reach `queue_events` (an event sink of `schema.context`) before the unit of work
commits. For each enabled webhook that wants the event, the payload is built AS THE WEBHOOK'S
OWNING CLIENT: a guard for that client's roles and team reads every field through `reveal`, so it
holds only what the client may read (masked fields masked, refused fields absent) and nothing at
all when the record lies outside the client's record rules; those reads are audited under the
client's name. A deleted event carries only the id, and goes only to clients with some read rule
on the object type. Payloads and signing secrets are sealed at rest (security.row_seal);
`api.webhook_delivery` sends them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from schema.context import EVENT_SINKS, WEBHOOKS_ACTIVE, RecordEvent, RequestContext
from schema.names import camel
from schema.ops import validation
from security import row_seal
from security.authz import MANAGE, READ, Decision
from security.classification import OBJECTS
from security.errors import BadUserInput, Conflict, NotFound
from security.guard import FieldForbidden, Guard
from security.principal import Principal
from storage.crm_models import Webhook, WebhookDelivery
from storage.ids import new_id
from storage.models import MODELS, ApiClient, utcnow

OBJECT = "webhook"
EVENTS = ("created", "updated", "deleted")
EVENT_TYPES = tuple(f"{obj}.{event}" for obj in OBJECTS for event in EVENTS)
MAX_URL = 2000
MAX_LIST = 100


@dataclass(frozen=True)
class Registered:
    webhook: Webhook
    #: The signing secret, shown once.
    secret: str


def _url(value: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise BadUserInput(f"url must be an http(s) URL of at most {MAX_URL} characters",
                           field="url")
    parts = validation.http_url_parts("url", value.strip())
    if parts.username or parts.password:
        raise BadUserInput("url must not carry credentials", field="url")
    return value.strip()


def _event_types(values: Sequence[str]) -> list[str]:
    if not values:
        raise BadUserInput("eventTypes must name at least one event type", field="eventTypes")
    unknown = [v for v in values if v not in EVENT_TYPES]
    if unknown:
        raise BadUserInput(f"unknown event type(s) {', '.join(unknown[:5])}: use "
                           "<object>.created|updated|deleted, e.g. contact.created",
                           field="eventTypes")
    return list(dict.fromkeys(values))


def register(ctx: RequestContext, *, client_id: str, url: str,
             event_types: Sequence[str]) -> Registered:
    ctx.guard.require(OBJECT, MANAGE)
    url = _url(url)
    wanted = _event_types(event_types)
    client = ctx.session.get(ApiClient, client_id) if isinstance(client_id, str) else None
    if client is None or client.revoked_at is not None:
        raise BadUserInput("clientId is not an active API client", field="clientId")
    secret = "whsec_" + secrets.token_urlsafe(32)
    webhook = Webhook(id=new_id(), client_id=client.id, url=url, event_types=wanted)
    webhook.secret, webhook.key_version = row_seal.seal_value(
        ctx.guard.keyring, ctx.session, row_seal.SECRET, webhook.id, secret)
    ctx.session.add(webhook)
    ctx.session.flush()
    ctx.session.info.pop(WEBHOOKS_ACTIVE, None)  # this unit's own writes may now have one
    ctx.audit("webhook.register", object_type=OBJECT, object_ids=[webhook.id],
              fields=[f"client:{client.id}", *(f"event:{e}" for e in wanted)])
    return Registered(webhook, secret)


def list_webhooks(ctx: RequestContext) -> list[Webhook]:
    ctx.guard.require(OBJECT, MANAGE)
    return list(ctx.session.scalars(select(Webhook).order_by(Webhook.created_at, Webhook.id)))


def _get(ctx: RequestContext, webhook_id: str) -> Webhook:
    webhook = ctx.session.get(Webhook, webhook_id) if isinstance(webhook_id, str) else None
    if webhook is None:
        raise NotFound(f"Webhook {webhook_id} not found")
    return webhook


def disable(ctx: RequestContext, webhook_id: str) -> Webhook:
    """Stop queueing events for the webhook; deliveries still pending are not sent."""
    ctx.guard.require(OBJECT, MANAGE)
    webhook = _get(ctx, webhook_id)
    if webhook.disabled_at is not None:
        raise Conflict(f"Webhook {webhook_id} is already disabled")
    webhook.disabled_at = utcnow()
    ctx.session.flush()
    ctx.audit("webhook.disable", object_type=OBJECT, object_ids=[webhook.id])
    return webhook


def deliveries(ctx: RequestContext, webhook_id: str, *,
               limit: int = MAX_LIST) -> list[WebhookDelivery]:
    """The newest deliveries of a webhook, with each one's attempts and last outcome (never the
    payload)."""
    ctx.guard.require(OBJECT, MANAGE)
    webhook = _get(ctx, webhook_id)
    if not 1 <= limit <= MAX_LIST:
        raise BadUserInput(f"first must be between 1 and {MAX_LIST}", field="first")
    return list(ctx.session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit)))


# -- events → deliveries ----------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def record_payload(guard: Guard, object_type: str, record: Any) -> dict[str, Any]:
    """Every field of `record` that `guard`'s principal may read, through the guard: masked
    values masked, refused ones left out. Custom fields under `customFields`."""
    data: dict[str, Any] = {"id": record.id}
    custom: dict[str, Any] = {}
    for fspec in guard.policy.spec(object_type).fields:
        if guard.decision(object_type, fspec.name) is Decision.DENY:
            continue
        try:
            value = guard.reveal(object_type, record, fspec.name)
        except FieldForbidden:  # consent-bound, and this person has not consented
            continue
        if fspec.custom:
            custom[fspec.attr] = _json_value(value)
        else:
            data[camel(fspec.name)] = _json_value(value)
    if custom:
        data["customFields"] = custom
    return data


def _client_guard(ctx: RequestContext, client: ApiClient) -> Guard:
    principal = Principal(id=client.id, name=client.name, roles=tuple(client.roles),
                          team=client.team, kind="client")
    return Guard(principal=principal, policy=ctx.guard.policy, keyring=ctx.guard.keyring,
                 session=ctx.session, request_id=ctx.request_id)


def queue_events(ctx: RequestContext, events: list[RecordEvent]) -> None:
    """The event sink: queue a filtered, sealed delivery per (event, interested webhook)."""
    if ctx.session.info.get(WEBHOOKS_ACTIVE) is False:
        return  # none was active when the unit began (nor registered in it since)
    hooks = list(ctx.session.scalars(
        select(Webhook).where(Webhook.disabled_at.is_(None)).order_by(Webhook.id)))
    if not hooks:
        return
    clients = {c.id: c for c in ctx.session.scalars(
        select(ApiClient).where(ApiClient.id.in_({h.client_id for h in hooks}),
                                ApiClient.revoked_at.is_(None)))}
    guards: dict[str, Guard] = {}
    queued: list[str] = []
    now = utcnow()
    for event in dict.fromkeys(events):  # the same event twice in one unit is sent once
        event_type = f"{event.object_type}.{event.event}"
        record = None
        if event.event != "deleted":
            record = ctx.session.get(MODELS[event.object_type], event.record_id)
            if record is None:  # gone again in the same unit of work
                continue
        for hook in hooks:
            client = clients.get(hook.client_id)
            if client is None or event_type not in hook.event_types:
                continue
            guard = guards.get(client.id)
            if guard is None:
                guard = guards[client.id] = _client_guard(ctx, client)
            if record is None:
                if not guard.scopes(event.object_type, READ):
                    continue
                data: dict[str, Any] = {"id": event.record_id}
            else:
                if not guard.in_scope(event.object_type, record, READ):
                    continue
                guard.preload([record])
                data = record_payload(guard, event.object_type, record)
            delivery = WebhookDelivery(id=new_id(), webhook_id=hook.id, event=event_type,
                                       object_type=event.object_type, object_id=event.record_id,
                                       status="pending", attempts=0, next_attempt_at=now,
                                       created_at=now)
            body = json.dumps({"id": delivery.id, "event": event_type,
                               "occurredAt": now.isoformat(), "data": data},
                              sort_keys=True, separators=(",", ":"))
            delivery.payload, delivery.key_version = row_seal.seal_value(
                ctx.guard.keyring, ctx.session, row_seal.PAYLOAD, delivery.id, body)
            ctx.session.add(delivery)
            queued.append(delivery.id)
    # What each owning client's payloads read, audited under that client's name.
    for guard in guards.values():
        ctx.record(guard.audit_entries())
    if queued:
        ctx.session.flush()
        ctx.audit("webhook.queue", object_type=OBJECT, object_ids=queued,
                  fields=sorted({f"{e.object_type}.{e.event}" for e in events}))


if queue_events not in EVENT_SINKS:
    EVENT_SINKS.append(queue_events)
