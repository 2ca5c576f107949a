"""Sending queued webhook deliveries: the appliance's only outbound calls, and only to URLs an
administrator registered.

Each delivery is a POST of the sealed-at-rest JSON payload with three headers:

    Enclave-Webhook-Id:        the delivery's id (the same on every retry: an idempotency key)
    Enclave-Webhook-Timestamp: seconds since the epoch when this attempt was signed
    Enclave-Webhook-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

A 2xx answer marks the delivery delivered; once delivered or failed, its sealed payload is
dropped and its subject key destroyed. Anything else (another status, a redirect — never
followed —, a timeout, a refused connection) is logged on the delivery row (status code, error)
and retried after 30 s × 2^(attempts-1), capped at six hours; after `MAX_ATTEMPTS` the delivery
is failed. Every outcome is audited. Deliveries are claimed with a lease before they are sent, so
two workers (the CLI's `enclave webhooks deliver` and a server task) do not send one twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from schema.context import unit_of_work
from security import row_seal
from security.fieldcrypt import FieldDecryptionError
from security.principal import Principal
from storage.crm_models import Webhook, WebhookDelivery
from storage.models import utcnow

log = logging.getLogger("enclave.webhooks")

MAX_ATTEMPTS = 8
BASE_DELAY = dt.timedelta(seconds=30)
MAX_DELAY = dt.timedelta(hours=6)
#: How long a claimed delivery is left alone by other workers while it is being sent.
LEASE = dt.timedelta(seconds=120)
TIMEOUT_SECONDS = 5.0
MAX_ERROR = 300

WORKER = Principal(id="webhook-delivery", name="webhook delivery", roles=(), kind="system")


def signature(secret: str, timestamp: str, body: str) -> str:
    """The `Enclave-Webhook-Signature` header value for one attempt."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def backoff(attempts: int) -> dt.timedelta:
    """The wait before the next try, after `attempts` failed tries."""
    return min(BASE_DELAY * (2 ** max(0, attempts - 1)), MAX_DELAY)


@dataclass(frozen=True)
class DeliveryRun:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.failed


@dataclass(frozen=True)
class _Outgoing:
    delivery_id: str
    url: str
    secret: str
    body: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook goes to the registered URL only: a redirect is an answer, not a new address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _post(url: str, headers: dict[str, str], body: bytes,
          timeout: float) -> tuple[int | None, str | None]:
    """(status code, error) of one POST; never raises for network trouble."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code), f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"[:MAX_ERROR]


def _claim(appliance: Any, now: dt.datetime, limit: int) -> tuple[list[_Outgoing], list[str]]:
    """Due deliveries of enabled webhooks, leased to this worker, with secret and payload
    opened; and the ids of those that no longer open (failed at once)."""
    outgoing: list[_Outgoing] = []
    broken: list[str] = []
    with unit_of_work(appliance, WORKER) as ctx:
        rows = list(ctx.session.execute(
            select(WebhookDelivery, Webhook)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                   Webhook.disabled_at.is_(None))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit).with_for_update(skip_locked=True, of=WebhookDelivery)))
        keyring = appliance.keyring
        for delivery, webhook in rows:
            delivery.next_attempt_at = now + LEASE
            try:
                secret = row_seal.open_value(keyring, ctx.session, row_seal.SECRET,
                                                 webhook.id, webhook.secret)
                body = (row_seal.open_value(keyring, ctx.session, row_seal.PAYLOAD,
                                                delivery.id, delivery.payload)
                        if delivery.payload is not None else "{}")
            except FieldDecryptionError:
                delivery.status = "failed"
                delivery.last_error = "the sealed secret or payload does not open"
                broken.append(delivery.id)
                continue
            outgoing.append(_Outgoing(delivery.id, webhook.url, secret, body))
        if broken:
            ctx.audit("webhook.deliver", object_type="webhook", object_ids=broken,
                      fields=["outcome:failed", "reason:undecryptable"], reason="sealed webhook secret or payload failed authentication")
    return outgoing, broken


def _record(appliance: Any, item: _Outgoing, code: int | None, error: str | None,
            now: dt.datetime) -> str:
    with unit_of_work(appliance, WORKER) as ctx:
        delivery = ctx.session.get(WebhookDelivery, item.delivery_id)
        if delivery is None:  # its webhook was deleted meanwhile
            return "failed"
        delivery.attempts += 1
        delivery.last_status_code = code
        ok = code is not None and 200 <= code < 300
        delivery.last_error = None if ok else (error or f"HTTP {code}")
        if ok:
            delivery.status, delivery.delivered_at = "delivered", now
            outcome = "delivered"
        elif delivery.attempts >= MAX_ATTEMPTS:
            delivery.status = "failed"
            outcome = "failed"
        else:
            delivery.next_attempt_at = now + backoff(delivery.attempts)
            outcome = "retrying"
        if outcome != "retrying":  # nothing more to send: the payload's copy is shredded
            delivery.payload = None
            ctx.guard.keyring.destroy_subject_keys(ctx.session, delivery.id)
        ctx.audit("webhook.deliver", object_type="webhook", object_ids=[delivery.id],
                  fields=[f"webhook:{delivery.webhook_id}", f"event:{delivery.event}",
                          f"attempt:{delivery.attempts}", f"status:{code or '-'}",
                          f"outcome:{outcome}"],
                  reason=None if ok else delivery.last_error)
    return outcome


def deliver_due(appliance: Any, *, now: dt.datetime | None = None, limit: int = 100,
                timeout: float = TIMEOUT_SECONDS) -> DeliveryRun:
    """One pass: send every due delivery (up to `limit`) once."""
    started = now or utcnow()
    outgoing, broken = _claim(appliance, started, limit)
    counts = {"delivered": 0, "retrying": 0, "failed": len(broken)}
    for item in outgoing:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Enclave-Webhook/1",
            "Enclave-Webhook-Id": item.delivery_id,
            "Enclave-Webhook-Timestamp": timestamp,
            "Enclave-Webhook-Signature": signature(item.secret, timestamp, item.body),
        }
        code, error = _post(item.url, headers, item.body.encode(), timeout)
        counts[_record(appliance, item, code, error, now or utcnow())] += 1
    return DeliveryRun(**counts)


def deliver_every(appliance: Any, seconds: float, *, stop: threading.Event | None = None,
                  limit: int = 100) -> DeliveryRun:
    """Deliver what is due every `seconds` until `stop` is set (by SIGTERM or SIGINT when it
    is not given); returns the totals. A pass that fails (the database restarting, say) is
    logged and the next one tried, so a passing outage does not end the service; a full pass
    (`limit` deliveries) is followed at once by another, so a backlog drains."""
    if stop is None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    totals = {"delivered": 0, "retrying": 0, "failed": 0}
    while not stop.is_set():
        try:
            run = deliver_due(appliance, limit=limit)
        except Exception:  # noqa: BLE001 - logged; the next pass tries again
            log.exception("webhook delivery pass failed; trying again in %g s", seconds)
            stop.wait(seconds)
            continue
        totals["delivered"] += run.delivered
        totals["retrying"] += run.retrying
        totals["failed"] += run.failed
        if run.attempted < limit:
            stop.wait(seconds)
    return DeliveryRun(**totals)
