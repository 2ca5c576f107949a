"""Bearer-token authentication for API requests."""

from __future__ import annotations

from sqlalchemy.orm import Session

from schema.runtime import Appliance
from security.errors import Unauthenticated
from security.principal import Principal
from storage.models import ApiClient


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
    return Principal(id=claims["sub"], name=claims["sub"], roles=tuple(claims["roles"]),
                     team=claims.get("team"), kind="client")


def require_active_client(session: Session, principal: Principal) -> None:
    """A token outlives nothing: a revoked or deleted client's tokens stop working at once."""
    row = session.get(ApiClient, principal.id)
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("the client behind this token has been revoked")
