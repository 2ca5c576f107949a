"""Plans by (document id, operation name, schema): compiled once, on first use.

A plan holds no decision that could go stale: the guard it calls takes every decision from
the request's policy snapshot (memoised per policy version) and opens values with the keys
of the current key version, so a policy or key change applies to the very next request. The
schema is part of the key, so a new schema (another root field, a changed type) compiles anew.
"""

from __future__ import annotations

import threading
from typing import Any

from graphql import GraphQLSchema

from schema.compiled.planner import Plan, Unsupported, compile_document

_NOT_COMPILED = object()


class PlanCache:
    def __init__(self, max_plans: int = 4096) -> None:
        self.max_plans = max_plans
        self._plans: dict[tuple[str, str | None, int], Any] = {}
        self._lock = threading.Lock()
        self.compiled = 0

    def get(self, schema: GraphQLSchema, doc_id: str, body: str,
            operation_name: str | None, *, max_tokens: int | None = None) -> Plan | None:
        """The plan, or None when the document is not of a compiled shape."""
        key = (doc_id, operation_name, id(schema))
        found = self._plans.get(key)
        if found is None:
            try:
                found = compile_document(schema, body, operation_name, max_tokens=max_tokens)
            except Unsupported:
                found = _NOT_COMPILED
            with self._lock:
                if len(self._plans) >= self.max_plans:
                    self._plans.clear()
                self._plans[key] = found
                self.compiled += 1
        return found if isinstance(found, Plan) else None

    def peek(self, schema: GraphQLSchema, doc_id: str,
             operation_name: str | None) -> Plan | None:
        """The plan if it is compiled already (no text needed), else None."""
        found = self._plans.get((doc_id, operation_name, id(schema)))
        return found if isinstance(found, Plan) else None

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()


#: The process's plans.
PLANS = PlanCache()
