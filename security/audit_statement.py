"""Audit entries appended in one statement on PostgreSQL: `SELECT audit_append_entries(...)`.

Appending a batch in a transaction of the application's own takes four round trips (begin,
lock the head, insert and move the head, commit), and on the appliance's hardware every round
trip wakes two processes. The database function of migration 0006 does the same work inside
one autocommit statement: it locks the head row, chains each entry to the one before, inserts
the rows, moves the head, and the statement's own commit makes them durable before it answers.

The chain hash is SHA-256 over the entry's canonical JSON (`security.audit.canonical`). Only
three of its values are known under the head lock (previous hash, sequence number, time); the
application sends the rest already encoded as pieces of text around them and around the object
ids (which go once, as their column), and the function puts the entry together, hashes it and
stores its Merkle leaf hash too. `enclave audit verify` recomputes every hash from the stored columns,
so an entry chained any other way is found. When a signed checkpoint falls due within the batch
the function writes nothing: the caller then appends through `security.audit.append`, which
signs it.

A failed call either certainly wrote nothing (`NotWritten`: the server refused the statement
and rolled it back) or may have (`MaybeWritten`: the connection broke after the statement was
sent, so its commit is unknown). The second is settled by `append_unless_present`, which looks
for the batch in the log before appending it: an entry is neither lost nor, as far as the log
can tell, written twice.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg
import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session

from security import audit
from security.audit import HEAD_FOR_UPDATE, AuditEntry, canonical_json
from security.keys import KeyRing
from storage.models import AuditEvent
from storage.raw_connections import LoopDatabaseError


class NotWritten(Exception):
    """The append wrote nothing (the statement was refused, or never sent): append the entries
    another way."""


class MaybeWritten(Exception):
    """The connection broke once the append was sent: it may have committed. Settle it with
    `append_unless_present`."""


_ARGUMENTS = 12
_CALL = "SELECT audit_append_entries(" + ", ".join(["%b"] * _ARGUMENTS) + ")"
#: The same for asyncpg (an event loop's connection), which numbers its parameters.
_LOOP_CALL = ("SELECT audit_append_entries("
              + ", ".join(f"${n}" for n in range(1, _ARGUMENTS + 1)) + ")")


def arguments(entries: Sequence[AuditEntry]) -> list[list[str | None]]:
    """The function's arguments (migration 0007): the canonical encoding of each entry in
    pieces around its object ids, which go once (they are a column too, and most of an entry),
    and around the three values known only under the lock: previous hash, sequence number and
    time; then one array per column. Keys in sorted order, as `canonical` writes them."""
    befores: list[str | None] = []
    object_ids: list[str | None] = []
    afters: list[str | None] = []
    middles: list[str | None] = []
    roles: list[str | None] = []
    fields: list[str | None] = []
    for entry in entries:
        before, fields_json = _before_ids(entry.action, entry.actor, entry.decision,
                                          tuple(entry.fields))
        roles_json = _json_list(tuple(entry.roles))
        befores.append(before)
        object_ids.append(canonical_json(list(entry.object_ids)))
        afters.append(_after_ids(entry.object_type))
        middles.append(f'","reason":{canonical_json(entry.reason)},"request_id":'
                       f'{canonical_json(entry.request_id)},"roles":{roles_json},"seq":')
        roles.append(roles_json)
        fields.append(fields_json)
    return [befores, object_ids, afters, middles, [entry.actor for entry in entries], roles,
            [entry.action for entry in entries], [entry.object_type for entry in entries],
            fields, [entry.decision for entry in entries],
            [entry.reason for entry in entries], [entry.request_id for entry in entries]]


# The pieces that repeat from one entry to the next (a caller's reads all look alike), made
# once each.
@functools.lru_cache(maxsize=1024)
def _before_ids(action: str, actor: str, decision: str,
                fields: tuple[str, ...]) -> tuple[str, str]:
    fields_json = canonical_json(list(fields))
    return (f'{{"action":{canonical_json(action)},"actor":{canonical_json(actor)},'
            f'"decision":{canonical_json(decision)},"fields":{fields_json},"object_ids":',
            fields_json)


@functools.lru_cache(maxsize=256)
def _after_ids(object_type: str | None) -> str:
    return f',"object_type":{canonical_json(object_type)},"prev_hash":"'


@functools.lru_cache(maxsize=256)
def _json_list(values: tuple[str, ...]) -> str:
    return canonical_json(list(values))


def _seqs(last: int | None, count: int) -> list[int] | None:
    return None if last is None else list(range(int(last) - count + 1, int(last) + 1))


def _failure(connection: Any) -> Exception:
    if connection.closed or connection.broken:
        return MaybeWritten()
    return NotWritten()


def append(connection: psycopg.Connection[Any],
           entries: Sequence[AuditEntry]) -> list[int] | None:
    """Append on a sync connection in autocommit mode: the entries' sequence numbers once
    committed, or None when a checkpoint falls due (nothing written)."""
    if not entries:
        return []
    if connection.closed or connection.broken:
        raise NotWritten()
    try:
        row = connection.execute(_CALL, arguments(entries), prepare=True).fetchone()
    except psycopg.Error as exc:
        raise _failure(connection) from exc
    return _seqs(row[0] if row else None, len(entries))


async def append_async(connection: asyncpg.Connection,
                       entries: Sequence[AuditEntry]) -> list[int] | None:
    """`append` on an event loop's connection (asyncpg, autocommit): a server worker's."""
    if not entries:
        return []
    if connection.is_closed():
        raise NotWritten()
    try:
        last = await connection.fetchval(_LOOP_CALL, *arguments(entries))
    except LoopDatabaseError as exc:
        # Refused by the server on a connection still open: nothing was written. A connection
        # that broke may have carried the statement through to its commit.
        raise (MaybeWritten() if connection.is_closed() else NotWritten()) from exc
    return _seqs(last, len(entries))


def append_in_transaction(session: Session,
                          entries: Sequence[AuditEntry]) -> list[int] | None:
    """`append` in the caller's transaction (a write and its record commit together): the
    sequence numbers, or None when a checkpoint falls due (nothing written; the caller appends
    with `security.audit.append`). Errors are the transaction's, as for any statement in it."""
    if not entries:
        return []
    row = session.connection().exec_driver_sql(_CALL, tuple(arguments(entries))).first()
    return _seqs(row[0] if row else None, len(entries))


def append_unless_present(session: Session, entries: Sequence[AuditEntry], after: int, *,
                          keyring: KeyRing, checkpoint_every: int = 64) -> list[int]:
    """After `MaybeWritten`: in the caller's transaction, with the head row locked (so an
    append still running ends first), find the batch among the entries after `after` (a
    sequence number committed before it was sent) by its first request id; append it only if
    it is not there. A batch is one statement, so it is there whole or not at all."""
    session.execute(HEAD_FOR_UPDATE).one()
    marker = next((index for index, entry in enumerate(entries) if entry.request_id), None)
    if marker is not None:
        entry = entries[marker]
        found = session.execute(
            select(AuditEvent.seq).where(AuditEvent.seq > after,
                                         AuditEvent.request_id == entry.request_id,
                                         AuditEvent.action == entry.action)
            .order_by(AuditEvent.seq).limit(1)).scalar()
        if found is not None:
            first = int(found) - marker
            return list(range(first, first + len(entries)))
    return audit.append(session, entries, keyring=keyring, checkpoint_every=checkpoint_every)
