"""Build the schema and run one GraphQL request as one unit of work.

Errors reach the caller with a stable `extensions.code`: our own errors keep their message;
anything unexpected is masked as INTERNAL with the request id (the traceback stays in the
server log).

Documents (docs/documents.md): a request names a registered document by `documentId` or sends
its text. In `trusted` mode only registered documents bound to the calling client run; the rest
are refused (PERSISTED_QUERY_NOT_FOUND, FORBIDDEN) and audited. A registered document of a
compiled shape runs on the compiled path (schema.compiled), others on strawberry's executor.
Every document is held to the depth, alias, token and cost limits.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import strawberry
from graphql import GraphQLError
from graphql import parse as _parse
from graphql import validate as _validate
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import (
    CannotGetOperationTypeError,
    InvalidOperationTypeError,
)
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType

from schema.compiled import BadVariables
from schema.compiled import run as run_compiled
from schema.compiled.cache import PLANS
from schema.context import CLIENT_ACTIVE, WEBHOOKS_ACTIVE, RequestContext, unit_of_work
from schema.graphql.known_documents import KnownValidDocuments
from schema.graphql.limits import CostLimiter
from schema.graphql.resolvers import Mutation, Query
from schema.names import camel
from schema.ops import documents
from schema.prelude import prelude_statement
from schema.runtime import KEYS_VERSION_KEY, Appliance
from security.authz import POLICY_VERSION_KEY
from security.principal import Principal
from storage.db import is_retryable

log = logging.getLogger("enclave.graphql")

# Defaults at least as strict as graphql-armor's; Settings.graphql_max_* change them.
MAX_DEPTH = 6
MAX_ALIASES = 15
MAX_TOKENS = 1000
MAX_COST = 5000
#: Error codes of documents refused by a limit (each refusal is audited).
LIMIT_MESSAGES = ("exceeds maximum operation depth", "aliases", "tokens", "costs")
_ATTEMPTS = 4
# graphql-core appends "Did you mean 'x'?" to unknown arguments, types and input fields too
# (strawberry's disable_field_suggestions only strips it from unknown output fields); with
# introspection off for most callers, such hints would hand out the schema name by name.
_SUGGESTION = re.compile(r"\s*Did you mean .*$", re.DOTALL)


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError],
                       execution_context: ExecutionContext | None = None) -> None:
        for error in errors:
            original = error.original_error
            if original is not None and not getattr(original, "public", False) \
                    and not isinstance(original, GraphQLError):
                log.error("unexpected error", exc_info=original)


@dataclass(frozen=True)
class Limits:
    depth: int = MAX_DEPTH
    aliases: int = MAX_ALIASES
    tokens: int = MAX_TOKENS
    cost: int = MAX_COST

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(settings.graphql_max_depth, settings.graphql_max_aliases,
                   settings.graphql_max_tokens, settings.graphql_max_cost)


DEFAULT_LIMITS = Limits()


def _build(*, introspection: bool, limits: Limits) -> strawberry.Schema:
    # The depth and alias limiters each define a rule class in their constructor: made once
    # here, not once per request (20 us per request for the two, and each class is a
    # reference cycle left for the garbage collector).
    limit_rules = [*QueryDepthLimiter(max_depth=limits.depth).validation_rules,
                   *MaxAliasesLimiter(max_alias_count=limits.aliases).validation_rules]
    # Factories, not instances: strawberry builds fresh extensions for every request.
    extensions: list[Any] = [
        lambda: ParserCache(maxsize=1024),
        lambda: AddValidationRules(limit_rules),
        lambda: MaxTokensLimiter(max_token_count=limits.tokens),
        lambda: CostLimiter(max_cost=limits.cost),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    # Last: the extensions above add their validation rules as validation begins, in this
    # order, and for a document that passed them all before it takes every rule away.
    extensions.append(KnownValidDocuments)
    return _Schema(query=Query, mutation=Mutation, extensions=extensions,
                   config=StrawberryConfig(disable_field_suggestions=True))


@cache
def schema_for(*, introspection: bool, limits: Limits = DEFAULT_LIMITS) -> strawberry.Schema:
    return _build(introspection=introspection, limits=limits)


def validate_document(body: str) -> list[str]:
    """Problems of a document against the schema (for registration): none when valid."""
    schema = schema_for(introspection=False)._schema
    try:
        document = _parse(body)
    except GraphQLError as exc:
        return [_SUGGESTION.sub("", exc.message)]
    return [_SUGGESTION.sub("", e.message) for e in _validate(schema, document)]


def sdl() -> str:
    return schema_for(introspection=True).as_str()


def _api_names(extensions: dict[str, Any]) -> dict[str, Any]:
    """Fields named in errors as the API spells them (nationalId, not national_id)."""
    if isinstance(extensions.get("field"), str):
        extensions["field"] = camel(extensions["field"])
    if isinstance(extensions.get("fields"), list):
        extensions["fields"] = [camel(f) if isinstance(f, str) else f
                                for f in extensions["fields"]]
    return extensions


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    original = error.original_error
    formatted: dict[str, Any] = {}
    # A bad variable value arrives wrapping graphql-core's own GraphQLError: the caller's
    # mistake, not an internal one.
    if original is None or isinstance(original, GraphQLError):
        message = _SUGGESTION.sub("", error.message)
        if message.startswith("Syntax Error"):
            code = "GRAPHQL_PARSE_FAILED"
        elif message.startswith("Variable '$"):
            code = "BAD_USER_INPUT"
        else:
            code = "GRAPHQL_VALIDATION_FAILED"
        given = (error.extensions or {}).get("code")
        extensions = dict(error.extensions or {}) if isinstance(given, str) else {"code": code}
        formatted = {"message": message, "extensions": extensions}
    elif getattr(original, "public", False):
        extensions = _api_names(dict(getattr(original, "extensions", {}) or {}))
        formatted = {"message": getattr(original, "message", str(original)),
                     "extensions": extensions}
    elif is_retryable(original):
        formatted = {"message": "The database is unavailable; try again",
                     "extensions": {"code": "UNAVAILABLE", "requestId": request_id}}
    else:
        formatted = {"message": "Internal error",
                     "extensions": {"code": "INTERNAL", "requestId": request_id}}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column}
                                  for loc in error.locations]
    if error.path:
        formatted["path"] = list(error.path)
    return formatted


_READ_ONLY = (OperationType.QUERY,)


def _refusal(message: str, code: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}], "data": None}


def _prelude(session: Session, *, timeout: int, client_id: str | None,
             document_id: str | None, found: dict[str, Any]) -> dict[str, str | None]:
    params: dict[str, Any] = {}
    if timeout:
        params["timeout"] = str(int(timeout))
    if client_id is not None:
        params["client_id"] = client_id
    if document_id is not None:
        params["document_id"] = document_id
    row = session.connection().execute(
        prelude_statement(bool(timeout), client_id is not None, document_id is not None,
                          webhooks=True),
        params).one()._mapping
    if client_id is not None:
        session.info[CLIENT_ACTIVE] = (client_id, row["client_active"] is True)
    session.info[WEBHOOKS_ACTIVE] = row["webhooks_active"] is True
    if document_id is not None:
        found["document_clients"] = row["document_clients"]
    return {KEYS_VERSION_KEY: row["keys_version"], POLICY_VERSION_KEY: row["policy_version"]}


def _admit_document(ctx: RequestContext, principal: Principal, document: str | None,
                    document_id: str | None,
                    prefetched: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The text to run, or the refusal to answer with (audited)."""
    trusted = ctx.appliance.settings.documents == "trusted"
    if document_id is None:
        if trusted:
            reason = ("this appliance runs registered documents only: send "
                      "{\"documentId\": \"sha256:...\"} (see `enclave documents add`)")
            documents.refused(ctx, None, reason)
            return None, _refusal(reason, "FORBIDDEN")
        return document, None
    found = (documents.lookup(ctx.session, document_id,
                              clients=prefetched["document_clients"])
             if "document_clients" in prefetched else documents.lookup(ctx.session, document_id))
    if found.body is None:
        reason = f"no registered document {document_id[:80]}"
        documents.refused(ctx, document_id[:80], reason)
        return None, _refusal(reason, "PERSISTED_QUERY_NOT_FOUND")
    if document is not None and documents.document_id(document) != document_id:
        reason = "the query sent is not the document its documentId names"
        documents.refused(ctx, document_id, reason)
        return None, _refusal(reason, "BAD_USER_INPUT")
    # An application's own token names it; a person's token names the web client it was
    # issued to (the application the person is using).
    client = principal.client_id if principal.kind == "user" else principal.id
    if trusted and client not in found.clients:
        reason = f"document {document_id} is not registered for client {client}"
        documents.refused(ctx, document_id, reason)
        return None, _refusal(reason, "FORBIDDEN")
    return found.body, None


def _audit_limits(ctx: RequestContext, errors: list[GraphQLError]) -> None:
    over = [e.message for e in errors if e.original_error is None
            and any(m in e.message for m in LIMIT_MESSAGES)]
    if over:
        ctx.audit("graphql.refused", object_type="document", decision="deny",
                  reason="; ".join(over)[:1000])


def execute(appliance: Appliance, principal: Principal, document: str | None,
            variables: Mapping[str, Any] | None, operation_name: str | None,
            request_id: str, *, admit: Callable[[Session, Principal], None] | None = None,
            document_id: str | None = None, compiled: bool = True, read_only: bool = False,
            ) -> dict[str, Any]:
    """Run the document; retry the whole unit after a lost connection or a read-only primary.

    `admit` runs first in the same unit of work (the API checks the client is not revoked).
    `document_id` names a registered document (`document`, if also given, must be its text);
    `compiled=False` forces the ordinary executor (the equivalence tests compare both);
    `read_only` (HTTP GET) refuses mutations."""
    limits = Limits.of(appliance.settings)
    schema = schema_for(introspection="admin" in principal.roles, limits=limits)
    timeout = appliance.settings.statement_timeout_ms
    postgres = appliance.engine.dialect.name == "postgresql"
    delay = 0.05
    for attempt in range(1, _ATTEMPTS + 1):
        prefetched: dict[str, Any] = {}
        prelude = partial(
            _prelude, timeout=timeout, found=prefetched,
            client_id=principal.id if admit is not None and principal.kind != "user" else None,
            document_id=document_id if document_id is not None
            and documents.is_document_id(document_id) else None) if postgres else None
        try:
            with unit_of_work(appliance, principal, request_id, prelude=prelude) as ctx:
                if admit is not None:
                    admit(ctx.session, principal)
                body, refusal = _admit_document(ctx, principal, document, document_id,
                                                prefetched)
                if refusal is not None:
                    return refusal
                assert body is not None
                plan = (PLANS.get(schema._schema, document_id, body, operation_name,
                                  max_tokens=limits.tokens)
                        if compiled and document_id is not None else None)
                data: dict[str, Any] | None
                if plan is not None:
                    try:
                        data, errors = run_compiled(plan, ctx, schema._schema, variables)
                    except BadVariables:
                        plan = None
                    else:
                        retryable = [e for e in errors if e.original_error is not None
                                     and is_retryable(e.original_error)]
                        if retryable and attempt < _ATTEMPTS:
                            raise retryable[0].original_error  # type: ignore[misc]
                        schema.process_errors(errors)
                        # A compiled plan only reads: its entries go to the group commit
                        # (PostgreSQL), durable before this returns.
                        ctx.defer_read_audit = postgres
                if plan is None:
                    try:
                        result = schema.execute_sync(
                            body, variable_values=dict(variables or {}), context_value=ctx,
                            operation_name=operation_name,
                            allowed_operation_types=_READ_ONLY if read_only else None)
                    except InvalidOperationTypeError:
                        return _refusal("GET runs queries only; send a mutation by POST",
                                        "BAD_REQUEST")
                    except CannotGetOperationTypeError as exc:  # not a server failure
                        return _refusal(f"{exc.as_http_error_reason().rstrip('.')}: "
                                        "operationName must name "
                                        "one operation of the document (and is needed when it "
                                        "holds several)", "BAD_REQUEST")
                    data, errors = result.data, list(result.errors or [])
                    retryable = [e for e in errors if e.original_error is not None
                                 and is_retryable(e.original_error)]
                    if retryable and attempt < _ATTEMPTS:
                        raise retryable[0].original_error  # type: ignore[misc]
                    if data is None and errors:
                        _audit_limits(ctx, errors)
        except DBAPIError as exc:
            if attempt < _ATTEMPTS and is_retryable(exc):
                time.sleep(delay)
                delay *= 2
                continue
            raise
        break
    response: dict[str, Any] = {}
    if errors:
        response["errors"] = [format_error(e, request_id) for e in errors]
    response["data"] = data
    return response
