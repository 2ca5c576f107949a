"""Run a compiled plan inside a unit of work and build the response straight from rows.

The runner calls the same operations (scope clause, subject keys brought along by the page
query, one batched account load) and asks the guard for every field in the order the ordinary
executor does, depth first in document order; so the guard decides, masks, refuses and notes
the same reads, the audit entries are the same, and errors come out in the same order with the
same paths and locations. Only strawberry's and graphql-core's per-field machinery is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from graphql import GraphQLError, GraphQLID, GraphQLSchema, GraphQLString, located_error
from graphql.execution.values import get_argument_values, get_variable_values

from schema.compiled.planner import Leaf, Plan, RootPlan
from schema.compiled.sql import contacts_page, needed
from schema.context import RequestContext
from schema.ops import accounts, contacts
from security.guard import ReadFailure


class BadVariables(Exception):
    """The variables do not fit the document (the ordinary path reports it), or ask for what
    the plan does not do; raised before anything ran."""


def _string(value: Any) -> Any:
    if value is None or type(value) is str:
        return value
    return GraphQLString.serialize(value)


_FIELD, _DATETIME, _ACCOUNT, _ID, _TYPENAME = range(5)


_PLAIN = frozenset({str, type(None)})


def _common_shape(part: list[tuple[int, str, Leaf, Any]]) -> Any:
    """(id key or None, keys of the plain fields, (key, leaf, builder) of a trailing nested
    account or None) when the part is [id,] fields [, account]; None for any other part."""
    codes = [code for code, _, _, _ in part]
    start = 1 if codes[:1] == [_ID] else 0
    end = len(codes) - 1 if codes[-1:] == [_ACCOUNT] else len(codes)
    if any(code != _FIELD for code in codes[start:end]):
        return None
    id_key = part[0][1] if start else None
    account = (part[-1][1], part[-1][2], part[-1][3]) if end < len(codes) else None
    return id_key, [key for _, key, _, _ in part[start:end]], account


class _Run:
    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.errors: list[GraphQLError] = []
        #: Accounts joined to the current page of contacts, by id.
        self.joined: dict[str, Any] = {}

    def fail(self, exc: Exception, leaf: Leaf | RootPlan, path: list[str | int]) -> None:
        self.errors.append(located_error(exc, [leaf.node], path))

    def builder(self, object_type: str, leaves: list[Leaf]) -> Any:
        """How to build one record of `object_type` with `leaves`, made once per page. The
        guard reads each run of fields up to and including a nested `account` (its id) through
        one row reader (decisions taken once), in document order, so the guard's calls, audit
        notes and errors come in the order the ordinary executor gives them."""
        guard = self.ctx.guard
        parts: list[tuple[Any, list[tuple[int, str, Leaf, Any]]]] = []
        names: list[str] = []
        slots: list[tuple[int, str, Leaf, Any]] = []

        def close() -> None:
            if slots:
                parts.append((guard.row_reader(object_type, list(names)) if names else None,
                              list(slots)))
                names.clear()
                slots.clear()

        for leaf in leaves:
            if leaf.kind == "field":
                names.append(leaf.name)
                slots.append((_DATETIME if leaf.is_datetime else _FIELD, leaf.key, leaf, None))
            elif leaf.kind == "id":
                slots.append((_ID, leaf.key, leaf, None))
            elif leaf.kind == "typename":
                slots.append((_TYPENAME, leaf.key, leaf, leaf.name))
            else:  # the nested account: its id is the guard's next read, then its fields
                names.append("account")
                slots.append((_ACCOUNT, leaf.key, leaf, self.builder("account", leaf.children)))
                close()
        close()
        fail = self.fail
        shapes = [_common_shape(part) for _, part in parts]

        def build(row: Any, path: list[str | int]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for (reader, part), shape in zip(parts, shapes, strict=True):
                if shape is not None and reader is not None:
                    read = reader(row)
                    # The usual part: [id,] plain fields that came back as text or null
                    # [, the nested account]: written in one step, in document order.
                    if _PLAIN.issuperset(map(type, read)):
                        id_key, field_keys, account = shape
                        if id_key is not None:
                            record_id = row.id
                            out[id_key] = (record_id if type(record_id) is str
                                           else GraphQLID.serialize(record_id))
                        # (`read` ends with the account's id when there is one)
                        out.update(zip(field_keys, read, strict=False))
                        if account is not None:
                            key, leaf, extra = account
                            out[key] = self.account(row, read[-1], leaf, extra, [*path, key])
                        continue
                    values = iter(read)
                else:
                    values = iter(reader(row)) if reader is not None else iter(())
                for code, key, leaf, extra in part:
                    if code == _ID:
                        record_id = row.id
                        out[key] = (record_id if type(record_id) is str
                                    else GraphQLID.serialize(record_id))
                        continue
                    if code == _TYPENAME:
                        out[key] = extra
                        continue
                    value = next(values)
                    if code == _ACCOUNT:
                        out[key] = self.account(row, value, leaf, extra, [*path, key])
                    elif value is None:
                        out[key] = None
                    elif code == _FIELD and type(value) is str:
                        out[key] = value
                    elif isinstance(value, ReadFailure):
                        fail(value.error, leaf, [*path, key])
                        out[key] = None
                    else:
                        out[key] = value.isoformat() if code == _DATETIME else _string(value)
            return out
        return build

    def record(self, object_type: str, row: Any, leaves: list[Leaf],
               path: list[str | int]) -> dict[str, Any]:
        result: dict[str, Any] = self.builder(object_type, leaves)(row, path)
        return result

    def account(self, contact: Any, account_id: Any, leaf: Leaf, build: Any,
                path: list[str | int]) -> Any:
        """The nested account, given what the guard read as the contact's account id."""
        if isinstance(account_id, ReadFailure):
            self.fail(account_id.error, leaf, path)
            return None
        try:
            if account_id is None:
                return None
            if account_id == contact.account_id and account_id in self.joined:
                row = self.joined[account_id]
            else:
                row = self.ctx.accounts.load(account_id)
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, leaf, path)
            return None
        return None if row is None else build(row, path)

    def connection(self, root: RootPlan, page: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for leaf in root.children:
            if leaf.kind == "typename":
                out[leaf.key] = leaf.name
            elif leaf.kind == "edges":
                edges = []
                builds = {id(inner): self.builder(root.object_type, inner.children)
                          for inner in leaf.children if inner.kind == "node"}
                for index, row in enumerate(page.items):
                    edge: dict[str, Any] = {}
                    for inner in leaf.children:
                        if inner.kind == "cursor":
                            edge[inner.key] = page.cursor_of(row)
                        elif inner.kind == "typename":
                            edge[inner.key] = inner.name
                        else:
                            edge[inner.key] = builds[id(inner)](
                                row, [root.key, leaf.key, index, inner.key])
                    edges.append(edge)
                out[leaf.key] = edges
            else:  # pageInfo
                info: dict[str, Any] = {}
                for inner in leaf.children:
                    if inner.kind == "typename":
                        info[inner.key] = inner.name
                    elif inner.name == "hasNextPage":
                        info[inner.key] = page.has_next
                    elif inner.name == "hasPreviousPage":
                        info[inner.key] = page.has_previous
                    elif inner.name == "startCursor":
                        info[inner.key] = page.start_cursor
                    else:
                        info[inner.key] = page.end_cursor
                out[leaf.key] = info
        return out

    def root(self, root: RootPlan, args: Mapping[str, Any]) -> Any:
        ctx = self.ctx
        if root.name == "contacts":
            page, self.joined = contacts_page(
                ctx, first=args.get("first"), after=args.get("after"),
                contact_filter=args.get("filter") or {},
                contact_columns=needed(ctx, "contact", root.fields.get("contact", ())),
                account_columns=(needed(ctx, "account", root.fields.get("account", ()))
                                 if root.joins_account else None))
            try:
                return self.connection(root, page)
            finally:
                self.joined = {}
        if root.name == "accounts":
            return self.connection(root, accounts.list_accounts(
                ctx, first=args.get("first"), after=args.get("after")))
        row: Any = (contacts.get_contact(ctx, args["id"]) if root.name == "contact"
                    else accounts.get_account(ctx, args["id"]))
        return self.record(root.object_type, row, root.children, [root.key])


#: Coerced arguments kept per plan (distinct variables seen); then it starts again.
_ARGUMENTS_KEPT = 256


def root_arguments(plan: Plan, schema: GraphQLSchema,
                   variables: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Each root's arguments, coerced as graphql-core coerces them; raises BadVariables when
    they do not coerce, or ask for what the plan does not do (generic search and sort).

    The same variables coerce the same way every time, so a plan remembers the arguments of
    the variables it has seen (graphql-core's coercion was a tenth of a page read's Python
    work). The lists and mappings given back are shared: read them, never change them."""
    try:
        key = orjson.dumps(variables, option=orjson.OPT_SORT_KEYS) if variables else b""
    except TypeError:  # not JSON (variables come from a JSON body): nothing to remember by
        return _coerce(plan, schema, variables)
    found = plan.arguments.get(key)
    if found is None:
        found = _coerce(plan, schema, variables)
        if len(plan.arguments) >= _ARGUMENTS_KEPT:
            plan.arguments.clear()
        plan.arguments[key] = found
    return found


def _coerce(plan: Plan, schema: GraphQLSchema,
            variables: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    coerced = get_variable_values(schema, plan.operation.variable_definitions or (),
                                  dict(variables or {}))
    if isinstance(coerced, list):
        raise BadVariables()
    query = schema.query_type
    assert query is not None
    arguments: list[Mapping[str, Any]] = []
    try:
        for root in plan.roots:
            arguments.append({} if root.name == "__typename" else
                             get_argument_values(query.fields[root.name], root.node, coerced))
    except GraphQLError:
        raise BadVariables() from None
    for root, args in zip(plan.roots, arguments, strict=True):
        generic = ("filters", "sort") if root.name == "contacts" else ("filter", "sort")
        if root.kind == "list" and any(args.get(name) is not None for name in generic):
            raise BadVariables()  # generic search and sort: not compiled yet
    return arguments


def run(plan: Plan, ctx: RequestContext, schema: GraphQLSchema,
        variables: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[GraphQLError]]:
    """data and errors, as graphql-core would give them. Raises BadVariables before anything
    ran when the variables or arguments do not coerce."""
    arguments = root_arguments(plan, schema, variables)
    query = schema.query_type
    assert query is not None
    runner = _Run(ctx)
    data: dict[str, Any] = {}
    for root, args in zip(plan.roots, arguments, strict=True):
        if root.name == "__typename":
            data[root.key] = query.name
            continue
        try:
            data[root.key] = runner.root(root, args)
        except Exception as exc:  # noqa: BLE001 - a root field fails alone (nullable)
            runner.fail(exc, root, [root.key])
            data[root.key] = None
    return data, runner.errors
