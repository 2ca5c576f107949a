"""OAuth2 token endpoint on authlib's server core: the client-credentials grant (RFC 6749 §4.4)
for applications acting as themselves, and the authorization-code grant (§4.1, PKCE S256,
OpenID Connect; `api.oauth_code`) for applications acting for a signed-in person.

authlib validates the request and authenticates the client (client_secret_basic or
client_secret_post; `none` for public web clients, which PKCE binds instead); Enclave supplies
the client lookup (argon2id-hashed secrets, revocation) and the token generator (Ed25519-signed
JWTs). Issuance and failures are audited.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from sqlalchemy.orm import Session

from api.oauth_code import CodeGrant, IdTokens, S256Challenge, WebClientAdapter
from schema.ops.signin import SignedIn
from schema.runtime import Appliance
from security.audit import AuditEntry
from security.passwords import DUMMY_HASH, verify_secret
from storage.models import ApiClient, WebClient

AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class _Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, row: ApiClient) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        return ""  # roles, not scopes, carry the authority

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(self.row.secret_hash, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class _Grant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)


class _FormRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, uri: str, form: dict[str, str], headers: Mapping[str, str]) -> None:
        super().__init__("POST", uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def form(self) -> dict[str, str]:
        return self._form


class TokenServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's server bound to one database session. `authorize=True` for the authorization
    endpoint, where an unknown client is answered at once (no secret is checked there)."""

    def __init__(self, appliance: Appliance, session: Session, *,
                 authorize: bool = False) -> None:
        super().__init__()
        self.appliance = appliance
        self.session = session
        self.authorize = authorize
        self.issued_to: str | None = None
        self.issued_for: SignedIn | None = None
        #: Why an authorization-code token request was refused (for the audit log).
        self.refusal: str | None = None
        self.register_grant(_Grant)
        self.register_grant(CodeGrant, [S256Challenge(required=True),
                                        IdTokens(appliance, session)])
        self.register_token_generator("default", self._generate)

    def query_client(self, client_id: str) -> _Client | WebClientAdapter | None:
        row: ApiClient | WebClient | None = None
        if client_id and len(client_id) <= 64:
            row = self.session.get(WebClient, client_id) if client_id.startswith("w-") \
                else self.session.get(ApiClient, client_id)
        if row is None or row.revoked_at is not None:
            if not self.authorize:
                verify_secret(DUMMY_HASH, "x")  # spend the same time as a real check
            return None
        return WebClientAdapter(row) if isinstance(row, WebClient) else _Client(row)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Tokens are self-contained JWTs; nothing to store."""

    def _generate(self, *, client: _Client | WebClientAdapter, grant_type: str,
                  user: SignedIn | None = None, scope: str | None = None,
                  **_: Any) -> dict[str, Any]:
        self.issued_to = client.row.id
        if grant_type == "authorization_code" and user is not None:
            self.issued_for = user
            token = self.appliance.tokens.issue(
                subject=user.user.id, roles=user.roles, team=user.user.team,
                extra={"kind": "user", "sid": user.session_id, "scope": scope or "",
                       "client_id": client.row.id})
            token["scope"] = scope or ""
            return token
        assert isinstance(client, _Client)  # only ApiClients may use client_credentials
        return self.appliance.tokens.issue(subject=client.row.id, roles=client.row.roles,
                                           team=client.row.team)

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def create_json_request(self, request: Any) -> Any:  # pragma: no cover - not used
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


def token_response(appliance: Appliance, form: dict[str, str], headers: Mapping[str, str],
                   request_id: str) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """Answer one token request; TLS is terminated in front of the service, hence https."""
    with appliance.sessions() as session, session.begin():
        server = TokenServer(appliance, session)
        request = _FormRequest("https://enclave.local/oauth/token", form, headers)
        response_headers: Any
        if "grant_type" not in form:
            # RFC 6749 §5.2: a missing required parameter is an invalid request.
            status, response_headers = 400, []
            body = {"error": "invalid_request", "error_description": "grant_type is required"}
        elif headers.get("authorization", "").lower().startswith("basic ") \
                and "client_secret" in form:
            # RFC 6749 §2.3: a client must not use more than one authentication method in a
            # request (the body's secret was ignored, even a wrong one).
            status, response_headers = 400, []
            body = {"error": "invalid_request", "error_description":
                    "authenticate with Basic or with client_secret in the body, not both"}
        elif not _basic_credentials_readable(headers):
            # authlib would raise on them (a 500): they authenticate nobody.
            status, body = 401, {"error": "invalid_client"}
            response_headers = []
        else:
            status, body, response_headers = server.create_token_response(request)
        if isinstance(body, str):
            body = json.loads(body)
        if body.get("error") == "invalid_client":
            # One answer for an unknown, revoked or wrongly authenticated client, whichever
            # method it used: the answer must not tell which client ids exist.
            status, body = 401, {"error": "invalid_client",
                                 "error_description": "client authentication failed"}
            response_headers = [("WWW-Authenticate", 'Basic error="invalid_client"')]
        client_id = server.issued_to or _claimed_client(form, headers)
        who = server.issued_for
        reason = None if status == 200 else str(body.get("error"))
        if reason and server.refusal:
            reason = f"{reason}: {server.refusal}"
        entry = AuditEntry(
            actor=f"user:{who.user.id}" if who else f"client:{client_id or 'unknown'}",
            roles=who.roles if who else (), action="token.issue",
            object_type="client", object_ids=[client_id] if client_id else [],
            fields=[f"grant:{form.get('grant_type', '')[:40]}"] if who else [],
            decision="allow" if status == 200 else "deny",
            reason=reason, request_id=request_id)
        appliance.append_audit(session, [entry])
    return status, body, list(response_headers or [])


def _basic_credentials_readable(headers: Mapping[str, str]) -> bool:
    """Whether a Basic authorization header, if any, is base64 of UTF-8 text."""
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return True
    try:
        base64.b64decode(auth[6:]).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _claimed_client(form: dict[str, str], headers: Mapping[str, str]) -> str | None:

    auth = headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            return base64.b64decode(auth[6:]).decode().split(":", 1)[0][:64] or None
        except (ValueError, UnicodeDecodeError):
            return None
    value = form.get("client_id")
    return value[:64] if value else None
