"""Web clients: applications that sign people in with the authorization-code flow (PKCE S256).

Registered by an admin with their exact redirect URIs (no wildcards). Confidential clients get a
secret (shown once, stored as an argon2id hash); public clients (a single-page app, a native
app) have none and rely on PKCE alone. First-party only: there is no consent screen.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sqlalchemy import select

from schema.context import RequestContext
from schema.ops import validation
from schema.ops.clients import revoke_row
from security.authz import MANAGE
from security.errors import BadUserInput
from security.passwords import hash_secret, new_client_secret
from storage.ids import new_id
from storage.models import WebClient

OBJECT = "client"
MAX_REDIRECT_URIS = 10


@dataclass(frozen=True)
class IssuedWebClient:
    client: WebClient
    secret: str | None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_redirect_uri(uri: str) -> str:
    """An absolute https URI without fragment (plain http only on loopback, RFC 8252)."""
    value = validation.text("redirect_uri", uri, max_length=2000, required=True) or ""
    parts = validation.http_url_parts("redirect_uri", value)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        raise BadUserInput(f"{value!r}: plain http is allowed on loopback only",
                           field="redirect_uri")
    if parts.fragment or "#" in value or "*" in value or parts.username or parts.password:
        raise BadUserInput(f"{value!r} may hold no fragment, wildcard or credentials",
                           field="redirect_uri")
    return value


def create_web_client(ctx: RequestContext, *, name: str, redirect_uris: list[str],
                      public: bool = False) -> IssuedWebClient:
    ctx.guard.require(OBJECT, MANAGE)
    clean_name = validation.text("name", name, max_length=100, required=True) or ""
    if not redirect_uris or len(redirect_uris) > MAX_REDIRECT_URIS:
        raise BadUserInput(f"give 1 to {MAX_REDIRECT_URIS} redirect URIs",
                           field="redirect_uris")
    uris = list(dict.fromkeys(check_redirect_uri(u) for u in redirect_uris))
    secret = None if public else new_client_secret()
    client = WebClient(id=f"w-{new_id()}", name=clean_name, redirect_uris=uris,
                       secret_hash=hash_secret(secret) if secret else None)
    ctx.session.add(client)
    ctx.session.flush()
    ctx.audit("client.create", object_type=OBJECT, object_ids=[client.id],
              fields=["kind:web", "type:public" if public else "type:confidential"]
              + [f"redirect_uri:{u}" for u in uris])
    return IssuedWebClient(client, secret)


def list_web_clients(ctx: RequestContext) -> list[WebClient]:
    ctx.guard.require(OBJECT, MANAGE)
    return list(ctx.session.scalars(select(WebClient).order_by(WebClient.created_at,
                                                               WebClient.id)))


def revoke_web_client(ctx: RequestContext, client_id: str) -> WebClient:
    return revoke_row(ctx, WebClient, client_id, label="web client")
