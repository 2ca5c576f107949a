"""API clients (internal applications): create, list, revoke. Admin only, audited."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select

from schema.context import RequestContext
from schema.ops import validation
from security.authz import MANAGE
from security.default_policy import ROLES
from security.errors import BadUserInput, Conflict, NotFound
from security.passwords import hash_secret, new_client_secret
from storage.ids import new_id
from storage.models import ApiClient, PolicyRule, WebClient

OBJECT = "client"
C = TypeVar("C", ApiClient, WebClient)


@dataclass(frozen=True)
class IssuedClient:
    client: ApiClient
    secret: str


def known_roles(ctx: RequestContext) -> set[str]:
    return set(ROLES) | set(ctx.session.scalars(select(PolicyRule.role).distinct()))


def create_client(ctx: RequestContext, *, name: str, roles: list[str],
                  team: str | None = None) -> IssuedClient:
    ctx.guard.require(OBJECT, MANAGE)
    clean_name = validation.text("name", name, max_length=100, required=True) or ""
    clean_team = validation.team("team", team)
    if not roles:
        raise BadUserInput("give at least one role", field="roles")
    unknown = sorted(set(roles) - known_roles(ctx))
    if unknown:
        raise BadUserInput(f"unknown role(s): {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(known_roles(ctx)))}", field="roles")
    secret = new_client_secret()
    client = ApiClient(id=f"c-{new_id()}", name=clean_name, roles=sorted(set(roles)),
                       team=clean_team, secret_hash=hash_secret(secret))
    ctx.session.add(client)
    ctx.session.flush()
    ctx.audit("client.create", object_type=OBJECT, object_ids=[client.id],
              fields=[f"role:{r}" for r in client.roles] + ([f"team:{clean_team}"] if clean_team else []))
    return IssuedClient(client, secret)


def list_clients(ctx: RequestContext) -> list[ApiClient]:
    ctx.guard.require(OBJECT, MANAGE)
    return list(ctx.session.scalars(select(ApiClient).order_by(ApiClient.created_at, ApiClient.id)))


def revoke_client(ctx: RequestContext, client_id: str) -> ApiClient:
    return revoke_row(ctx, ApiClient, client_id, label="client")


def revoke_row(ctx: RequestContext, model: type[C], client_id: str, *, label: str) -> C:
    """Revoke an application or web client: admin only, once, audited."""
    ctx.guard.require(OBJECT, MANAGE)
    client = ctx.session.get(model, client_id)
    if client is None:
        raise NotFound(f"no {label} {client_id}")
    if client.revoked_at is not None:
        raise Conflict(f"{label} {client_id} is already revoked")
    client.revoked_at = dt.datetime.now(dt.UTC)
    ctx.session.flush()
    ctx.audit("client.revoke", object_type=OBJECT, object_ids=[client.id])
    return client
