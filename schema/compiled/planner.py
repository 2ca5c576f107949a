"""Compile a trusted document into a plan: which root operations to run with which
arguments, and for each returned row which fields to reveal, in which order, under which
response keys. Documents of other shapes are not compiled (the ordinary executor runs them).

Supported: one query operation with variables; root fields `contacts(first, after, filter)`,
`contact(id)`, `accounts(first, after)`, `account(id)` and `__typename` (a request that gives
the generic `filters`/`sort` runs the ordinary way); any selection of
their scalar fields, the nested `account { ... }` of a contact, connections' `edges { cursor
node }` and `pageInfo`, aliases and `__typename`. Not supported (falls back): fragments,
directives, mutations, repeated response keys, any other field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    parse,
    validate,
)


class Unsupported(Exception):
    """The document has a shape the compiler does not know; run it the ordinary way."""


# GraphQL field -> the guard's field name, per object type. `None`: the record id, which the
# ordinary path returns without asking the guard.
CONTACT_FIELDS: dict[str, str | None] = {
    "id": None, "firstName": "first_name", "lastName": "last_name", "title": "title",
    "email": "email", "phone": "phone", "address": "address", "birthDate": "birth_date",
    "nationalId": "national_id", "notes": "notes", "owner": "owner", "team": "team",
    "createdAt": "created_at", "updatedAt": "updated_at",
}
ACCOUNT_FIELDS: dict[str, str | None] = {
    "id": None, "name": "name", "industry": "industry", "website": "website", "owner": "owner",
    "team": "team", "createdAt": "created_at", "updatedAt": "updated_at",
}
DATETIME_FIELDS = {"created_at", "updated_at"}
PAGE_INFO_FIELDS = {"hasNextPage", "hasPreviousPage", "startCursor", "endCursor"}

# What each supported root field must look like in the schema (else: not compiled).
ROOTS: dict[str, tuple[str, str, frozenset[str]]] = {
    # name: (object type, kind, argument names)
    "contacts": ("contact", "list", frozenset({"first", "after", "filter", "filters", "sort"})),
    "contact": ("contact", "one", frozenset({"id"})),
    "accounts": ("account", "list", frozenset({"first", "after", "filter", "sort"})),
    "account": ("account", "one", frozenset({"id"})),
}
_TYPE_NAMES = {"contact": ("Contact", "ContactConnection", "ContactEdge"),
               "account": ("Account", "AccountConnection", "AccountEdge")}
_CONTACT_FILTER = {"accountId", "owner", "email", "phone"}


@dataclass
class Leaf:
    key: str
    node: FieldNode
    kind: str  # "field" (reveal), "id", "typename", "account" (nested), "cursor", "page"
    name: str = ""  # guard field / page-info field / type name
    children: list[Leaf] = field(default_factory=list)
    is_datetime: bool = False


@dataclass
class RootPlan:
    key: str
    node: FieldNode
    name: str  # schema root field, or "__typename"
    object_type: str = ""
    kind: str = ""
    #: list: the connection's selection; one: the record's selection.
    children: list[Leaf] = field(default_factory=list)
    #: Whether the page's statement joins each contact's account.
    joins_account: bool = False
    #: The guard fields this root reads, by object type (what its statement selects).
    fields: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Plan:
    document: DocumentNode
    operation: OperationDefinitionNode
    roots: list[RootPlan]
    #: Every (object type, guard field) the plan may reveal: decided per role set up front.
    fields: set[tuple[str, str]] = field(default_factory=set)
    #: The lean lane's view of this plan (schema.compiled.lean), worked out on first use.
    lean: Any = None
    #: Coerced root arguments by the variables that gave them (schema.compiled.runner).
    arguments: dict[bytes, list[Any]] = field(default_factory=dict)


def _key(node: FieldNode) -> str:
    return node.alias.value if node.alias else node.name.value


def _fields(selection_set: SelectionSetNode | None) -> list[FieldNode]:
    if selection_set is None:
        raise Unsupported("a selection is missing")
    nodes: list[FieldNode] = []
    keys: set[str] = set()
    for selection in selection_set.selections:
        if not isinstance(selection, FieldNode):
            raise Unsupported("fragments are not compiled")
        if selection.directives:
            raise Unsupported("directives are not compiled")
        key = _key(selection)
        if key in keys:
            raise Unsupported("repeated response keys are not compiled")
        keys.add(key)
        nodes.append(selection)
    return nodes


def _no_arguments(node: FieldNode) -> None:
    if node.arguments:
        raise Unsupported(f"arguments on {node.name.value} are not compiled")


def _record(selection: SelectionSetNode | None, object_type: str, plan: Plan,
            *, nested: bool) -> list[Leaf]:
    table = CONTACT_FIELDS if object_type == "contact" else ACCOUNT_FIELDS
    type_name = _TYPE_NAMES[object_type][0]
    leaves = []
    for node in _fields(selection):
        _no_arguments(node)
        name = node.name.value
        if name == "__typename":
            leaves.append(Leaf(_key(node), node, "typename", type_name))
        elif name == "account" and object_type == "contact" and not nested:
            plan.fields.add(("contact", "account"))
            leaves.append(Leaf(_key(node), node, "account", "account",
                               _record(node.selection_set, "account", plan, nested=True)))
        elif name in table:
            guard_name = table[name]
            if node.selection_set is not None:
                raise Unsupported("a scalar with a selection")
            if guard_name is None:
                leaves.append(Leaf(_key(node), node, "id"))
            else:
                plan.fields.add((object_type, guard_name))
                leaves.append(Leaf(_key(node), node, "field", guard_name,
                                   is_datetime=guard_name in DATETIME_FIELDS))
        else:
            raise Unsupported(f"{type_name}.{name} is not compiled")
    return leaves


def _connection(selection: SelectionSetNode | None, object_type: str, plan: Plan) -> list[Leaf]:
    _, connection_name, edge_name = _TYPE_NAMES[object_type]
    leaves = []
    for node in _fields(selection):
        _no_arguments(node)
        name = node.name.value
        if name == "__typename":
            leaves.append(Leaf(_key(node), node, "typename", connection_name))
        elif name == "edges":
            edge = []
            for inner in _fields(node.selection_set):
                _no_arguments(inner)
                if inner.name.value == "__typename":
                    edge.append(Leaf(_key(inner), inner, "typename", edge_name))
                elif inner.name.value == "cursor":
                    edge.append(Leaf(_key(inner), inner, "cursor"))
                elif inner.name.value == "node":
                    edge.append(Leaf(_key(inner), inner, "node", object_type,
                                     _record(inner.selection_set, object_type, plan,
                                             nested=False)))
                else:
                    raise Unsupported(f"{edge_name}.{inner.name.value} is not compiled")
            leaves.append(Leaf(_key(node), node, "edges", "", edge))
        elif name == "pageInfo":
            info = []
            for inner in _fields(node.selection_set):
                _no_arguments(inner)
                if inner.name.value == "__typename":
                    info.append(Leaf(_key(inner), inner, "typename", "PageInfo"))
                elif inner.name.value in PAGE_INFO_FIELDS:
                    info.append(Leaf(_key(inner), inner, "page", inner.name.value))
                else:
                    raise Unsupported(f"PageInfo.{inner.name.value} is not compiled")
            leaves.append(Leaf(_key(node), node, "pageInfo", "", info))
        else:
            raise Unsupported(f"{connection_name}.{name} is not compiled")
    return leaves


def _check_schema(schema: GraphQLSchema) -> None:
    """The schema still has the shapes the runner assumes (else nothing is compiled)."""
    query = schema.query_type
    if query is None:
        raise Unsupported("no query type")
    for name, (object_type, kind, arguments) in ROOTS.items():
        found = query.fields.get(name)
        if found is None or set(found.args) != arguments:
            raise Unsupported(f"Query.{name} is not the shape compiled")
        type_name = str(found.type).rstrip("!")
        expected = _TYPE_NAMES[object_type][1 if kind == "list" else 0]
        if type_name != expected:
            raise Unsupported(f"Query.{name} returns {type_name}")
    contact_filter = schema.get_type("ContactFilter")
    if contact_filter is None or set(getattr(contact_filter, "fields", {})) != _CONTACT_FILTER:
        raise Unsupported("ContactFilter is not the shape compiled")
    for object_type, table in (("contact", CONTACT_FIELDS), ("account", ACCOUNT_FIELDS)):
        record_type = schema.get_type(_TYPE_NAMES[object_type][0])
        known = set(getattr(record_type, "fields", {}))
        if not set(table) <= known:
            raise Unsupported(f"{object_type} fields changed")


def compile_document(schema: GraphQLSchema, body: str, operation_name: str | None,
                     *, max_tokens: int | None = None) -> Plan:
    """Parse, validate and plan `body`; raises Unsupported for what is not compiled (an
    invalid document included: the ordinary path reports its errors)."""
    _check_schema(schema)
    try:
        document = parse(body, max_tokens=max_tokens)
    except GraphQLError:
        raise Unsupported("does not parse") from None
    if validate(schema, document):
        raise Unsupported("does not validate")
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) != 1 or len(document.definitions) != 1:
        raise Unsupported("one operation and nothing else is compiled")
    operation = operations[0]
    if operation.operation is not OperationType.QUERY or operation.directives:
        raise Unsupported("only queries are compiled")
    if operation_name is not None and (operation.name is None
                                       or operation.name.value != operation_name):
        raise Unsupported("operation name does not match")
    plan = Plan(document, operation, [])
    for node in _fields(operation.selection_set):
        name = node.name.value
        if name == "__typename":
            plan.roots.append(RootPlan(_key(node), node, name))
            continue
        if name not in ROOTS:
            raise Unsupported(f"Query.{name} is not compiled")
        object_type, kind, _ = ROOTS[name]
        before = set(plan.fields)
        plan.fields = set()
        children = (_connection(node.selection_set, object_type, plan) if kind == "list"
                    else _record(node.selection_set, object_type, plan, nested=False))
        mine = plan.fields
        plan.fields = before | mine
        joins = kind == "list" and object_type == "contact" and any(
            inner.kind == "account" for leaf in children if leaf.kind == "edges"
            for edge in leaf.children if edge.kind == "node" for inner in edge.children)
        by_type: dict[str, set[str]] = {}
        for object_name, field_name in mine:
            by_type.setdefault(object_name, set()).add(field_name)
        plan.roots.append(RootPlan(_key(node), node, name, object_type, kind, children, joins,
                                   by_type))
    return plan


def describe(plan: Plan) -> dict[str, Any]:
    """For operators: what a plan runs."""
    return {"roots": [r.name for r in plan.roots],
            "fields": sorted(f"{o}.{f}" for o, f in plan.fields)}
