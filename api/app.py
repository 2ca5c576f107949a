"""The application: GraphQL (api.graphql_http), and on Starlette the OAuth2/OIDC endpoints,
people's sign-in, the console and health."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import audit_timer, console, federation, signin
from api.graphql_http import SECURITY_HEADERS, GraphQLEndpoint, GraphQLFirst
from api.oauth import token_response
from api.oauth_code import SCOPES
from api.web import is_form, parse_form, read_body
from schema.runtime import Appliance

log = logging.getLogger("enclave.api")


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
                    h for h in SECURITY_HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(appliance: Appliance) -> ASGIApp:
    """The application: `/graphql` (api.graphql_http), and everything else on Starlette."""
    settings = appliance.settings

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
        async with audit_timer.running(appliance):
            yield
        await appliance.close_loop_connections()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders)
    app.state.appliance = appliance
    return GraphQLFirst(GraphQLEndpoint(appliance), app)
