"""Trusted documents: the GraphQL operations each application may send (issue 7).

A document is named by `sha256:<hex>` of its exact text and bound to the clients allowed to send
it: API clients (their own tokens) and web clients (the tokens of people using them). Registering, unbinding and removing need `document` manage (admin) and are audited;
so is every refusal of a request (`document.refused`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.context import RequestContext
from security.authz import MANAGE
from security.errors import BadUserInput, NotFound
from storage.documents_models import TrustedDocument
from storage.models import ApiClient, WebClient

OBJECT = "document"
PREFIX = "sha256:"
_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_DOCUMENT_BYTES = 100_000

#: Checks a document against the schema; returns the problems found (none: valid).
Validator = Callable[[str], list[str]]


def document_id(body: str) -> str:
    """The id of a document: the SHA-256 of its exact UTF-8 text."""
    return PREFIX + hashlib.sha256(body.encode("utf-8")).hexdigest()


def is_document_id(value: object) -> bool:
    return isinstance(value, str) and _ID.match(value) is not None


@dataclass(frozen=True)
class Registered:
    id: str
    name: str | None
    clients: list[str]
    created: bool


def parse_manifest(text: str) -> dict[str, str]:
    """Documents of a manifest, by their id: Apollo's persisted query manifest
    (`{"format": "apollo-persisted-query-manifest", "operations": [{"id", "body"}]}`) or a
    Relay-style map of hash to document. Every given hash must be the SHA-256 of its text."""
    try:
        data = json.loads(text)
    except ValueError:
        raise BadUserInput("the manifest is not JSON", field="manifest") from None
    pairs: list[tuple[str, Any]]
    if isinstance(data, dict) and isinstance(data.get("operations"), list):
        pairs = [(str(op.get("id", "")), op.get("body")) for op in data["operations"]
                 if isinstance(op, dict)]
    elif isinstance(data, dict) and ("operations" in data or "format" in data):
        raise BadUserInput("an Apollo manifest's \"operations\" is a list of {\"id\", "
                           "\"body\"} objects", field="manifest")
    elif isinstance(data, dict):
        pairs = list(data.items())
    else:
        raise BadUserInput("a manifest is a JSON object: Apollo's {\"operations\": [...]} or "
                           "{\"<sha256>\": \"<document>\"}", field="manifest")
    documents: dict[str, str] = {}
    for given, body in pairs:
        if not isinstance(body, str) or not body.strip():
            raise BadUserInput(f"manifest entry {given!r} has no document text", field="manifest")
        actual = document_id(body)
        if given.removeprefix(PREFIX).lower() != actual.removeprefix(PREFIX):
            raise BadUserInput(f"manifest entry {given!r} is not the SHA-256 of its document "
                               f"(that is {actual}); only SHA-256 ids are accepted",
                               field="manifest")
        documents[actual] = body
    if not documents:
        raise BadUserInput("the manifest holds no documents", field="manifest")
    return documents


def _check_clients(ctx: RequestContext, client_ids: Iterable[str]) -> list[str]:
    wanted = sorted(set(client_ids))
    if not wanted:
        raise BadUserInput("bind the document to at least one API client", field="clients")
    found = set(ctx.session.scalars(select(ApiClient.id).where(ApiClient.id.in_(wanted),
                                                               ApiClient.revoked_at.is_(None))))
    found |= set(ctx.session.scalars(select(WebClient.id).where(WebClient.id.in_(wanted),
                                                                WebClient.revoked_at.is_(None))))
    missing = [c for c in wanted if c not in found]
    if missing:
        raise BadUserInput(f"no active API or web client {', '.join(missing)}", field="clients")
    return wanted


def add_document(ctx: RequestContext, body: str, *, clients: Iterable[str],
                 name: str | None = None, validate: Validator | None = None) -> Registered:
    """Register `body` for `clients` (added to those already bound). Checked against the schema
    once, now; an invalid document is refused."""
    ctx.guard.require(OBJECT, MANAGE)
    if not isinstance(body, str) or not body.strip():
        raise BadUserInput("the document is empty", field="document")
    if len(body.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise BadUserInput(f"the document is over {MAX_DOCUMENT_BYTES} bytes", field="document")
    bound = _check_clients(ctx, clients)
    problems = validate(body) if validate is not None else []
    if problems:
        raise BadUserInput("the document does not validate against the schema: "
                           + "; ".join(problems), field="document")
    doc_id = document_id(body)
    row = ctx.session.get(TrustedDocument, doc_id)
    created = row is None
    if row is None:
        row = TrustedDocument(id=doc_id, body=body, name=(name or None) and name[:200],
                              clients=bound, created_by=ctx.principal.actor)
        ctx.session.add(row)
        added = bound
    else:
        added = [c for c in bound if c not in row.clients]
        row.clients = sorted(set(row.clients) | set(bound))
    ctx.session.flush()
    ctx.audit("document.register", object_type=OBJECT, object_ids=[doc_id],
              fields=[f"client:{c}" for c in added])
    return Registered(doc_id, row.name, list(row.clients), created)


def add_manifest(ctx: RequestContext, text: str, *, clients: Iterable[str],
                 name: str | None = None, validate: Validator | None = None) -> list[Registered]:
    documents = parse_manifest(text)
    bound = list(clients)
    return [add_document(ctx, body, clients=bound, name=name, validate=validate)
            for body in documents.values()]


def list_documents(ctx: RequestContext, *, client: str | None = None) -> list[TrustedDocument]:
    ctx.guard.require(OBJECT, MANAGE)
    rows = list(ctx.session.scalars(select(TrustedDocument).order_by(
        TrustedDocument.created_at, TrustedDocument.id)))
    return [r for r in rows if client is None or client in r.clients]


def remove_document(ctx: RequestContext, doc_id: str, *, client: str | None = None) -> bool:
    """Unbind `client` from the document, or remove it for everyone (client None). Returns
    whether the document itself is gone."""
    ctx.guard.require(OBJECT, MANAGE)
    row = ctx.session.get(TrustedDocument, doc_id) if is_document_id(doc_id) else None
    if row is None:
        raise NotFound(f"no trusted document {doc_id}")
    if client is not None:
        if client not in row.clients:
            raise BadUserInput(f"{doc_id} is not bound to {client}", field="client")
        remaining = [c for c in row.clients if c != client]
        if remaining:
            row.clients = remaining
            ctx.session.flush()
            ctx.audit("document.unbind", object_type=OBJECT, object_ids=[doc_id],
                      fields=[f"client:{client}"])
            return False
    ctx.session.delete(row)
    ctx.session.flush()
    ctx.audit("document.remove", object_type=OBJECT, object_ids=[doc_id],
              fields=[f"client:{c}" for c in row.clients])
    return True


@dataclass(frozen=True)
class Lookup:
    """What a request's documentId names: its text (None: unknown) and its bound clients."""

    body: str | None
    clients: tuple[str, ...]


_BODIES: dict[str, str] = {}  # id -> text; an id names its text forever, so this never goes stale


_UNREAD: Any = object()


def lookup(session: Session, doc_id: str, *, clients: Any = _UNREAD) -> Lookup:
    """One primary-key query: the clients bound now (they change), the text cached by id.
    `clients`: the document's clients column as already read in this transaction (None: no
    such row), which saves the query once the text is cached."""
    if not is_document_id(doc_id):
        return Lookup(None, ())
    if doc_id in _BODIES:
        if clients is _UNREAD:
            clients = session.scalar(select(TrustedDocument.clients)
                                     .where(TrustedDocument.id == doc_id))
        if clients is None:
            return Lookup(None, ())
        return Lookup(_BODIES[doc_id], tuple(clients))
    row = session.get(TrustedDocument, doc_id)
    if row is None:
        return Lookup(None, ())
    if len(_BODIES) < 10_000:
        _BODIES[doc_id] = row.body
    return Lookup(row.body, tuple(row.clients))


def refused(ctx: RequestContext, doc_id: str | None, reason: str) -> None:
    """Audit a refused request (an unknown or unbound document, a raw query when trusted)."""
    ctx.audit("document.refused", object_type=OBJECT, object_ids=[doc_id] if doc_id else [],
              decision="deny", reason=reason)


def as_dict(row: TrustedDocument) -> Mapping[str, Any]:
    return {"id": row.id, "name": row.name, "clients": list(row.clients),
            "created_at": row.created_at.isoformat(), "created_by": row.created_by,
            "bytes": len(row.body.encode("utf-8"))}
