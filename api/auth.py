"""Bearer-token authentication for API requests: an application's token (client credentials)
or a person's (authorization-code flow), checked against the database on every request."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from schema.context import CLIENT_ACTIVE
from schema.runtime import Appliance
from security.errors import Unauthenticated
from security.principal import Principal
from storage.models import ApiClient, User, UserSession


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def principal_from_token(appliance: Appliance, authorization: str | None) -> Principal:
    """Verify signature, issuer, audience and expiry (no database needed)."""
    claims = appliance.tokens.verify(bearer_token(authorization))
    if claims.get("kind", "client") == "user":
        sid = claims.get("sid")
        if not isinstance(sid, str) or not sid:
            raise Unauthenticated("a person's access token must name its session")
        client = claims.get("client_id")
        return Principal(id=claims["sub"], name=claims["sub"], roles=tuple(claims["roles"]),
                         team=claims.get("team"), kind="user", session_id=sid,
                         client_id=client if isinstance(client, str) else None)
    if "kind" in claims and claims["kind"] != "client":
        raise Unauthenticated("unknown kind of access token")
    return Principal(id=claims["sub"], name=claims["sub"], roles=tuple(claims["roles"]),
                     team=claims.get("team"), kind="client")


def require_active(session: Session, principal: Principal) -> None:
    """A token outlives nothing: a revoked client's tokens, and a disabled or signed-out
    person's, stop working at once."""
    if principal.kind == "user":
        user = session.get(User, principal.id)
        if user is None or user.disabled_at is not None:
            raise Unauthenticated("the person behind this token has been disabled")
        signed_in = session.get(UserSession, principal.session_id) \
            if principal.session_id else None
        if signed_in is None or signed_in.revoked_at is not None or signed_in.stage != "full" \
                or signed_in.user_id != user.id or signed_in.expires_at <= dt.datetime.now(dt.UTC):
            raise Unauthenticated("the sign-in behind this token has ended")
        return
    known = session.info.pop(CLIENT_ACTIVE, None)
    if known is not None and known[0] == principal.id:  # read by the unit's first statement
        if not known[1]:
            raise Unauthenticated("the client behind this token has been revoked")
        return
    row = session.get(ApiClient, principal.id)
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("the client behind this token has been revoked")


#: The name the API used before people could sign in.
require_active_client = require_active
