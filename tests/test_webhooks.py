"""Webhooks: registration (admin only, secret shown once and sealed), payloads filtered by the
owning client's roles and record rules, signed deliveries to a real HTTP receiver on loopback,
retries with backoff, deleted events with only the id, re-encryption of secrets and payloads.

Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import new_client, operator
from sqlalchemy import event, select

from api import webhook_delivery
from schema.context import unit_of_work
from schema.ops import contacts as contact_ops
from schema.ops import keys as key_ops
from schema.ops import webhooks as webhook_ops
from schema.runtime import Appliance
from security.principal import Principal
from storage.crm_models import Webhook, WebhookDelivery
from storage.models import AuditEvent

TEAM = "east"

REGISTER = """
mutation($c: String!, $u: String!, $e: [String!]!) {
  registerWebhook(clientId: $c, url: $u, eventTypes: $e) { secret webhook { id eventTypes } }
}"""


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on loopback (port 0) answering with the queued statuses (200 when
    none are left)."""
    box = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            box.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = box.statuses.pop(0) if box.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/enclave"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box
    server.shutdown()
    server.server_close()


def _register(appliance: Appliance, client_id: str, url: str, events: list[str]) -> tuple[str, str]:
    with unit_of_work(appliance, operator("admin")) as ctx:
        registered = webhook_ops.register(ctx, client_id=client_id, url=url, event_types=events)
        return registered.webhook.id, registered.secret


def _manager() -> Principal:
    return Principal(id="mgr", name="mgr", roles=("sales_manager",), team=TEAM, kind="operator")


def _create_contact(appliance: Appliance, principal: Principal | None = None) -> str:
    with unit_of_work(appliance, principal or _manager()) as ctx:
        return str(contact_ops.create_contact(ctx, {
            "first_name": "Lorna", "last_name": "Merriweather", "email": "lorna@example.com",
            "phone": "+1 555 0123", "address": "9 Quiet Close", "national_id": "NI-LM-42"}).id)


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the signature over timestamp and body."""
    timestamp = headers["enclave-webhook-timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["enclave-webhook-signature"], f"v1={expected}")


def test_event_arrives_signed_with_only_what_the_owning_client_may_read(
        appliance: Appliance, receiver: Receiver) -> None:
    support_client, _ = new_client(appliance, "support_agent", name="helpdesk")
    _, secret = _register(appliance, support_client, receiver.url, ["contact.created"])
    contact_id = _create_contact(appliance)
    run = webhook_delivery.deliver_due(appliance)
    assert run.delivered == 1 and len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert _verify(secret, headers, body)
    # A tampered body, or a signature made with another secret, does not verify.
    assert not _verify(secret, headers, body.replace(b"Lorna", b"Lorne"))
    assert not _verify("whsec_someone-else", headers, body)
    payload = json.loads(body)
    assert payload["event"] == "contact.created"
    assert headers["enclave-webhook-id"] == payload["id"]
    data = payload["data"]
    assert data["id"] == contact_id
    assert data["email"] == "lorna@example.com" and data["phone"] == "+1 555 0123"
    assert data["lastName"] == "Merriweather"
    assert "address" not in data and "nationalId" not in data and "owner" not in data
    assert b"Quiet Close" not in body and b"NI-LM-42" not in body
    with appliance.sessions() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.status == "delivered" and delivery.attempts == 1
        assert delivery.last_status_code == 200
        assert delivery.payload is None  # shredded once delivered
        # The payload's reads are audited under the owning client's name.
        reads = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.read",
            AuditEvent.actor == f"client:{support_client}")).all()
        assert reads and "email" in json.loads(reads[0].fields)
        assert "address" not in json.loads(reads[0].fields)
        # In the creating unit's order: the change, what its payload read, the queueing.
        created = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "contact.create")).one()
        unit = session.scalars(select(AuditEvent).where(
            AuditEvent.seq >= created.seq).order_by(AuditEvent.seq)).all()
        assert [(e.action, e.actor == f"client:{support_client}") for e in unit][:3] == [
            ("contact.create", False), ("contact.read", True), ("webhook.queue", False)]
        outcomes = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "webhook.deliver")).all()
        assert any("outcome:delivered" in json.loads(o.fields) for o in outcomes)
    # Nothing is due any more.
    assert webhook_delivery.deliver_due(appliance).attempted == 0


def test_payload_is_sealed_until_delivery_and_secret_always(appliance: Appliance,
                                                              receiver: Receiver) -> None:
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    _, secret = _register(appliance, client, receiver.url, ["contact.created"])
    _create_contact(appliance)
    with appliance.engine.connect() as connection:
        raw = repr(connection.exec_driver_sql("SELECT * FROM webhook_deliveries").fetchall()) \
            + repr(connection.exec_driver_sql("SELECT * FROM webhooks").fetchall())
    assert "lorna@example.com" not in raw and "NI-LM-42" not in raw and secret not in raw


def test_records_outside_the_clients_scope_send_nothing(appliance: Appliance,
                                                        receiver: Receiver) -> None:
    west_client, _ = new_client(appliance, "sales_manager", team="west")
    _register(appliance, west_client, receiver.url, ["contact.created", "contact.updated"])
    _create_contact(appliance)  # team east
    assert webhook_delivery.deliver_due(appliance).attempted == 0
    assert receiver.received == []
    with appliance.sessions() as session:
        assert session.scalars(select(WebhookDelivery)).all() == []


def test_failed_delivery_is_retried_with_backoff_and_logged(appliance: Appliance,
                                                            receiver: Receiver) -> None:
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    _register(appliance, client, receiver.url, ["contact.created"])
    _create_contact(appliance)
    receiver.statuses[:] = [500, 503]
    start = dt.datetime.now(dt.UTC)
    first = webhook_delivery.deliver_due(appliance, now=start)
    assert first.retrying == 1 and len(receiver.received) == 1
    with appliance.sessions() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
            "pending", 1, 500)
        assert delivery.last_error == "HTTP 500"
        wait = delivery.next_attempt_at.replace(tzinfo=dt.UTC) - start
        assert dt.timedelta(seconds=29) <= wait <= dt.timedelta(seconds=31)
    # Not due yet: nothing is sent.
    assert webhook_delivery.deliver_due(appliance, now=start + dt.timedelta(seconds=10)) \
        .attempted == 0
    second = webhook_delivery.deliver_due(appliance, now=start + dt.timedelta(seconds=31))
    assert second.retrying == 1
    with appliance.sessions() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert (delivery.attempts, delivery.last_status_code) == (2, 503)
        wait = delivery.next_attempt_at.replace(tzinfo=dt.UTC) - (start + dt.timedelta(seconds=31))
        assert dt.timedelta(seconds=59) <= wait <= dt.timedelta(seconds=61)  # doubled
    third = webhook_delivery.deliver_due(appliance, now=start + dt.timedelta(seconds=200))
    assert third.delivered == 1 and len(receiver.received) == 3
    # Every attempt of the same delivery carries the same id.
    assert len({h["enclave-webhook-id"] for h, _ in receiver.received}) == 1
    with appliance.sessions() as session:
        outcomes = [json.loads(e.fields) for e in session.scalars(select(AuditEvent).where(
            AuditEvent.action == "webhook.deliver").order_by(AuditEvent.seq))]
        assert ["outcome:retrying" in o for o in outcomes] == [True, True, False]
        assert "status:503" in outcomes[1]
    assert webhook_delivery.backoff(30) == webhook_delivery.MAX_DELAY


def test_gives_up_after_max_attempts_and_unreachable_receivers_are_logged(
        appliance: Appliance, receiver: Receiver) -> None:
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    _register(appliance, client, "http://127.0.0.1:9/nobody-listens", ["contact.created"])
    _create_contact(appliance)
    now = dt.datetime.now(dt.UTC)
    for _ in range(webhook_delivery.MAX_ATTEMPTS):
        webhook_delivery.deliver_due(appliance, now=now, timeout=2.0)
        now += webhook_delivery.MAX_DELAY + dt.timedelta(seconds=1)
    with appliance.sessions() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.status == "failed" and delivery.attempts == webhook_delivery.MAX_ATTEMPTS
        assert delivery.last_status_code is None and delivery.last_error
        assert delivery.payload is None
    assert webhook_delivery.deliver_due(appliance, now=now).attempted == 0


def test_deleted_event_carries_only_the_id(appliance: Appliance, receiver: Receiver) -> None:
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    _, secret = _register(appliance, client, receiver.url, ["contact.deleted"])
    contact_id = _create_contact(appliance)
    with unit_of_work(appliance, _manager()) as ctx:
        contact_ops.delete_contact(ctx, contact_id)
    assert webhook_delivery.deliver_due(appliance).delivered == 1
    headers, body = receiver.received[0]
    assert _verify(secret, headers, body)
    payload = json.loads(body)
    assert payload["event"] == "contact.deleted" and payload["data"] == {"id": contact_id}


def test_registration_is_admin_only_validated_and_secret_shown_once(
        appliance: Appliance, caller: Any, receiver: Receiver) -> None:
    target, _ = new_client(appliance, "support_agent")
    admin = caller("admin")
    result = admin.gql(REGISTER, {"c": target, "u": receiver.url,
                                  "e": ["contact.created", "lead.updated"]})
    assert "errors" not in result, result
    registered = result["data"]["registerWebhook"]
    assert registered["secret"].startswith("whsec_")
    assert registered["webhook"]["eventTypes"] == ["contact.created", "lead.updated"]
    listed = admin.gql("{ webhooks { id url clientId disabledAt } }")["data"]["webhooks"]
    assert listed == [{"id": registered["webhook"]["id"], "url": receiver.url,
                       "clientId": target, "disabledAt": None}]
    assert registered["secret"] not in json.dumps(listed)
    manager = caller("sales_manager", team=TEAM)
    refused = manager.gql(REGISTER, {"c": target, "u": receiver.url, "e": ["contact.created"]})
    assert refused["data"]["registerWebhook"] is None
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert manager.gql("{ webhooks { id } }")["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    for variables, fld in (
            ({"c": target, "u": "ftp://127.0.0.1/x", "e": ["contact.created"]}, "url"),
            ({"c": target, "u": "http://user:pw@127.0.0.1/x", "e": ["contact.created"]}, "url"),
            # urlsplit raises on these: a clear refusal, not an internal error.
            ({"c": target, "u": "https://[::1/x", "e": ["contact.created"]}, "url"),
            ({"c": target, "u": "http://127.0.0.1:99999/x", "e": ["contact.created"]}, "url"),
            ({"c": target, "u": "https://ok.example:abc/x", "e": ["contact.created"]}, "url"),
            ({"c": target, "u": "https://exa mple.com/x", "e": ["contact.created"]}, "url"),
            ({"c": target, "u": receiver.url, "e": ["contact.exploded"]}, "eventTypes"),
            ({"c": target, "u": receiver.url, "e": []}, "eventTypes"),
            ({"c": "no-such-client", "u": receiver.url, "e": ["contact.created"]}, "clientId")):
        bad = admin.gql(REGISTER, variables)
        assert bad["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": fld}, bad
    # Disabled: no more deliveries are queued.
    webhook_id = registered["webhook"]["id"]
    disabled = admin.gql("mutation($id: ID!) { disableWebhook(id: $id) { disabledAt } }",
                         {"id": webhook_id})
    assert disabled["data"]["disableWebhook"]["disabledAt"]
    _create_contact(appliance)
    deliveries = admin.gql("query($id: ID!) { webhookDeliveries(webhookId: $id) { id } }",
                           {"id": webhook_id})
    assert deliveries["data"]["webhookDeliveries"] == []


def test_graphql_mutation_events_and_undone_mutations(appliance: Appliance, caller: Any,
                                                      receiver: Receiver) -> None:
    """A createContact over GraphQL is announced; one that failed (and was undone) is not."""
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    webhook_id, _ = _register(appliance, client, receiver.url, ["contact.created"])
    manager = caller("sales_manager", team=TEAM)
    made = manager.gql("mutation { a: createContact(input: {lastName: \"Nettleship\"}) { id } "
                       "b: createContact(input: {lastName: \"Oddie\", email: \"bad\"}) { id } }")
    assert made["data"]["b"] is None and made["data"]["a"]["id"]
    with appliance.sessions() as session:
        queued = session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.webhook_id == webhook_id)).all()
        assert [d.object_id for d in queued] == [made["data"]["a"]["id"]]


def test_reencryption_moves_webhook_secrets_and_payloads(appliance: Appliance,
                                                         receiver: Receiver) -> None:
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    _, secret = _register(appliance, client, receiver.url, ["contact.created"])
    _create_contact(appliance)
    with unit_of_work(appliance, operator("admin")) as ctx:
        version = key_ops.rotate_field_key(ctx)
    with unit_of_work(appliance, operator("admin")) as ctx:
        batch = key_ops.reencrypt_batch(ctx)
    assert batch.remaining == 0
    with appliance.sessions() as session:
        assert session.scalars(select(Webhook.key_version)).one() == version
        assert session.scalars(select(WebhookDelivery.key_version)).one() == version
    assert webhook_delivery.deliver_due(appliance).delivered == 1
    headers, body = receiver.received[0]
    assert _verify(secret, headers, body) and b"lorna@example.com" in body


def test_cli_registers_lists_and_delivers(appliance: Appliance, settings: Any,
                                          receiver: Receiver) -> None:
    from test_data_transfer import _cli
    client, _ = new_client(appliance, "support_agent")
    registered = _cli(settings, "webhooks", "register", "--client-id", client, "--url",
                      receiver.url, "--event", "contact.updated", "--json")
    assert registered.returncode == 0, registered.stderr
    webhook = json.loads(registered.stdout)
    contact_id = _create_contact(appliance)
    with unit_of_work(appliance, _manager()) as ctx:
        contact_ops.update_contact(ctx, contact_id, {"title": "Buyer"})
    delivered = _cli(settings, "webhooks", "deliver")
    assert delivered.returncode == 0, delivered.stderr
    assert "delivered 1" in delivered.stdout
    headers, body = receiver.received[0]
    assert _verify(webhook["secret"], headers, body)
    assert json.loads(body)["event"] == "contact.updated"
    listed = _cli(settings, "webhooks", "deliveries", webhook["id"], "--json")
    assert [d["status"] for d in json.loads(listed.stdout)] == ["delivered"]
    assert webhook["secret"] not in _cli(settings, "webhooks", "list").stdout


def _wait_for(condition: Any, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_delivering_every_n_seconds_sends_what_arrives_later_and_stops_on_request(
        appliance: Appliance, receiver: Receiver) -> None:
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    _register(appliance, client, receiver.url, ["contact.created"])
    stop = threading.Event()
    result: list[webhook_delivery.DeliveryRun] = []
    worker = threading.Thread(
        target=lambda: result.append(webhook_delivery.deliver_every(appliance, 0.2, stop=stop)))
    worker.start()
    try:
        # Changes made while the loop runs are delivered by its later passes.
        _create_contact(appliance)
        assert _wait_for(lambda: len(receiver.received) == 1)
        _create_contact(appliance)
        assert _wait_for(lambda: len(receiver.received) == 2)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert result[0].delivered == 2 and result[0].failed == 0


def test_cli_deliver_every_runs_until_sigterm(appliance: Appliance, settings: Any,
                                             receiver: Receiver) -> None:
    from test_data_transfer import ENCLAVE, _cli_env
    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    _, secret = _register(appliance, client, receiver.url, ["contact.created"])
    service = subprocess.Popen([str(ENCLAVE), "webhooks", "deliver", "--every", "1"],
                               env=_cli_env(settings), cwd=settings.data_dir.parent,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _create_contact(appliance)
        assert _wait_for(lambda: len(receiver.received) == 1, 60)
    finally:
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=60)
    assert service.returncode == 0, err
    assert "stopped: delivered 1, retrying 0, failed 0" in out, out
    headers, body = receiver.received[0]
    assert _verify(secret, headers, body)
    # Refused clearly: an interval under a second.
    refused = subprocess.run([str(ENCLAVE), "webhooks", "deliver", "--every", "0"],
                             env=_cli_env(settings), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


def test_a_write_looks_for_webhooks_only_when_one_is_active(appliance: Appliance, caller: Any,
                                                            receiver: Receiver) -> None:
    """A GraphQL unit's first statement says whether any webhook is active (PostgreSQL): with
    none, a write does not query the webhooks. One registered earlier in the same request as
    the write is seen by that write; one registered by another unit of work (as another worker
    would) is seen by the next write."""
    if appliance.engine.dialect.name == "sqlite":
        pytest.skip("SQLite units have no first statement: the sink always looks")
    looked: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT webhooks."):  # the sink's query (not the prelude)
            looked.append(statement)

    client, _ = new_client(appliance, "sales_manager", team=TEAM)
    manager = caller("sales_manager", team=TEAM)
    both = caller("admin", "sales_manager", team=TEAM)
    create = 'mutation { createContact(input: {lastName: "%s"}) { id } }'
    event.listen(appliance.engine, "before_cursor_execute", note)
    try:
        quiet = manager.gql(create % "Quiet")["data"]["createContact"]["id"]
        assert looked == []
        same = both.gql(REGISTER.replace(
            "registerWebhook(clientId: $c, url: $u, eventTypes: $e) { secret webhook { id "
            "eventTypes } }",
            "registerWebhook(clientId: $c, url: $u, eventTypes: $e) { webhook { id } } "
            "createContact(input: {lastName: \"Same\"}) { id }"),
            {"c": client, "u": receiver.url, "e": ["contact.created"]})
        assert "errors" not in same, same
        first = same["data"]["registerWebhook"]["webhook"]["id"]
        with unit_of_work(appliance, operator("admin")) as ctx:
            webhook_ops.disable(ctx, first)
        looked.clear()
        unheard = manager.gql(create % "Unheard")["data"]["createContact"]["id"]
        assert looked == []  # the only webhook is disabled
        second, _ = _register(appliance, client, receiver.url, ["contact.created"])
        heard = manager.gql(create % "Heard")["data"]["createContact"]["id"]
        assert looked  # the next write's first statement saw it
    finally:
        event.remove(appliance.engine, "before_cursor_execute", note)
    with appliance.sessions() as session:
        queued = {(d.webhook_id, d.object_id) for d in session.scalars(select(WebhookDelivery))}
    assert queued == {(first, same["data"]["createContact"]["id"]), (second, heard)}
    assert quiet and unheard
