"""GraphQL for webhooks (see schema/ops/webhooks.py). Admin only (object-level `webhook`
manage). The signing secret is returned once, by `registerWebhook`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import strawberry
from strawberry.types import Info

from schema.context import RequestContext
from schema.ops import webhooks as ops

Ctx = Info[RequestContext, Any]


@strawberry.type
class Webhook:
    id: strawberry.ID
    client_id: str
    url: str
    event_types: list[str]
    created_at: dt.datetime
    disabled_at: dt.datetime | None


@strawberry.type
class RegisteredWebhook:
    webhook: Webhook
    secret: str = strawberry.field(description="The HMAC-SHA256 signing secret; shown once.")


@strawberry.type
class WebhookDelivery:
    id: strawberry.ID
    event: str
    object_type: str
    object_id: str
    status: str
    attempts: int
    next_attempt_at: dt.datetime
    last_status_code: int | None
    last_error: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None


def _webhook(row: Any) -> Webhook:
    return Webhook(id=strawberry.ID(row.id), client_id=row.client_id, url=row.url,
                   event_types=list(row.event_types), created_at=row.created_at,
                   disabled_at=row.disabled_at)


def _delivery(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=strawberry.ID(row.id), event=row.event, object_type=row.object_type,
        object_id=row.object_id, status=row.status, attempts=row.attempts,
        next_attempt_at=row.next_attempt_at, last_status_code=row.last_status_code,
        last_error=row.last_error, created_at=row.created_at, delivered_at=row.delivered_at)


@strawberry.type
class Queries:
    @strawberry.field
    def webhooks(self, info: Ctx) -> list[Webhook] | None:
        return [_webhook(row) for row in ops.list_webhooks(info.context)]

    @strawberry.field(description="A webhook's newest deliveries (never their payloads).")
    def webhook_deliveries(self, info: Ctx, webhook_id: strawberry.ID,
                           first: int | None = 50) -> list[WebhookDelivery] | None:
        rows = ops.deliveries(info.context, str(webhook_id), limit=50 if first is None else first)
        return [_delivery(row) for row in rows]


@strawberry.type
class Mutations:
    @strawberry.mutation(description="Register an endpoint for event types such as "
                         "contact.created; payloads carry only what the client may read.")
    def register_webhook(self, info: Ctx, client_id: str, url: str,
                         event_types: list[str]) -> RegisteredWebhook | None:
        with info.context.savepoint():
            registered = ops.register(info.context, client_id=client_id, url=url,
                                      event_types=event_types)
        return RegisteredWebhook(webhook=_webhook(registered.webhook), secret=registered.secret)

    @strawberry.mutation
    def disable_webhook(self, info: Ctx, id: strawberry.ID) -> Webhook | None:
        with info.context.savepoint():
            return _webhook(ops.disable(info.context, str(id)))
