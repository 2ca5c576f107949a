"""Build the schema and run one GraphQL request as one unit of work.

Errors reach the caller with a stable `extensions.code`: our own errors keep their message;
anything unexpected is masked as INTERNAL with the request id (the traceback stays in the
server log).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import strawberry
from graphql import GraphQLError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from schema.context import unit_of_work
from schema.graphql.resolvers import Mutation, Query
from schema.runtime import Appliance
from security.principal import Principal
from storage.db import is_retryable

log = logging.getLogger("enclave.graphql")

MAX_DEPTH = 8
MAX_ALIASES = 15
MAX_TOKENS = 2000
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


def _build(*, introspection: bool) -> strawberry.Schema:
    # Factories, not instances: strawberry builds fresh extensions for every request.
    extensions: list[Any] = [
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    return _Schema(query=Query, mutation=Mutation, extensions=extensions,
                   config=StrawberryConfig(disable_field_suggestions=True))


@cache
def schema_for(*, introspection: bool) -> strawberry.Schema:
    return _build(introspection=introspection)


def sdl() -> str:
    return schema_for(introspection=True).as_str()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _api_names(extensions: dict[str, Any]) -> dict[str, Any]:
    """Fields named in errors as the API spells them (nationalId, not national_id)."""
    if isinstance(extensions.get("field"), str):
        extensions["field"] = _camel(extensions["field"])
    if isinstance(extensions.get("fields"), list):
        extensions["fields"] = [_camel(f) if isinstance(f, str) else f
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
        formatted = {"message": message, "extensions": {"code": code}}
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


def execute(appliance: Appliance, principal: Principal, document: str,
            variables: Mapping[str, Any] | None, operation_name: str | None,
            request_id: str, *, admit: Callable[[Session, Principal], None] | None = None,
            ) -> dict[str, Any]:
    """Run the document; retry the whole unit after a lost connection or a read-only primary.

    `admit` runs first in the same unit of work (the API checks the client is not revoked)."""
    schema = schema_for(introspection="admin" in principal.roles)
    delay = 0.05
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with unit_of_work(appliance, principal, request_id) as ctx:
                if admit is not None:
                    admit(ctx.session, principal)
                result = schema.execute_sync(document, variable_values=dict(variables or {}),
                                             context_value=ctx, operation_name=operation_name)
                retryable = [e for e in (result.errors or [])
                             if e.original_error is not None and is_retryable(e.original_error)]
                if retryable and attempt < _ATTEMPTS:
                    raise retryable[0].original_error  # type: ignore[misc]
        except DBAPIError as exc:
            if attempt < _ATTEMPTS and is_retryable(exc):
                time.sleep(delay)
                delay *= 2
                continue
            raise
        break
    body: dict[str, Any] = {}
    if result.errors:
        body["errors"] = [format_error(e, request_id) for e in result.errors]
    body["data"] = result.data
    return body
