"""`GET|POST /graphql` as a plain ASGI application, in front of Starlette's router.

Every API call comes through here, so the endpoint is written against ASGI itself: a request
for `/graphql` never passes Starlette's router, middleware stack, `Request` or `Response`
objects (for the lean lane's page reads that was a sixth of the Python work per request). It
does what the Starlette route did, in the same order: the method, the bearer token, the
client's rate, the body's size, the JSON payload and its shape, the size of the variables;
then the lean lane (schema.compiled.lean) or the executor in a worker thread. Every answer
carries the security headers the rest of the application adds by middleware
(`SECURITY_HEADERS`), and a failure nobody expected is logged and answered with a generic
error, never a trace.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import principal_from_token, require_active
from schema.compiled import lean
from schema.context import unit_of_work
from schema.graphql.execution import Limits, execute, schema_for
from schema.graphql.limits import RateLimiter
from schema.runtime import Appliance
from security.errors import Unauthenticated
from security.principal import Principal

log = logging.getLogger("enclave.api")

SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]
_JSON = (b"content-type", b"application/json")
_ALLOW = [(b"allow", b"GET, POST")]
_DECODER = json.JSONDecoder()


class Answer:
    """What to send: a status, a JSON body and any headers of its own."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or []


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON with keys in order, as Starlette's JSONResponse writes it; by orjson
    (several times faster on a page of rows), or the standard way for anything orjson does
    not take (it refuses what it cannot encode exactly)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8")


def graphql_error(status: int, message: str, code: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    return Answer(status, json_bytes({"errors": [{"message": message,
                                                  "extensions": {"code": code}}],
                                      "data": None}), headers)


def unauthenticated(exc: Unauthenticated) -> Answer:
    return graphql_error(401, exc.message, "UNAUTHENTICATED",
                         [(b"www-authenticate", b'Bearer error="invalid_token"')])


def new_request_id() -> str:
    """32 hex digits, as uuid4().hex gives, without building a UUID."""
    return os.urandom(16).hex()


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (ASGI names are lower case), as Latin-1 text."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _payload_from_query(pairs: list[tuple[str, str]]) -> dict[str, Any] | None:
    """GET /graphql?documentId=...&variables={...}&operationName=...; None when malformed."""
    payload: dict[str, Any] = {}
    for name, value in pairs:
        if name not in ("documentId", "variables", "operationName", "query") or name in payload:
            return None
        payload[name] = value
    if "variables" in payload:
        try:
            payload["variables"] = _parse_json(payload["variables"].encode("utf-8", "replace"))
        except ValueError:
            return None
    return payload


def _parse_json(raw: bytes) -> Any:
    """`json.loads`, without its per-call set-up for the usual UTF-8 body; raises ValueError
    (also for arrays or objects nested past the interpreter's recursion limit)."""
    try:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return json.loads(raw)  # UTF-16 or -32 (JSON allows them), or not JSON at all
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The body, or None when it is (or declares itself) over `limit` bytes."""
    declared = _header(scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            raise _Disconnected()
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


class _Disconnected(Exception):
    """The client went away before its request was read: nothing to answer."""


class GraphQLEndpoint:
    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance
        settings = appliance.settings
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.limits = Limits.of(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        try:
            answer = await self._answer(scope, receive, request_id)
        except _Disconnected:
            return
        except Exception:
            log.exception("request %s failed", request_id)
            answer = Answer(500, json_bytes({"errors": [{
                "message": "Internal error",
                "extensions": {"code": "INTERNAL", "requestId": request_id}}], "data": None}))
        headers = [_JSON, (b"content-length", b"%d" % len(answer.body)), *answer.headers,
                   *SECURITY_HEADERS]
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _answer(self, scope: Scope, receive: Receive, request_id: str) -> Answer:
        settings, limiter = self.settings, self.limiter
        method = scope["method"]
        if method not in ("GET", "POST"):
            return graphql_error(405, "use POST (or GET with a documentId)", "BAD_REQUEST",
                                 _ALLOW)
        url_params = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                               keep_blank_values=True) if method == "GET" else []
        if method == "GET" and all(name != "documentId" for name, _ in url_params):
            # GET only names registered documents: a query string in a URL would sit in logs
            # and caches, and a GET must not be able to mutate.
            return graphql_error(405, "GET takes a documentId (a registered document); send "
                                      "a query by POST", "BAD_REQUEST", _ALLOW)
        try:
            principal = principal_from_token(self.appliance, _header(scope, b"authorization"))
        except Unauthenticated as exc:
            return unauthenticated(exc)
        wait = limiter.take(principal.id)
        if wait:
            if limiter.should_audit(principal.id):
                await run_in_threadpool(self._audit_refusal, principal, request_id,
                                        f"rate limit: over {settings.rate_limit:g} requests/s "
                                        f"(burst {settings.rate_burst}); further refusals in the "
                                        "next minute are not audited one by one")
            return graphql_error(429, f"too many requests from this client (over "
                                      f"{settings.rate_limit:g}/s); retry after {wait:.2f} s",
                                 "RATE_LIMITED",
                                 [(b"retry-after", str(max(1, round(wait))).encode())])
        if method == "GET":
            payload: Any = _payload_from_query(url_params)
            if payload is None:
                return graphql_error(400, "GET takes documentId, variables (JSON) and "
                                          "operationName, each once", "BAD_REQUEST")
        else:
            raw = await _read_body(scope, receive, settings.max_body_bytes)
            if raw is None:
                if limiter.should_audit(f"{principal.id} size"):
                    await run_in_threadpool(self._audit_refusal, principal, request_id,
                                            f"request body over {settings.max_body_bytes} bytes")
                return graphql_error(413, f"request body over {settings.max_body_bytes} bytes",
                                     "BAD_REQUEST")
            try:
                payload = _parse_json(raw)
            except ValueError:  # UnicodeDecodeError included
                return graphql_error(400, "the body must be JSON: {\"query\": ..., "
                                          "\"variables\": {...}}", "BAD_REQUEST")
        if not isinstance(payload, dict):
            return graphql_error(400, "the body must be a JSON object", "BAD_REQUEST")
        document, document_id = payload.get("query"), payload.get("documentId")
        if document_id is None and isinstance(payload.get("extensions"), dict):
            # Apollo's automatic persisted queries name the document this way.
            persisted = payload["extensions"].get("persistedQuery")
            if isinstance(persisted, dict) and isinstance(persisted.get("sha256Hash"), str):
                document_id = "sha256:" + persisted["sha256Hash"]
        if document is not None and not isinstance(document, str):
            return graphql_error(400, "'query' must be a string", "BAD_REQUEST")
        if document_id is not None and not isinstance(document_id, str):
            return graphql_error(400, "'documentId' must be a string", "BAD_REQUEST")
        if document is None and document_id is None:
            return graphql_error(400, "the body must carry a 'query' string or a "
                                      "'documentId'", "BAD_REQUEST")
        if method == "GET" and document is not None:
            return graphql_error(405, "GET runs registered documents only (documentId); send "
                                      "a query by POST", "BAD_REQUEST", _ALLOW)
        variables = payload.get("variables")
        operation = payload.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            return graphql_error(400, "'variables' must be an object", "BAD_REQUEST")
        try:
            variables_size = len(json_bytes(variables)) if variables else 0
        except (UnicodeEncodeError, RecursionError, ValueError):
            # A lone surrogate ("\ud800") is valid JSON but not Unicode text; or too deep.
            return graphql_error(400, "'variables' hold text that is not Unicode (a lone "
                                      "surrogate) or are nested too deeply", "BAD_REQUEST")
        if variables_size > settings.max_variables_bytes:
            if limiter.should_audit(f"{principal.id} size"):
                await run_in_threadpool(self._audit_refusal, principal, request_id,
                                        f"variables over {settings.max_variables_bytes} bytes")
            return graphql_error(413, f"'variables' over {settings.max_variables_bytes} bytes",
                                 "BAD_USER_INPUT")
        if operation is not None and not isinstance(operation, str):
            return graphql_error(400, "'operationName' must be a string", "BAD_REQUEST")
        stamp = [(b"x-request-id", request_id.encode())]
        try:
            if document_id is not None and document is None:
                # A registered document of the lean shape is answered on this event loop
                # (schema.compiled.lean); any other case runs in a worker thread as usual.
                answer = await lean.run(self.appliance, principal,
                                        schema_for(introspection="admin" in principal.roles,
                                                   limits=self.limits)._schema,
                                        document_id, operation, variables, request_id)
                if answer is not None:
                    return Answer(200, json_bytes(answer), stamp)
            body = await run_in_threadpool(self._run, principal, document, variables, operation,
                                           request_id, document_id, method == "GET")
        except Unauthenticated as exc:
            return unauthenticated(exc)
        except Exception:
            log.exception("request %s failed", request_id)
            # The request id names the logged failure for whoever reports it.
            return graphql_error(503, "the request could not be completed; try again",
                                 "UNAVAILABLE", stamp)
        return Answer(200, json_bytes(body), stamp)

    def _run(self, principal: Principal, document: str | None,
             variables: dict[str, Any] | None, operation: str | None, request_id: str,
             document_id: str | None = None, read_only: bool = False) -> dict[str, Any]:
        return execute(self.appliance, principal, document, variables, operation, request_id,
                       admit=require_active, document_id=document_id, read_only=read_only)

    def _audit_refusal(self, principal: Principal, request_id: str, reason: str) -> None:
        """Refusals before the request runs (rate, size), at most one per client and kind per
        minute: a flood of them is not a flood of audit writes."""
        with unit_of_work(self.appliance, principal, request_id) as ctx:
            ctx.audit("graphql.refused", object_type="document", decision="deny", reason=reason)


class GraphQLFirst:
    """The application: `/graphql` straight to its endpoint, everything else to Starlette."""

    def __init__(self, graphql: GraphQLEndpoint, rest: ASGIApp) -> None:
        self.graphql, self.rest = graphql, rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/graphql":
            await self.graphql(scope, receive, send)
        else:
            await self.rest(scope, receive, send)
