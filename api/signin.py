"""People's sign-in over HTTP: the authorization endpoint, first-party sign-in, sign-out, userinfo.

    GET  /oauth/authorize   validate the request (client, exact redirect URI, PKCE S256); if
                            the browser already has a full session, answer with a code at once
                            (first-party clients: no consent screen); else the sign-in page
    POST /oauth/authorize   the sign-in page's forms: password, then TOTP when required, or
                            cancel (access_denied to the client)
    GET  /signin?next=/p    the same sign-in for the appliance's own pages (the console)
    GET  /logout, POST /logout
    GET  /oauth/userinfo    OpenID Connect UserInfo for a person's access token

Every handler runs in one database transaction; failures, locks and sign-ins are audited by
`schema.ops.signin` in it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import bearer_token
from api.oauth import TokenServer
from api.oauth_code import user_claims
from api.web import Page, form_or_refusal, message, respond, session_cookie, single_params
from schema.ops import signin as ops
from schema.runtime import Appliance
from security.audit import AuditEntry
from security.errors import Unauthenticated
from storage.models import User

AUTHORIZE_URI = "https://enclave.local/oauth/authorize"  # authlib wants https; TLS is in front


def authorize_request(params: dict[str, str]) -> OAuth2Request:
    request = OAuth2Request("GET", AUTHORIZE_URI)
    request.payload = BasicOAuth2Payload(params)
    return request


def safe_next(value: str | None) -> str:
    """Only a path on this appliance: no scheme, no other host, no backslash tricks."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value \
            or any(ord(c) < 33 for c in value) or len(value) > 500:
        return "/"
    return value


def _audit(appliance: Appliance, db: Session, action: str, *, reason: str | None = None,
           decision: str = "deny", actor: str = "anonymous", roles: tuple[str, ...] = (),
           object_ids: list[str] | None = None, fields: list[str] | None = None,
           request_id: str | None = None) -> None:
    appliance.append_audit(db, [AuditEntry(
        actor=actor, roles=roles, action=action, object_type="client",
        object_ids=object_ids or [], fields=fields or [], decision=decision,
        reason=reason, request_id=request_id)])


# -- the sign-in page and its forms -------------------------------------------------------------

def login_page(appliance: Appliance, db: Session, cookie: str | None, action: str, *,
               error: str | None = None, status: int = 200, email: str | None = None,
               client_name: str | None = None, cancel: bool = False) -> Page:
    """The password page, or the TOTP page if the first factor is done."""
    row = ops.load_session(appliance, db, cookie)
    new = None
    if row is None or row.stage == "full":
        row, new = ops.start_session(db)
    token = new or cookie or ""
    context = {"action": action, "csrf": ops.csrf_token(token), "error": error, "email": email,
               "client_name": client_name, "cancel": cancel,
               "federation": appliance.settings.federation_enabled,
               "federation_action": "/oauth/federated/start?" + urlencode({"resume": action})}
    template = "totp.html" if row.stage == "password" else "signin.html"
    return Page(status, template, context, cookie=new)


def login_post(appliance: Appliance, db: Session, cookie: str | None, form: dict[str, str],
               action: str, *, on_success: Callable[[ops.SignedIn], Page],
               on_cancel: Callable[[], Page] | None, request_id: str,
               client_name: str | None = None) -> Page:
    def page_for(token: str | None, **details: Any) -> Page:
        return login_page(appliance, db, token, action, client_name=client_name,
                          cancel=on_cancel is not None, **details)

    row = ops.load_session(appliance, db, cookie, lock=True)
    if row is None:
        return page_for(None, status=400, error="This sign-in page has expired. Sign in again.")
    if cookie is None or not ops.csrf_ok(cookie, form.get("csrf")):
        _audit(appliance, db, "signin.csrf", reason="CSRF token missing or wrong",
               request_id=request_id)
        return message("Form refused", "The form could not be verified. Reload the page and "
                       "try again.", status=403)
    step = form.get("step")
    if step == "cancel" and on_cancel is not None:
        return on_cancel()
    if row.stage == "full":  # submitted twice; already signed in
        who = ops.signed_in(appliance, db, cookie)
        if who is not None:
            return on_success(who)
    if step == "password" and row.stage == "anonymous":
        outcome = ops.password_step(appliance, db, row, form.get("email", ""),
                                    form.get("password", ""), request_id)
    elif step == "totp" and row.stage == "password":
        outcome = ops.totp_step(appliance, db, row, form.get("code", ""), request_id)
    else:
        return page_for(cookie, status=400, error="Unexpected form. Sign in again.")
    token = outcome.token or cookie
    if outcome.status == "signed_in":
        who = ops.signed_in(appliance, db, token)
        if who is None:  # pragma: no cover - the session was just completed
            return page_for(None, status=500)
        page = on_success(who)
    else:
        failed = outcome.status == "failed"
        page = page_for(token, error=outcome.message, status=401 if failed else 200,
                        email=form.get("email") if failed and step == "password" else None)
    if outcome.token:
        page.cookie = outcome.token
    return page


# -- the authorization endpoint -----------------------------------------------------------------

def authorize(appliance: Appliance, query: str, cookie: str | None,
              form: dict[str, str] | None, request_id: str) -> Page:
    params = single_params(query)
    if params is None:
        return message("Sign-in request refused", "A parameter of the request is repeated.")
    with appliance.sessions() as db, db.begin():
        server = TokenServer(appliance, db, authorize=True)
        request = authorize_request(params)
        who = ops.signed_in(appliance, db, cookie) if form is None else None
        try:
            grant = server.get_consent_grant(request, end_user=who)
        except OAuth2Error as error:
            return _refused(appliance, db, error, params, request_id)
        client = grant.request.client
        action = f"/oauth/authorize?{query}"

        def issue(person: ops.SignedIn) -> Page:
            status, _, headers = server.create_authorization_response(
                request, grant_user=person, grant=grant)
            location = dict(headers).get("Location")
            granted = status == 302 and "code=" in (location or "")
            _audit(appliance, db, "signin.authorize", decision="allow" if granted else "deny",
                   actor=f"user:{person.user.id}", roles=person.roles,
                   object_ids=[client.get_client_id()], request_id=request_id,
                   fields=[f"scope:{request.scope or ''}"])
            return Page(302, location=location)

        def cancel() -> Page:
            _, _, headers = server.create_authorization_response(request, grant_user=None,
                                                                 grant=grant)
            return Page(302, location=dict(headers).get("Location"))

        if form is None:
            prompt = params.get("prompt", "").split()
            if who is not None and "login" not in prompt:
                return issue(who)
            return login_page(appliance, db, cookie, action, client_name=client.row.name,
                              cancel=True)
        return login_post(appliance, db, cookie, form, action, on_success=issue,
                          on_cancel=cancel, request_id=request_id, client_name=client.row.name)


def _refused(appliance: Appliance, db: Session, error: OAuth2Error, params: dict[str, str],
             request_id: str) -> Page:
    status, _, headers = error()
    location = dict(headers).get("Location")
    client_id = params.get("client_id", "")[:64]
    _audit(appliance, db, "signin.authorize", reason=f"{error.error}: {error.description}"[:300],
           object_ids=[client_id] if client_id else [], request_id=request_id)
    if location and status == 302:
        return Page(302, location=location)
    return message("Sign-in request refused",
                   f"{error.error}: {error.description or 'the request is not valid'}")


def first_party(appliance: Appliance, query: str, cookie: str | None,
                form: dict[str, str] | None, request_id: str) -> Page:
    """Sign in for the appliance's own pages, then go to `next` (a local path)."""
    target = safe_next((single_params(query) or {}).get("next"))
    action = "/signin?" + urlencode({"next": target})
    with appliance.sessions() as db, db.begin():
        if form is None:
            if ops.signed_in(appliance, db, cookie) is not None:
                return Page(303, location=target)
            return login_page(appliance, db, cookie, action)
        return login_post(appliance, db, cookie, form, action, request_id=request_id,
                          on_success=lambda who: Page(303, location=target), on_cancel=None)


def sign_out(appliance: Appliance, cookie: str | None, form: dict[str, str] | None,
             request_id: str) -> Page:
    with appliance.sessions() as db, db.begin():
        row = ops.load_session(appliance, db, cookie, lock=form is not None)
        who = ops.signed_in(appliance, db, cookie) if row is not None else None
        if form is None:
            if who is None or cookie is None:
                return message("Not signed in", "This browser is not signed in.", status=200)
            return Page(200, "signout.html", {"csrf": ops.csrf_token(cookie),
                                              "email": who.user.email})
        if row is None:
            page = message("Signed out", "This browser is not signed in.", status=200)
            page.cookie = ""
            return page
        if not ops.csrf_ok(cookie, form.get("csrf")):
            _audit(appliance, db, "signin.csrf", reason="CSRF token missing or wrong (sign-out)",
                   request_id=request_id)
            return message("Form refused", "The form could not be verified. Reload the page "
                           "and try again.", status=403)
        ops.end_session(appliance, db, row, request_id)
    page = message("Signed out", "You have signed out. Access tokens issued through this "
                   "sign-in no longer work.", status=200)
    page.cookie = ""
    return page


# -- userinfo -----------------------------------------------------------------------------------

def userinfo(appliance: Appliance, authorization: str | None) -> tuple[int, dict[str, object]]:
    try:
        claims = appliance.tokens.verify(bearer_token(authorization))
    except Unauthenticated as exc:
        return 401, {"error": "invalid_token", "error_description": exc.message}
    if claims.get("kind") != "user":
        return 401, {"error": "invalid_token", "error_description": "not a person's token"}
    if "openid" not in str(claims.get("scope", "")).split():
        return 403, {"error": "insufficient_scope", "error_description": "needs scope openid"}
    with appliance.sessions() as db:
        user = db.get(User, claims["sub"])
        if user is None or user.disabled_at is not None \
                or not ops.session_active(db, str(claims.get("sid", ""))):
            return 401, {"error": "invalid_token", "error_description": "signed out or disabled"}
        return 200, user_claims(user, claims["roles"], str(claims.get("scope", "")))


# -- routes -------------------------------------------------------------------------------------

def routes(appliance: Appliance) -> list[Route]:
    settings = appliance.settings

    def page_endpoint(handler: Callable[[str, str | None, dict[str, str] | None, str], Page],
                      ) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint that shows a page on GET and takes its form on POST."""
        async def endpoint(request: Request) -> Response:
            form: dict[str, str] | None = None
            if request.method == "POST":
                got = await form_or_refusal(request, settings)
                if isinstance(got, Response):
                    return got
                form = got
            page = await run_in_threadpool(handler, request.url.query,
                                           session_cookie(request, settings), form,
                                           uuid.uuid4().hex)
            return respond(page, settings)
        return endpoint

    authorize_endpoint = page_endpoint(
        lambda query, cookie, form, rid: authorize(appliance, query, cookie, form, rid))
    signin_endpoint = page_endpoint(
        lambda query, cookie, form, rid: first_party(appliance, query, cookie, form, rid))
    logout_endpoint = page_endpoint(
        lambda query, cookie, form, rid: sign_out(appliance, cookie, form, rid))

    async def userinfo_endpoint(request: Request) -> Response:
        status, body = await run_in_threadpool(userinfo, appliance,
                                               request.headers.get("authorization"))
        headers = {"WWW-Authenticate": f'Bearer error="{body["error"]}"'} if status != 200 \
            else None
        return JSONResponse(body, status_code=status, headers=headers)

    return [
        Route("/oauth/authorize", authorize_endpoint, methods=["GET", "POST"]),
        Route("/signin", signin_endpoint, methods=["GET", "POST"]),
        Route("/logout", logout_endpoint, methods=["GET", "POST"]),
        Route("/oauth/userinfo", userinfo_endpoint, methods=["GET", "POST"]),
    ]
