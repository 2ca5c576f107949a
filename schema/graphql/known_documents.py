"""Validate a document against the schema once, not on every request.

Every request used to run graphql-core's whole rule set (about thirty rules, plus depth,
aliases and introspection) over its document, though a document that passed them once passes
them again: those rules look only at the document and the schema, and each schema object here
is fixed for the life of the process (one per introspection setting and limits,
`execution.schema_for`). Registered documents and the mutations of internal applications come
back thousands of times; their validation was a quarter of a mutation's CPU.

`KnownValidDocuments` remembers (schema, document text) pairs that passed every rule, in a
bounded LRU. For a remembered pair no rule runs again. The cost limit, which reads the
variables, is not a rule: it is worked out on every request (`limits.CostLimiter`). A document
that failed anything is not remembered.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

from strawberry.extensions import SchemaExtension

_MAX_REMEMBERED = 1024


class _Remembered:
    def __init__(self, size: int) -> None:
        self._size = size
        self._pairs: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[int, str]) -> bool:
        with self._lock:
            if key in self._pairs:
                self._pairs.move_to_end(key)
                return True
            return False

    def add(self, key: tuple[int, str]) -> None:
        with self._lock:
            self._pairs[key] = None
            self._pairs.move_to_end(key)
            while len(self._pairs) > self._size:
                self._pairs.popitem(last=False)


VALID = _Remembered(_MAX_REMEMBERED)


class KnownValidDocuments(SchemaExtension):
    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        key = (id(context.schema), context.query or "")
        known = bool(context.query) and key in VALID
        if known:  # strawberry runs no validation for an empty rule set
            context.validation_rules = ()
        yield
        if not known and context.query and context.pre_execution_errors == []:
            VALID.add(key)
