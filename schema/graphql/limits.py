"""Limits for documents sent to the open path: a cost model, and a per-client rate limit.

Cost (checked before validation, and before anything runs): every selected field
costs 1 for each time it will be resolved. A field taking `first` resolves its selection
`first` times (its default when not given); the list directly inside it (a connection's
`edges`) adds nothing more; any other list field counts 10 per element level. Nested lists
multiply. `__typename` and introspection fields are free. The default limit (5000) is
graphql-armor's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    value_from_ast,
)
from graphql.type import GraphQLOutputType
from strawberry.extensions import SchemaExtension

UNPAGED_LIST = 10
_MAX_NESTING = 32


def _unwrap(type_: GraphQLOutputType) -> tuple[Any, bool]:
    is_list = False
    while isinstance(type_, (GraphQLNonNull, GraphQLList)):
        if isinstance(type_, GraphQLList):
            is_list = True
        type_ = type_.of_type
    return type_, is_list


def document_cost(schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode],
                  operation: OperationDefinitionNode, variables: Mapping[str, Any]) -> int:
    root = {"query": schema.query_type, "mutation": schema.mutation_type,
            "subscription": schema.subscription_type}[operation.operation.value]
    return _Costing(schema, fragments, variables).walk(operation.selection_set, root, False, 0)


class _Costing:
    """One document's cost walk. (A class rather than a closure that calls itself: such a
    closure is a reference cycle, left to the garbage collector on every request.)"""

    def __init__(self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode],
                 variables: Mapping[str, Any]) -> None:
        self.schema, self.fragments, self.variables = schema, fragments, variables
        # A selection set's cost scales with how many times it is resolved, so each
        # (selection set, type, paged, nesting) is costed once, for one resolution, and
        # multiplied where it is used. Walked afresh at every use, a fragment spread twice at
        # each level (or spread into itself: validation, which refuses that, runs after the
        # cost) doubled the work per level: `fragment F on Query { ...F ...F }` took minutes
        # at the nesting limit.
        self.known: dict[tuple[int, str, bool, int], int] = {}

    def walk(self, selections: SelectionSetNode, parent: Any, paged: bool, nesting: int) -> int:
        if nesting > _MAX_NESTING or not isinstance(parent, GraphQLObjectType):
            return 0
        key = (id(selections), parent.name, paged, nesting)
        found = self.known.get(key)
        if found is not None:
            return found
        schema = self.schema
        total = 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                definition = parent.fields.get(name)
                if name.startswith("__") or definition is None:
                    continue
                total += 1
                if selection.selection_set is None:
                    continue
                inner, is_list = _unwrap(definition.type)
                factor, inner_paged = 1, False
                if "first" in definition.args:
                    factor, inner_paged = _first(selection, definition, self.variables), True
                elif is_list and not paged:
                    factor = UNPAGED_LIST
                total += max(factor, 1) * self.walk(selection.selection_set, inner, inner_paged,
                                                    nesting + 1)
            elif isinstance(selection, InlineFragmentNode):
                target = (schema.get_type(selection.type_condition.name.value)
                          if selection.type_condition else parent)
                total += self.walk(selection.selection_set, target, paged, nesting + 1)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments.get(selection.name.value)
                if fragment is not None:
                    target = schema.get_type(fragment.type_condition.name.value)
                    total += self.walk(fragment.selection_set, target, paged, nesting + 1)
        self.known[key] = total
        return total


def _first(node: FieldNode, definition: Any, variables: Mapping[str, Any]) -> int:
    argument = definition.args["first"]
    for given in node.arguments or ():
        if given.name.value == "first":
            try:
                value = value_from_ast(given.value, argument.type, dict(variables))
            except (TypeError, ValueError, GraphQLError):
                value = None
            break
    else:
        value = argument.default_value
    # Out of GraphQL's Int range or not a number: variable coercion refuses it (BAD_USER_INPUT).
    return value if isinstance(value, int) and 0 < value < 2**31 else 1


class CostLimiter(SchemaExtension):
    """Refuses, before validation and execution, an operation whose cost is over `max_cost`.

    The cost reads the variables, so it is worked out on every request, even for a document
    validated before (schema.graphql.known_documents). It is worked out straight from the
    parsed document rather than as a validation rule: a rule needs graphql-core's walk of the
    whole document with its type bookkeeping, which for a known document would be the only
    validation left (that walk, with the depth and alias rules, was a fifth of a registered
    mutation's Python function calls by cProfile). A costly document is refused without being
    validated: the refusal does not depend on what else is wrong with it."""

    def __init__(self, max_cost: int) -> None:
        self.max_cost = max_cost

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None and context.pre_execution_errors is None:
            refusal = self._refusal(context.schema._schema, document, context.operation_name,
                                    context.variables or {})
            if refusal is not None:  # strawberry then skips validation and answers with it
                context.pre_execution_errors = [refusal]
        yield

    def _refusal(self, schema: GraphQLSchema, document: DocumentNode,
                 operation_name: str | None, variables: Mapping[str, Any],
                 ) -> GraphQLError | None:
        fragments = {definition.name.value: definition for definition in document.definitions
                     if isinstance(definition, FragmentDefinitionNode)}
        for operation in document.definitions:
            if not isinstance(operation, OperationDefinitionNode):
                continue
            if operation_name is not None and (operation.name is None
                                               or operation.name.value != operation_name):
                continue
            cost = document_cost(schema, fragments, operation, variables)
            if cost > self.max_cost:
                return GraphQLError(
                    f"the operation costs {cost}, over the limit of {self.max_cost} (a list "
                    "field costs its `first` times what it selects; ask for smaller pages "
                    "or fewer fields)", operation, extensions={"code": "QUERY_TOO_COSTLY",
                                                               "cost": cost,
                                                               "limit": self.max_cost})
        return None


class RateLimiter:
    """A token bucket per API client, in this process's memory: `rate` requests/s sustained,
    `burst` at once. Thread-safe; forgets clients idle long enough to be full again."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._reported: dict[str, float] = {}

    def take(self, client: str, now: float | None = None) -> float:
        """0.0 if the request may go ahead; otherwise the seconds until it could."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, stamp = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > 100_000:  # bounded: drop the full (idle) buckets
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
            return (1.0 - tokens) / self.rate

    def should_audit(self, client: str, every: float = 60.0, now: float | None = None) -> bool:
        """One audit entry per client per minute of refusals, so a flood is not a write flood."""
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._reported.get(client)
            if last is not None and now - last < every:
                return False
            self._reported[client] = now
            return True
