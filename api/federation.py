"""Sign in with the organisation's own OpenID Connect provider (optional; configuration only).

Enclave is then a relying party too: the code flow with PKCE (S256), `state` and `nonce`, the
client authenticated with its secret (client_secret_basic), the ID token verified against the
provider's published keys (issuer, audience, expiry, nonce; asymmetric algorithms only). The
person is the local account with the token's (verified) email address; a configured role claim
can narrow that account's roles for the session, never widen them. Roles that need TOTP still
need Enclave's own TOTP step.

    POST /oauth/federated/start?resume=...   (the sign-in page's button; CSRF-checked)
    GET  /oauth/federated/callback            the provider sends the browser back here
    GET  /oauth/federated/finish              ...which steps on to here from our own page

The session cookie is SameSite=Strict, so the browser does not send it on the provider's
cross-site redirect to /callback; /callback therefore answers with a page of ours that moves
on to /finish (meta refresh), a same-site navigation that carries the cookie, and /finish checks
that `state` belongs to this browser's session before anything else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.signin import login_page, safe_next
from api.web import Page, form_or_refusal, message, respond, session_cookie
from schema.ops import signin as ops
from schema.runtime import Appliance
from security.config import Settings

CALLBACK_PATH = "/oauth/federated/callback"
#: Never HMAC (a shared secret) or "none": the provider must sign with its private key.
ALLOWED_ALGORITHMS = ("Ed25519", "EdDSA", "ES256", "ES384", "RS256", "PS256")
_TIMEOUT = 10
_MAX_BYTES = 1_000_000
_CACHE_SECONDS = 3600


class FederationError(Exception):
    """The provider could not be used, or what it sent does not verify."""


def _opener() -> urllib.request.OpenerDirector:
    # The provider is on the organisation's own network: no proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch_json(url: str, *, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json",
                                                              **(headers or {})})
    try:
        with _opener().open(request, timeout=_TIMEOUT) as answer:
            body = answer.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise FederationError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FederationError(f"{url} is unreachable ({exc})") from None
    if len(body) > _MAX_BYTES:
        raise FederationError(f"{url} answered with too much data")
    try:
        document = json.loads(body)
    except ValueError:
        raise FederationError(f"{url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise FederationError(f"{url} did not answer a JSON object")
    return document


class Provider:
    """The organisation's provider: its discovery document and keys, cached for an hour."""

    _lock = threading.Lock()
    _cache: dict[str, tuple[float, dict[str, Any], KeySet]] = {}

    def __init__(self, settings: Settings) -> None:
        if not settings.oidc_issuer or not settings.oidc_client_id \
                or settings.oidc_client_secret is None:
            raise FederationError("federation is not configured")
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self.secret = settings.oidc_client_secret
        self.role_claim = settings.oidc_role_claim
        self.redirect_uri = settings.resolved_issuer + CALLBACK_PATH

    def metadata(self, *, refresh: bool = False) -> tuple[dict[str, Any], KeySet]:
        with self._lock:
            cached = self._cache.get(self.issuer)
        if cached and not refresh and cached[0] > time.monotonic():
            return cached[1], cached[2]
        config = _fetch_json(self.issuer + "/.well-known/openid-configuration")
        if config.get("issuer") != self.issuer:
            raise FederationError("the provider's discovery document names another issuer")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(config.get(name), str):
                raise FederationError(f"the provider's discovery document lacks {name}")
        try:
            keys = KeySet.import_key_set(_fetch_json(config["jwks_uri"]))  # type: ignore[arg-type]
        except (ValueError, TypeError, KeyError, jose_errors.JoseError):
            raise FederationError("the provider's keys do not parse") from None
        with self._lock:
            self._cache[self.issuer] = (time.monotonic() + _CACHE_SECONDS, config, keys)
        return config, keys

    def authorization_url(self, *, state: str, nonce: str, verifier: str) -> str:
        config, _ = self.metadata()
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode({"response_type": "code", "client_id": self.client_id,
                           "redirect_uri": self.redirect_uri, "scope": "openid email profile",
                           "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        endpoint = str(config["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def redeem(self, code: str, *, verifier: str, nonce: str) -> dict[str, Any]:
        """Exchange the code and return the verified ID token's claims."""
        config, keys = self.metadata()
        basic = base64.b64encode(
            f"{self.client_id}:{self.secret.reveal()}".encode()).decode()
        answer = _fetch_json(str(config["token_endpoint"]), data=urlencode({
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": self.redirect_uri, "code_verifier": verifier}).encode(),
            headers={"Authorization": f"Basic {basic}",
                     "Content-Type": "application/x-www-form-urlencoded"})
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise FederationError("the provider sent no ID token")
        return self.verify(id_token, keys, nonce=nonce)

    def verify(self, id_token: str, keys: KeySet, *, nonce: str) -> dict[str, Any]:
        try:
            try:
                decoded = jwt.decode(id_token, keys, algorithms=list(ALLOWED_ALGORITHMS))
            except (ValueError, jose_errors.JoseError):
                # Perhaps the provider rotated its keys: fetch them once more.
                _, keys = self.metadata(refresh=True)
                decoded = jwt.decode(id_token, keys, algorithms=list(ALLOWED_ALGORITHMS))
            jwt.JWTClaimsRegistry(
                leeway=30, iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.client_id},
                exp={"essential": True}, iat={"essential": True}, sub={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(decoded.claims)
        except (ValueError, TypeError, KeyError, jose_errors.JoseError) as exc:
            raise FederationError(f"the ID token does not verify ({exc})") from None
        claims = decoded.claims
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 \
                and claims.get("azp") != self.client_id:
            raise FederationError("the ID token was issued to another party (azp)")
        if not isinstance(claims.get("email"), str) or claims.get("email_verified") is not True:
            raise FederationError("the ID token carries no verified email address")
        return claims

    def asserted_roles(self, claims: dict[str, Any]) -> list[str] | None:
        if not self.role_claim:
            return None
        value = claims.get(self.role_claim)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
        return []


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _resume_target(value: str | None) -> str:
    target = safe_next(value)
    return target if target.startswith(("/oauth/authorize?", "/signin?")) else "/signin?next=/"


def start(appliance: Appliance, query: str, cookie: str | None, form: dict[str, str]) -> Page:
    resume = _resume_target(dict(_pairs(query)).get("resume"))
    try:
        provider = Provider(appliance.settings)
        provider.metadata()
    except FederationError as exc:
        return message("Sign-in unavailable", f"The organisation's sign-in cannot be used "
                       f"now: {exc}.", status=503)
    with appliance.sessions() as db, db.begin():
        row = ops.load_session(appliance, db, cookie, lock=True)
        if row is None or cookie is None or not ops.csrf_ok(cookie, form.get("csrf")):
            return message("Form refused", "The form could not be verified. Reload the page "
                           "and try again.", status=403)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        row.pending = {"state": _digest(state), "nonce": nonce, "verifier": verifier,
                       "resume": resume}
    return Page(303, location=provider.authorization_url(state=state, nonce=nonce,
                                                         verifier=verifier))


def callback(query: str) -> Page:
    """Step on to /finish from a page of ours, so the browser sends the session cookie."""
    page = message("Signing in", "Completing the sign-in with your organisation...",
                   status=200, refresh=f"/oauth/federated/finish?{query}")
    return page


def finish(appliance: Appliance, query: str, cookie: str | None, request_id: str) -> Page:
    params = dict(_pairs(query))
    with appliance.sessions() as db, db.begin():
        row = ops.load_session(appliance, db, cookie, lock=True)
        pending = dict(row.pending or {}) if row is not None else {}
        if row is None or not pending or not hmac.compare_digest(
                pending.get("state", ""), _digest(params.get("state", ""))):
            return message("Sign-in refused", "This sign-in did not start in this browser, or "
                           "has already been used. Start again.", status=400)
        row.pending = None  # single use, whatever happens next
    resume = _resume_target(pending.get("resume"))
    if "error" in params or not params.get("code"):
        return _failed(appliance, cookie, resume,
                       f"the provider refused: {params.get('error', 'no code')}", request_id)
    try:
        provider = Provider(appliance.settings)
        claims = provider.redeem(params["code"], verifier=pending["verifier"],
                                 nonce=pending["nonce"])
    except FederationError as exc:
        return _failed(appliance, cookie, resume, str(exc), request_id)
    with appliance.sessions() as db, db.begin():
        row = ops.load_session(appliance, db, cookie, lock=True)
        if row is None or row.stage != "anonymous":
            return message("Sign-in refused", "This sign-in expired. Start again.", status=400)
        outcome = ops.federated_step(appliance, db, row, claims["email"],
                                     provider.asserted_roles(claims), provider.issuer,
                                     request_id)
        token = outcome.token or cookie
        if outcome.status == "signed_in":
            return Page(303, location=resume, cookie=outcome.token)
        page = login_page(appliance, db, token, resume, error=outcome.message,
                          status=200 if outcome.status == "totp" else 401)
        if outcome.token:
            page.cookie = outcome.token
        return page


def _failed(appliance: Appliance, cookie: str | None, resume: str, reason: str,
            request_id: str) -> Page:
    with appliance.sessions() as db, db.begin():
        ops.audit_anonymous(appliance, db, "signin.federated", reason=reason[:300],
                            request_id=request_id)
        return login_page(appliance, db, cookie, resume, status=401,
                          error="Sign-in with your organisation failed. Try again or use your "
                                "Enclave password.")


def _pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def routes(appliance: Appliance) -> list[Route]:
    settings = appliance.settings

    async def start_endpoint(request: Request) -> Response:
        form = await form_or_refusal(request, settings)
        if isinstance(form, Response):
            return form
        page = await run_in_threadpool(start, appliance, request.url.query,
                                       session_cookie(request, settings), form)
        return respond(page, settings)

    async def callback_endpoint(request: Request) -> Response:
        return respond(callback(request.url.query), settings)

    async def finish_endpoint(request: Request) -> Response:
        page = await run_in_threadpool(finish, appliance, request.url.query,
                                       session_cookie(request, settings), uuid.uuid4().hex)
        return respond(page, settings)

    return [
        Route("/oauth/federated/start", start_endpoint, methods=["POST"]),
        Route(CALLBACK_PATH, callback_endpoint, methods=["GET"]),
        Route("/oauth/federated/finish", finish_endpoint, methods=["GET"]),
    ]
