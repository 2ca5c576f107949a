"""The authorization-code grant (RFC 6749 §4.1) for people, on authlib's grant classes.

- PKCE is mandatory and S256 only (RFC 7636, RFC 9700 §2.1.1): a request without a challenge,
  with method `plain` or with no method is refused at the authorization endpoint, and every
  token request must bring the matching verifier, confidential client or not.
- Codes are 48 random characters; only their SHA-256 is stored. A code lives 60 seconds and is
  spent by the first token request that names it, whether that request then succeeds or not.
  Presenting a spent code again ends the sign-in session it came from, so the access tokens
  issued through it stop working (RFC 6749 §4.1.2).
- With scope `openid` the response carries an OpenID Connect ID token signed with the
  appliance's Ed25519 token key (JOSE alg `Ed25519`), via authlib's OpenIDCode extension, which
  signs with joserfc.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, InvalidRequestError, scope_to_list
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import OKPKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.ops.signin import SignedIn, revoke_session, session_active
from schema.runtime import Appliance
from security.passwords import verify_secret
from security.tokens import ALGORITHM
from storage.ids import new_id
from storage.models import AuthorizationCode, User, WebClient

SCOPES = ("openid", "email", "profile")
CODE_LIFETIME = 60
ID_TOKEN_LIFETIME = 300
SECRET_METHODS = ("client_secret_basic", "client_secret_post")


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class WebClientAdapter(ClientMixin):  # type: ignore[misc]
    """A registered web client as authlib sees it: exact redirect URIs, code flow only."""

    def __init__(self, row: WebClient) -> None:
        self.row = row

    @property
    def public(self) -> bool:
        return self.row.secret_hash is None

    def get_client_id(self) -> str:
        return self.row.id

    def get_default_redirect_uri(self) -> None:
        return None  # every authorization request must name its redirect URI

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope_to_list(scope) or []) if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.row.redirect_uris  # exact match, no patterns

    def check_client_secret(self, client_secret: str) -> bool:
        return self.row.secret_hash is not None and verify_secret(self.row.secret_hash,
                                                                  client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return False
        return method == "none" if self.public else method in SECRET_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


def _s256_matches(verifier: str, challenge: str) -> bool:
    return hmac.compare_digest(create_s256_code_challenge(verifier), challenge)


class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE required on every request, S256 only."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    CODE_CHALLENGE_METHODS = {"S256": _s256_matches}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with "
                                      "code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 ('plain' is refused)")
        super().validate_code_challenge(grant, redirect_uri)


class CodeRecord(AuthorizationCodeMixin):  # type: ignore[misc]
    def __init__(self, row: AuthorizationCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return self.row.auth_time

    def get_amr(self) -> list[str]:
        return list(self.row.amr)


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [*SECRET_METHODS, "none"]

    @property
    def db(self) -> Session:
        return self.server.session  # type: ignore[no-any-return]

    def save_authorization_code(self, code: str, request: Any) -> None:
        who: SignedIn = request.user
        data = request.payload.data
        now = dt.datetime.now(dt.UTC)
        self.db.add(AuthorizationCode(
            id=new_id(), code_hash=code_hash(code), client_id=request.client.get_client_id(),
            user_id=who.user.id, session_id=who.session_id,
            redirect_uri=request.payload.redirect_uri, scope=request.scope or "",
            nonce=data.get("nonce"), code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"], roles=list(who.roles),
            amr=list(who.amr), auth_time=who.auth_time, created_at=now,
            expires_at=now + dt.timedelta(seconds=CODE_LIFETIME)))
        self.db.flush()

    def query_authorization_code(self, code: str, client: Any) -> CodeRecord | None:
        row = self.db.scalar(select(AuthorizationCode)
                             .where(AuthorizationCode.code_hash == code_hash(code))
                             .with_for_update())
        if row is None or row.client_id != client.get_client_id():
            return None
        now = dt.datetime.now(dt.UTC)
        if row.used_at is not None:
            revoke_session(self.db, row.session_id)
            self.server.refusal = "authorization code used twice; its session was ended"
            return None
        row.used_at = now  # spent now, whatever happens to the rest of this request
        if row.expires_at <= now:
            self.server.refusal = "authorization code expired"
            return None
        return CodeRecord(row)

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        """Spent codes stay (marked used) so a second use is recognised; swept after a day."""

    def authenticate_user(self, authorization_code: CodeRecord) -> SignedIn | None:
        row = authorization_code.row
        user = self.db.get(User, row.user_id)
        if user is None or user.disabled_at is not None \
                or not session_active(self.db, row.session_id):
            self.server.refusal = "the person was disabled or signed out"
            return None
        roles = tuple(r for r in row.roles if r in user.roles)
        return SignedIn(user, row.session_id, roles, tuple(row.amr), row.auth_time)


class IdTokens(OpenIDCode):  # type: ignore[misc]
    """ID tokens signed with the token key; claims for the scopes granted."""

    def __init__(self, appliance: Appliance, db: Session) -> None:
        super().__init__(require_nonce=False)
        self.appliance = appliance
        self.db = db

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self.db.scalar(select(AuthorizationCode.id).where(
            AuthorizationCode.client_id == request.payload.client_id,
            AuthorizationCode.nonce == nonce).limit(1)) is not None

    def resolve_client_private_key(self, client: Any) -> OKPKey:
        return self.appliance.tokens.id_token_key()[0]

    def get_client_algorithm(self, client: Any) -> str:
        return ALGORITHM

    def get_encode_header(self, client: Any) -> dict[str, str]:
        return {"alg": ALGORITHM, "kid": self.appliance.tokens.id_token_key()[1], "typ": "JWT"}

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        return {"iss": self.appliance.settings.resolved_issuer,
                "aud": client.get_client_id(), "azp": client.get_client_id(),
                "exp": int(time.time()) + ID_TOKEN_LIFETIME}

    def generate_user_info(self, user: SignedIn, scope: str) -> dict[str, Any]:
        return user_claims(user.user, user.roles, scope)


def user_claims(user: User, roles: tuple[str, ...] | list[str], scope: str) -> dict[str, Any]:
    """What an ID token and /oauth/userinfo say about a person, by scope."""
    scopes = set(scope_to_list(scope) or [])
    claims: dict[str, Any] = {"sub": user.id}
    if "email" in scopes:
        # Accounts are made by an administrator who entered the address.
        claims.update(email=user.email, email_verified=True)
    if "profile" in scopes:
        claims.update(roles=list(roles), team=user.team)
    return claims
