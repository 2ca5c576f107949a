"""The Starlette application: GraphQL, OAuth2/OIDC endpoints, people's sign-in, health."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import console, federation, signin
from api.auth import principal_from_token, require_active
from api.oauth import token_response
from api.oauth_code import SCOPES
from api.web import is_form, parse_form, read_body
from schema.compiled import lean
from schema.context import unit_of_work
from schema.graphql.execution import Limits, execute, schema_for
from schema.graphql.limits import RateLimiter
from schema.runtime import Appliance
from security.errors import Unauthenticated
from security.principal import Principal

log = logging.getLogger("enclave.api")

_SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]


class SecurityHeaders:
    """Strict defaults on every response: nothing cached, sniffed, framed or referred."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    h for h in _SECURITY_HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _json_response(body: Any, headers: dict[str, str]) -> Response:
    """The GraphQL answer as JSONResponse would write it (compact, UTF-8, keys in order), by
    orjson: several times faster on a page of rows; anything orjson does not take (it refuses
    what it cannot encode exactly) goes the standard way."""
    try:
        content = orjson.dumps(body)
    except TypeError:
        return JSONResponse(body, headers=headers)
    return Response(content, media_type="application/json", headers=headers)


def _graphql_error(status: int, message: str, code: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}],
                         "data": None}, status_code=status, headers=headers)


def _unauthenticated(exc: Unauthenticated) -> JSONResponse:
    return _graphql_error(401, exc.message, "UNAUTHENTICATED",
                          {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _payload_from_query(request: Request) -> dict[str, Any] | None:
    """GET /graphql?documentId=...&variables={...}&operationName=...; None when malformed."""
    params = request.query_params
    payload: dict[str, Any] = {}
    for name in ("documentId", "variables", "operationName", "query"):
        given = params.getlist(name)
        if len(given) > 1:
            return None
        if given:
            payload[name] = given[0]
    if set(params) - set(payload):
        return None
    if "variables" in payload:
        try:
            payload["variables"] = json.loads(payload["variables"])
        except ValueError:
            return None
    return payload


def create_app(appliance: Appliance) -> Starlette:
    settings = appliance.settings

    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    limits = Limits.of(settings)

    async def graphql(request: Request) -> Response:
        request_id = uuid.uuid4().hex
        if request.method == "GET" and "documentId" not in request.query_params:
            # GET only names registered documents: a query string in a URL would sit in logs
            # and caches, and a GET must not be able to mutate.
            return _graphql_error(405, "GET takes a documentId (a registered document); send "
                                       "a query by POST", "BAD_REQUEST", {"Allow": "GET, POST"})
        try:
            principal = principal_from_token(appliance, request.headers.get("authorization"))
        except Unauthenticated as exc:
            return _unauthenticated(exc)
        wait = limiter.take(principal.id)
        if wait:
            if limiter.should_audit(principal.id):
                await run_in_threadpool(_audit_refusal, principal, request_id,
                                        f"rate limit: over {settings.rate_limit:g} requests/s "
                                        f"(burst {settings.rate_burst}); further refusals in the "
                                        "next minute are not audited one by one")
            return _graphql_error(429, f"too many requests from this client (over "
                                       f"{settings.rate_limit:g}/s); retry after {wait:.2f} s",
                                  "RATE_LIMITED", {"Retry-After": str(max(1, round(wait)))})
        if request.method == "GET":
            payload: Any = _payload_from_query(request)
            if payload is None:
                return _graphql_error(400, "GET takes documentId, variables (JSON) and "
                                           "operationName, each once", "BAD_REQUEST")
        else:
            raw = await read_body(request, settings.max_body_bytes)
            if raw is None:
                if limiter.should_audit(f"{principal.id} size"):
                    await run_in_threadpool(_audit_refusal, principal, request_id,
                                            f"request body over {settings.max_body_bytes} bytes")
                return _graphql_error(413, f"request body over {settings.max_body_bytes} bytes",
                                      "BAD_REQUEST")
            try:
                payload = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return _graphql_error(400, "the body must be JSON: {\"query\": ..., "
                                           "\"variables\": {...}}", "BAD_REQUEST")
        if not isinstance(payload, dict):
            return _graphql_error(400, "the body must be a JSON object", "BAD_REQUEST")
        query, document_id = payload.get("query"), payload.get("documentId")
        if document_id is None and isinstance(payload.get("extensions"), dict):
            # Apollo's automatic persisted queries name the document this way.
            persisted = payload["extensions"].get("persistedQuery")
            if isinstance(persisted, dict) and isinstance(persisted.get("sha256Hash"), str):
                document_id = "sha256:" + persisted["sha256Hash"]
        if query is not None and not isinstance(query, str):
            return _graphql_error(400, "'query' must be a string", "BAD_REQUEST")
        if document_id is not None and not isinstance(document_id, str):
            return _graphql_error(400, "'documentId' must be a string", "BAD_REQUEST")
        if query is None and document_id is None:
            return _graphql_error(400, "the body must carry a 'query' string or a "
                                       "'documentId'", "BAD_REQUEST")
        if request.method == "GET" and query is not None:
            return _graphql_error(405, "GET runs registered documents only (documentId); send "
                                       "a query by POST", "BAD_REQUEST", {"Allow": "GET, POST"})
        variables = payload.get("variables")
        operation = payload.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            return _graphql_error(400, "'variables' must be an object", "BAD_REQUEST")
        if variables and len(json.dumps(variables)) > settings.max_variables_bytes:
            if limiter.should_audit(f"{principal.id} size"):
                await run_in_threadpool(_audit_refusal, principal, request_id,
                                        f"variables over {settings.max_variables_bytes} bytes")
            return _graphql_error(413, f"'variables' over {settings.max_variables_bytes} bytes",
                                  "BAD_USER_INPUT")
        if operation is not None and not isinstance(operation, str):
            return _graphql_error(400, "'operationName' must be a string", "BAD_REQUEST")
        try:
            if document_id is not None and query is None:
                # A registered document of the lean shape is answered on this event loop
                # (schema.compiled.lean); any other case runs in a worker thread as usual.
                answer = await lean.run(appliance, principal,
                                        schema_for(introspection="admin" in principal.roles,
                                                   limits=limits)._schema,
                                        document_id, operation, variables, request_id)
                if answer is not None:
                    return _json_response(answer, {"x-request-id": request_id})
            body = await run_in_threadpool(_run, principal, query, variables,
                                           operation, request_id, document_id,
                                           request.method == "GET")
        except Unauthenticated as exc:
            return _unauthenticated(exc)
        except Exception:
            log.exception("request %s failed", request_id)
            return _graphql_error(503, "the request could not be completed; try again",
                                  "UNAVAILABLE")
        return _json_response(body, {"x-request-id": request_id})

    def _run(principal: Principal, document: str | None, variables: dict[str, Any] | None,
             operation: str | None, request_id: str,
             document_id: str | None = None, read_only: bool = False) -> dict[str, Any]:
        return execute(appliance, principal, document, variables, operation, request_id,
                       admit=require_active, document_id=document_id, read_only=read_only)

    def _audit_refusal(principal: Principal, request_id: str, reason: str) -> None:
        """Refusals before the request runs (rate, size), at most one per client and kind per
        minute: a flood of them is not a flood of audit writes."""
        with unit_of_work(appliance, principal, request_id) as ctx:
            ctx.audit("graphql.refused", object_type="document", decision="deny", reason=reason)

    async def token(request: Request) -> Response:
        raw = await read_body(request, 16_384)
        if raw is None:
            return JSONResponse({"error": "invalid_request"}, status_code=413)
        if not is_form(request):
            return JSONResponse({"error": "invalid_request", "error_description":
                                 "use application/x-www-form-urlencoded"}, status_code=400)
        form = parse_form(raw)
        if form is None:  # RFC 6749 §3.2: parameters must not repeat (or not UTF-8)
            return JSONResponse({"error": "invalid_request", "error_description":
                                 "a parameter is repeated or not UTF-8"}, status_code=400)
        status, body, extra = await run_in_threadpool(token_response, appliance, form,
                                                      request.headers,
                                                      uuid.uuid4().hex)
        response = JSONResponse(body, status_code=status)
        for name, value in extra:
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        response.headers["pragma"] = "no-cache"
        return response

    async def openid_configuration(request: Request) -> Response:
        issuer = settings.resolved_issuer
        return JSONResponse({
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/oauth/authorize",
            "token_endpoint": f"{issuer}/oauth/token",
            "userinfo_endpoint": f"{issuer}/oauth/userinfo",
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials", "authorization_code"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post", "none"],
            "scopes_supported": list(SCOPES),
            "claims_supported": ["sub", "email", "email_verified", "roles", "team",
                                 "auth_time", "amr", "nonce"],
            "id_token_signing_alg_values_supported": ["Ed25519"],
            "subject_types_supported": ["public"],
            "prompt_values_supported": ["none", "login"],
        }, headers={"cache-control": "public, max-age=300"})

    async def jwks(request: Request) -> Response:
        return JSONResponse(appliance.tokens.jwks(), headers={"cache-control": "public, max-age=300"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok, checks = await run_in_threadpool(appliance.ready)
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                            status_code=200 if ok else 503)

    routes: list[BaseRoute] = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        Route("/oauth/token", token, methods=["POST"]),
        Route("/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *signin.routes(appliance),
        *federation.routes(appliance),
        *console.routes(appliance),
        Mount("/static", StaticFiles(packages=[("api", "static")]), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await appliance.close_loop_connections()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders)
    app.state.appliance = appliance
    return app
