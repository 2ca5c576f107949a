"""Reading a page of raw rows for a compiled plan: the guard's row reader, for plain tuples.

The lean lane (schema/compiled/lean.py) fetches a page as tuples straight from the database
driver, with no ORM and no `Guard` per request. This is where those tuples' sealed values
become plaintext, as the guard would make them: the decisions are the policy snapshot's
(taken once per plan, role set and policy version, never per row), only fields the caller
reads in full or masked qualify (a field that would be refused, needs consent, or is a custom
value makes `field_steps` answer None: the guard's own path runs such plans), the subject key
is opened by the key ring from the wrapped key the row brought, and the associated data, the
masks and the audit labels are the guard's.

Anything that is not the plain case (a value that does not open, a key that is missing or does
not unwrap, a value sealed under another version) raises `NotPlain`: the caller discards the
page and runs the request through the guard, which gives the exact answer, the
DATA_INTEGRITY errors and the audit notes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from security.audit import AuditEntry
from security.authz import READ, Decision, PolicySnapshot
from security.classification import mask_value
from security.fieldcrypt import open_column, place, row_places
from security.keys import KeyRing
from security.principal import Principal


class NotPlain(Exception):
    """This row needs the guard's careful path (see the module's docstring)."""


@dataclass(frozen=True)
class FieldStep:
    """How to read one field of a raw row."""

    name: str
    attribute: str
    #: Where the field is sealed (`fieldcrypt.place`), None for a plain column.
    where: bytes | None
    #: The mask to apply (a MASK decision), else None.
    mask: str | None
    #: The label its reads are audited under (personal fields), else None.
    label: str | None


def field_steps(policy: PolicySnapshot, roles: Sequence[str], object_type: str,
                field_names: Iterable[str]) -> list[FieldStep] | None:
    """The steps for reading `field_names` of `object_type` as `roles`, or None when one of
    them is not read plainly (refused, consent-bound, or a custom field)."""
    spec = policy.spec(object_type)
    steps = []
    for name in field_names:
        fspec = spec.field(name)
        decision = policy.field(roles, object_type, name, READ)
        if fspec.custom or decision not in (Decision.ALLOW, Decision.MASK):
            return None
        label = None
        if fspec.personal:
            label = name if decision is Decision.ALLOW else f"{name}:masked"
        steps.append(FieldStep(name, fspec.attr,
                               place(spec.table, name) if fspec.sealed else None,
                               fspec.mask if decision is Decision.MASK else None, label))
    return steps


def column_reader(keyring: KeyRing, steps: Sequence[FieldStep], columns: Sequence[int], *,
                  id_at: int, version_at: int | None, wrapped_at: int | None,
                  ) -> Callable[[Sequence[Sequence[Any]]], list[list[Any]]]:
    """Read the steps' fields of a page of raw rows, column by column: `columns[i]` is where
    step i's value sits in a row; `id_at`, `version_at` and `wrapped_at` where the row's id,
    key version and current wrapped subject key sit (None for the last two when no step is
    sealed). Returns one list per step, in row order, opened and masked."""
    getters = [operator.itemgetter(column) for column in columns]
    sealed_at = [(index, step.where) for index, step in enumerate(steps)
                 if step.where is not None]
    masked_at = [(index, step.mask) for index, step in enumerate(steps)
                 if step.mask is not None]
    if sealed_at and (version_at is None or wrapped_at is None):
        raise ValueError("sealed fields need the rows' key versions and wrapped keys")
    get_id = operator.itemgetter(id_at)
    get_version = operator.itemgetter(version_at or 0)
    get_wrapped = operator.itemgetter(wrapped_at or 0)

    def read(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        out = [list(map(get, rows)) for get in getters]
        if sealed_at and rows:
            try:
                ids = list(map(get_id, rows))
                versions = list(map(get_version, rows))
                wrapped = list(map(get_wrapped, rows))
                if None not in versions and None not in wrapped:
                    keys: list[Any] = keyring.prepared_subject_keys(
                        zip(ids, versions, wrapped, strict=True))
                else:  # rows that hold nothing sealed yet have no key (and no sealed value)
                    keys = [None if version is None or key is None
                            else keyring.prepared_subject_keys([(row_id, version, key)])[0]
                            for row_id, version, key in zip(ids, versions, wrapped,
                                                            strict=True)]
                    versions = [version or 0 for version in versions]
                headers, suffixes = row_places(ids, versions)
                for index, where in sealed_at:
                    out[index] = open_column(keys, headers, suffixes, where, out[index])
            except Exception as exc:  # noqa: BLE001 - any doubt: the guard's path decides
                raise NotPlain() from exc
        for index, mask in masked_at:
            out[index] = [None if value is None else mask_value(mask, str(value))
                          for value in out[index]]
        return out
    return read


def record_rule_columns(scopes: frozenset[str], principal: Principal,
                        ) -> Callable[[Sequence[str | None], Sequence[str | None]], list[bool]]:
    """`security.guard.record_rule` for a page at once: whether each record of the columns
    (teams, owners) is within `scopes` for `principal`, by C loops."""
    if "@all" in scopes:
        return lambda teams, owners: [True] * len(teams)
    own_team = principal.team if "@team" in scopes else None
    me = principal.id if "@own" in scopes else None

    def within(teams: Sequence[str | None], owners: Sequence[str | None]) -> list[bool]:
        none = [False] * len(teams)
        by_team = none if own_team is None else map(operator.eq, teams, repeat(own_team))
        by_owner = none if me is None else map(operator.eq, owners, repeat(me))
        return list(map(operator.or_, by_team, by_owner))
    return within


def audit_labels(steps: Iterable[FieldStep]) -> list[str]:
    """The labels reading these steps notes, in order, each once."""
    return list(dict.fromkeys(step.label for step in steps if step.label is not None))


def read_entries(principal: Principal, request_id: str | None,
                 reads: Iterable[tuple[str, Iterable[str], Sequence[str]]],
                 ) -> list[AuditEntry]:
    """The audit entries of a page read: one per (object type, ids read in order, labels),
    as `Guard.audit_entries` writes them; types that noted nothing write none."""
    entries = []
    for object_type, ids, labels in reads:
        object_ids = list(ids)
        if object_ids and labels:
            entries.append(AuditEntry(
                actor=principal.actor, roles=principal.roles, action=f"{object_type}.read",
                object_type=object_type, object_ids=object_ids, fields=list(labels),
                decision="allow", request_id=request_id))
    return entries
