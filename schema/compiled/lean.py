"""The lean lane: a compiled page of contacts read in one statement, with no ORM and no
transaction, on PostgreSQL.

For a registered document whose plan is one `contacts(first, after, filter)` connection (any
selection of contact fields, the nested account last, cursors, page info, `__typename`s), and
a caller every one of whose fields is granted in full or masked, the whole request is one
SELECT on a plain autocommit connection (storage.raw_connections): the prelude every request
reads (key and policy versions, whether the client is active, the document's bound clients)
LEFT JOIN LATERAL the page statement of schema.compiled.sql (the caller's record rules, the
keyset, the limit, each row's wrapped subject key, the joined account). The rows are opened by
security.page_reader (decisions taken once per plan, role set and policy version), the answer
is written straight from the tuples, and the read's audit entries go through the group append
(durable before the answer leaves), as the compiled runner's do.

The lane answers only when everything is the plain case. Anything else, found before or after
the statement (a plan of another shape, a filter on a field the caller may not read, bad
variables, a policy or key version this process has not loaded, a revoked client, a document
not bound to the caller, a field that does not open, an account outside the join, a lost
connection) returns None having written nothing, and the request runs the usual way, which
answers, refuses and audits exactly (tests/test_compiled.py holds all three paths to the same
bytes and the same audit entries).
"""

from __future__ import annotations

import functools
import json
import operator
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any

from graphql import GraphQLSchema
from sqlalchemy import Text, cast, select
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from schema.compiled.cache import PLANS
from schema.compiled.planner import Leaf, Plan, RootPlan
from schema.compiled.runner import BadVariables, root_arguments
from schema.compiled.sql import (
    BUILDING,
    Filters,
    columns_needed,
    filter_params,
    page_statement,
    scope_flags,
    searched,
)
from schema.ops import validation
from schema.prelude import prelude_statement
from schema.runtime import Appliance
from security import page_reader
from security.audit import AuditEntry
from security.authz import READ, Decision, PolicySnapshot
from security.errors import EnclaveError
from security.principal import Principal
from storage.columns import UTCDateTime
from storage.raw_connections import LoopDatabaseError, RawConnections

_NOT_LEAN = False
#: Where the prelude's values stand in a row (`_Lean._combined`, `_prelude_only`).
_KEYS_AT, _POLICY_AT, _CLIENT_AT, _CLIENTS_AT = range(4)
_NO_FILTER: Filters = (False, False, False, False)
_PLAIN = frozenset({str, type(None)})
_to_utc = UTCDateTime().process_result_value
#: Lean plans kept per compiled plan (role sets x policy versions x keys versions).
_MAX_VARIANTS = 64
#: Statements kept per lean plan (keyset or not x filters x page sizes).
_MAX_STATEMENTS = 512
_DIALECT = asyncpg_dialect.dialect()


@dataclass(frozen=True)
class _Shape:
    """What a plan of the lean shape reads: its one `contacts` root and the node's leaves."""

    root: RootPlan
    #: The node's leaves up to (not including) the nested account; the account leaf or None.
    leaves: tuple[Leaf, ...]
    account: Leaf | None


def _shape(plan: Plan) -> _Shape | None:
    roots = [root for root in plan.roots if root.name != "__typename"]
    if len(roots) != 1 or roots[0].name != "contacts" or roots[0].kind != "list":
        return None
    root = roots[0]
    nodes = [inner for leaf in root.children if leaf.kind == "edges"
             for inner in leaf.children if inner.kind == "node"]
    if len(nodes) > 1:
        return None
    leaves = tuple(nodes[0].children) if nodes else ()
    account = None
    if any(leaf.kind == "account" for leaf in leaves):
        if leaves[-1].kind != "account":  # the account last: the audit notes keep their order
            return None
        account, leaves = leaves[-1], leaves[:-1]
        if any(leaf.kind not in ("id", "field", "typename") for leaf in account.children):
            return None
    if any(leaf.kind not in ("id", "field", "typename") for leaf in leaves):
        return None
    return _Shape(root, leaves, account)


class _Writer:
    """How to write the records of one selection (the node's leaves up to the account, or the
    account's) from their ids and the reader's columns (the fields, in leaf order)."""

    def __init__(self, leaves: Sequence[Leaf]) -> None:
        #: The guard fields the reader reads, in leaf order.
        self.names = [leaf.name for leaf in leaves if leaf.kind == "field"]
        id_keys = [leaf.key for leaf in leaves if leaf.kind == "id"]
        field_keys = [leaf.key for leaf in leaves if leaf.kind == "field"]
        #: The usual selection, [id] text fields: written by C loops (`zip`, `dict`).
        self.keys: tuple[str, ...] | None = None
        self.with_id = bool(id_keys)
        if (not any(leaf.kind == "typename" or leaf.is_datetime for leaf in leaves)
                and len(id_keys) <= 1 and (not id_keys or leaves[0].kind == "id")):
            self.keys = (*id_keys, *field_keys)
        self.steps: list[tuple[str, int, Any]] = []
        index = 0
        for leaf in leaves:
            if leaf.kind == "field":
                self.steps.append((leaf.key, 1 if leaf.is_datetime else 0, index))
                index += 1
            elif leaf.kind == "id":
                self.steps.append((leaf.key, 2, 0))
            else:
                self.steps.append((leaf.key, 3, leaf.name))

    def write(self, ids: list[Any], columns: list[list[Any]]) -> list[dict[str, Any]]:
        """The records, from their ids and the field columns (`columns[:len(names)]`)."""
        fields = columns[:len(self.names)]
        if self.keys is not None and all(_PLAIN.issuperset(map(type, column))
                                         for column in fields):
            if not self.keys:
                return [{} for _ in ids]
            values = (zip(ids, *fields, strict=True) if self.with_id
                      else zip(*fields, strict=True))
            return list(map(dict, map(functools.partial(zip, self.keys), values)))
        rows = zip(*fields, strict=True) if fields else [()] * len(ids)
        return [self._careful(record_id, values)
                for record_id, values in zip(ids, rows, strict=True)]

    def _careful(self, record_id: Any, values: Sequence[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, kind, extra in self.steps:
            if kind == 0:
                value = values[extra]
                if value is not None and type(value) is not str:
                    raise page_reader.NotPlain()
                out[key] = value
            elif kind == 1:
                value = values[extra]
                out[key] = None if value is None else _to_utc(value, None).isoformat()  # type: ignore[union-attr]
            elif kind == 2:
                out[key] = record_id
            else:
                out[key] = extra
        return out


class _Lean:
    """A plan made lean for one role set, policy version and keys version: the statement, the
    readers, the writers."""

    def __init__(self, appliance: Appliance, shape: _Shape, principal: Principal,
                 policy: PolicySnapshot) -> None:
        roles = principal.roles
        self.ok = False
        contact_scopes = policy.scopes(roles, "contact", READ)
        if not contact_scopes:
            return  # a refusal: the usual path words and audits it
        self.scope = scope_flags(contact_scopes, principal)
        _, self.team, self.own = self.scope
        root = shape.root
        # The record rules are the statement's own, so the rows bring only what is read:
        # ids, key versions, the fields, and the account's team and owner (whether the
        # caller may see it).
        self.contact_columns = columns_needed(policy, "contact", root.fields.get("contact", ()),
                                              ("id", "key_version"))
        self.account_columns = (columns_needed(policy, "account", root.fields.get("account", ()),
                                               ("id", "owner", "team"))
                                if root.joins_account else None)
        self.appliance = appliance
        self._statements: dict[tuple[bool, Filters, int], _Statement] = {}
        sample = self._combined(False, _NO_FILTER, 1)
        names = list(sample.selected_columns.keys())
        at = {name: index for index, name in enumerate(names)}
        if len(at) != len(names):
            return
        if (at["keys_version"], at["policy_version"], at["client_active"],
                at["document_clients"]) != (_KEYS_AT, _POLICY_AT, _CLIENT_AT, _CLIENTS_AT):
            return
        self.id_at = at["id"]
        self.node = _Writer(shape.leaves)
        contact_fields = [*self.node.names, *(["account"] if shape.account else [])]
        contact_steps = page_reader.field_steps(policy, roles, "contact", contact_fields)
        if contact_steps is None:
            return
        self.contact_labels = page_reader.audit_labels(contact_steps)
        self.read_contacts = page_reader.column_reader(
            appliance.keyring, contact_steps, [at[step.attribute] for step in contact_steps],
            id_at=self.id_at, version_at=at["key_version"], wrapped_at=at["current_wrapped_key"])
        self.account_key: str | None = None
        if shape.account is not None:
            self.account = _Writer(shape.account.children)
            account_steps = page_reader.field_steps(policy, roles, "account", self.account.names)
            if account_steps is None or any(step.where is not None for step in account_steps):
                return  # an account's sealed fields need its own key: not on this lane
            self.account_key = shape.account.key
            self.account_labels = page_reader.audit_labels(account_steps)
            self.account_id_at, self.joined_id_at = at["account_id"], at["acc__id"]
            self.account_team_at, self.account_owner_at = at["acc__team"], at["acc__owner"]
            self.read_accounts = page_reader.column_reader(
                appliance.keyring, account_steps,
                [at[f"acc__{step.attribute}"] for step in account_steps],
                id_at=self.joined_id_at, version_at=None, wrapped_at=None)
            self.account_rule = page_reader.record_rule_columns(
                policy.scopes(roles, "account", READ), principal)
        self.ok = True

    def _combined(self, keyset: bool, filters: Filters, size: int) -> Any:
        """The page statement with the prelude's values as columns of every row: sub-selects
        that do not depend on the row, which PostgreSQL computes once per statement."""
        page = page_statement(self.contact_columns, self.account_columns, self.scope,
                              filters, keyset, size)
        # The prelude first: its values stand where they stand in `_prelude_only`'s row.
        return page.with_only_columns(*_prelude_columns(), *page.selected_columns)

    def statement(self, keyset: bool, filters: Filters, size: int) -> _Statement:
        found = self._statements.get((keyset, filters, size))
        if found is None:
            with BUILDING:  # the page statement is shared with the runner's threads
                found = _Statement(self._combined(keyset, filters, size))
            if len(self._statements) >= _MAX_STATEMENTS:
                self._statements.clear()
            self._statements[(keyset, filters, size)] = found
        return found


def _prelude_columns() -> list[Any]:
    # The clients come as text, parsed once.
    return [cast(column, Text).label(column.name) if column.name == "document_clients"
            else column for column in prelude_statement(False, True, True).selected_columns]


class _Statement:
    """A statement as asyncpg runs it: its text with $n placeholders and the names of its
    parameters in order (SQLAlchemy's asyncpg dialect writes both)."""

    __slots__ = ("defaults", "names", "sql")

    def __init__(self, statement: Any) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        self.defaults = dict(compiled.params)

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        defaults = self.defaults
        return [params[name] if name in params else defaults[name] for name in self.names]


#: The empty page's statement: the prelude alone.
_PRELUDE_ONLY: _Statement | None = None


def _prelude_only() -> _Statement:
    global _PRELUDE_ONLY
    if _PRELUDE_ONLY is None:
        with BUILDING:
            _PRELUDE_ONLY = _Statement(select(*_prelude_columns()))
    return _PRELUDE_ONLY


_LOCK = threading.Lock()


class Counts:
    """How many requests this process's lean lane answered (for tests and the benchmark)."""

    answered = 0


def _lean_for(appliance: Appliance, plan: Plan, shape: _Shape, principal: Principal,
              policy: PolicySnapshot, keys_version: int) -> _Lean | None:
    variants: dict[Any, _Lean] = plan.lean[1]
    key = (principal.roles, principal.team is not None, id(policy), policy.version, keys_version)
    found = variants.get(key)
    if found is None:
        with BUILDING:
            found = _Lean(appliance, shape, principal, policy)
        with _LOCK:
            if len(variants) >= _MAX_VARIANTS:
                variants.clear()
            variants[key] = found
    return found if found.ok else None


async def run(appliance: Appliance, principal: Principal, schema: GraphQLSchema,
              document_id: str, operation_name: str | None,
              variables: Mapping[str, Any] | None, request_id: str) -> dict[str, Any] | None:
    """The response, or None when the request is not for this lane (nothing was written).
    Runs on the server's event loop: one statement, then the audit entries' group commit."""
    connections = appliance.raw_connections
    if connections is None or appliance.unguarded or principal.kind == "user":
        return None
    plan = PLANS.peek(schema, document_id, operation_name)
    if plan is None:
        return None
    if plan.lean is None:
        shape = _shape(plan)
        plan.lean = (shape, {}) if shape is not None else _NOT_LEAN
    if plan.lean is _NOT_LEAN:
        return None
    policy, keys_version = appliance.authoriser.current, appliance.keys_version
    if policy is None:
        return None
    shape = plan.lean[0]
    lean = _lean_for(appliance, plan, shape, principal, policy, keys_version)
    if lean is None:
        return None
    try:
        arguments = root_arguments(plan, schema, variables)
    except BadVariables:
        return None
    args = next(a for r, a in zip(plan.roots, arguments, strict=True) if r is shape.root)
    try:
        size = validation.page_size(args.get("first"))
        after_id = validation.decode_cursor(args.get("after"))
        contact_filter = args.get("filter") or {}
        if any(policy.field(principal.roles, "contact", name, READ) is Decision.DENY
               for name in searched(contact_filter)):
            return None  # a search on what the caller may not read: refused the usual way
        filters, filter_values = filter_params(contact_filter, appliance.keyring.search_index)
    except EnclaveError:
        return None
    appender = appliance.loop_appender()
    appender.expect()  # this read will hand entries soon: a batch about to go may wait for it
    try:
        read = await _read(appliance, principal, schema, plan, shape, lean, policy,
                           keys_version, document_id, request_id, filters, filter_values,
                           size, after_id, connections)
    except BaseException:
        appender.unexpect()
        raise
    if read is None:
        appender.unexpect()
        return None
    response, entries = read
    # Durable before the answer leaves, or this raises.
    await appender.append(entries, expected=True)
    Counts.answered += 1
    return response


def _consume(iterator: Iterator[Any]) -> None:
    """Run an iterator of side effects to its end (in C)."""
    deque(iterator, maxlen=0)


async def _read(appliance: Appliance, principal: Principal, schema: GraphQLSchema, plan: Plan,
                shape: _Shape, lean: _Lean, policy: PolicySnapshot, keys_version: int,
                document_id: str, request_id: str, filters: Filters, params: dict[str, Any],
                size: int, after_id: str | None, connections: RawConnections,
                ) -> tuple[dict[str, Any], list[AuditEntry]] | None:
    """The page's statement and its answer, with the audit entries of what it read; None
    when the request is not for this lane (nothing was written)."""
    params["client_id"] = principal.id
    params["document_id"] = document_id
    if after_id is not None:
        params["after_id"] = after_id
    if lean.team:
        params["scope_team"] = principal.team
    if lean.own:
        params["scope_owner"] = principal.id
    statement = lean.statement(after_id is not None, filters, size + 1)
    try:
        connection = await connections.get()
    except LoopDatabaseError:  # no connection to be had: the usual path answers or says why
        return None
    try:
        rows = await connection.fetch(statement.sql, *statement.arguments(params))
        if rows:
            head = rows[0]
        else:  # an empty page: the prelude's values on their own
            prelude = _prelude_only()
            head = await connection.fetchrow(prelude.sql, *prelude.arguments(params))
    except LoopDatabaseError:
        connections.discard(connection)  # lost, timed out...: the usual path retries
        return None
    except BaseException:
        connections.discard(connection)  # cancelled mid-statement: its state is unknown
        raise
    connections.put(connection)
    clients = head[_CLIENTS_AT]
    clients = json.loads(clients) if clients is not None else None
    if (int(head[_KEYS_AT] or 0) != keys_version
            or int(head[_POLICY_AT] or 0) != policy.version
            or head[_CLIENT_AT] is not True or not isinstance(clients, list)
            or (appliance.settings.documents == "trusted" and principal.id not in clients)):
        return None
    try:
        answer, reads = _answer(plan, shape, lean, rows, size, after_id is not None)
    except page_reader.NotPlain:
        return None
    query = schema.query_type
    data = {root.key: (query.name if root.name == "__typename" and query is not None
                       else answer) for root in plan.roots}
    return {"data": data}, page_reader.read_entries(principal, request_id, reads)


def _answer(plan: Plan, shape: _Shape, lean: _Lean, rows: list[Any], size: int,
            has_previous: bool) -> tuple[dict[str, Any], list[Any]]:
    """The connection and what the page read (for the audit), column by column: the
    per-row work is in C loops wherever the selection allows."""
    page = rows[:size]
    ids = list(map(operator.itemgetter(lean.id_at), page))
    columns = lean.read_contacts(page)
    nodes = lean.node.write(ids, columns)
    # The guard notes a row's contact fields before its account's (the account is the node's
    # last leaf), so the contact entry comes first whenever both are written.
    reads: list[Any] = [("contact", ids, lean.contact_labels)]
    account_key = lean.account_key
    if account_key is not None:
        # The account id as the caller reads it (`contact.account`, the reader's last column),
        # the joined account's id and the stored one: the same, or the usual path answers
        # (an account gone since, or an id masked).
        read_ids = columns[-1]
        joined = list(map(operator.itemgetter(lean.joined_id_at), page))
        stored = list(map(operator.itemgetter(lean.account_id_at), page))
        if read_ids != stored or joined != stored:
            raise page_reader.NotPlain()
        accounts = lean.account.write(joined, lean.read_accounts(page))
        # A contact without an account, or whose account the caller may not see, reads null.
        shown = list(map(operator.and_, map(operator.is_not, joined, repeat(None)),
                         lean.account_rule(list(map(operator.itemgetter(lean.account_team_at),
                                                    page)),
                                           list(map(operator.itemgetter(lean.account_owner_at),
                                                    page)))))
        # (None, account)[shown]: the account where shown, else None.
        _consume(map(dict.__setitem__, nodes, repeat(account_key),
                     map(operator.getitem, zip(repeat(None), accounts), shown)))
        reads.append(("account", dict.fromkeys(compress(joined, shown)), lean.account_labels))
    return _connection(shape.root, page, nodes, lean.id_at, len(rows) > size,
                       has_previous), reads


def _connection(root: RootPlan, page: list[Any], nodes: list[dict[str, Any]], id_at: int,
                has_next: bool, has_previous: bool) -> dict[str, Any]:
    """The connection as `_Run.connection` writes it."""
    out: dict[str, Any] = {}
    for leaf in root.children:
        if leaf.kind == "typename":
            out[leaf.key] = leaf.name
        elif leaf.kind == "edges":
            inner = leaf.children
            if len(inner) == 1 and inner[0].kind == "node":
                # [{node_key: node} for node in nodes], by C loops.
                out[leaf.key] = list(map(dict, zip(zip(repeat(inner[0].key), nodes))))
                continue
            edges = []
            for row, node in zip(page, nodes, strict=True):
                edge: dict[str, Any] = {}
                for part in inner:
                    if part.kind == "cursor":
                        edge[part.key] = validation.encode_cursor(row[id_at])
                    elif part.kind == "typename":
                        edge[part.key] = part.name
                    else:
                        edge[part.key] = node
                edges.append(edge)
            out[leaf.key] = edges
        else:
            info: dict[str, Any] = {}
            for part in leaf.children:
                if part.kind == "typename":
                    info[part.key] = part.name
                elif part.name == "hasNextPage":
                    info[part.key] = has_next
                elif part.name == "hasPreviousPage":
                    info[part.key] = has_previous
                elif part.name == "startCursor":
                    info[part.key] = validation.encode_cursor(page[0][id_at]) if page else None
                else:
                    info[part.key] = validation.encode_cursor(page[-1][id_at]) if page else None
            out[leaf.key] = info
    return out
