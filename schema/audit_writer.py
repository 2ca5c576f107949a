"""Where a running appliance's audit entries are written, and how.

- `append(session, entries)`: in the caller's transaction (`security.audit.append`), for
  everything that changes data or must be in the same commit as what it records.
- `group`: a read's entries from a worker thread, batched with other threads' (group commit,
  `security.audit_group`).
- `loop_appender()`: a read's entries from a coroutine on a server worker's event loop (the
  lean lane), batched per loop.

On PostgreSQL a batch with no checkpoint due is appended in one statement on a connection of
the writer's own (`security.audit_statement`); otherwise, and when that statement was refused,
through an ORM session, which also signs checkpoints. A batch whose statement may or may not
have committed (the connection broke once it was sent) is looked for in the log before it is
appended again.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

import psycopg
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from security import audit, audit_statement
from security.audit import AuditEntry
from security.audit_group import GroupAppender, LoopAppender
from security.keys import KeyRing
from storage.models import AuditHead
from storage.raw_connections import DedicatedConnection, LoopConnection, LoopDatabaseError


class AuditWriter:
    def __init__(self, engine: Engine, sessions: sessionmaker[Session],
                 keyring: Callable[[], KeyRing], *, checkpoint_every: int,
                 disabled: bool = False) -> None:
        self._engine = engine
        self._sessions = sessions
        self._keyring = keyring
        self._checkpoint_every = checkpoint_every
        #: Benchmark baseline only (security.unguarded): nothing is written.
        self._disabled = disabled
        self._statements = engine.dialect.name == "postgresql" and not disabled
        self._connection = DedicatedConnection(engine.url) if self._statements else None
        # The group's session path is the signing one: its statement path was tried first.
        self.group = GroupAppender(sessions, self._append_signed,
                                   self._append_statement if self._statements else None)
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[LoopAppender, LoopConnection | None]] = \
            weakref.WeakKeyDictionary()
        #: A sequence number already committed: every batch sent from now on lands after it
        #: (where to look for a batch whose commit is unknown). Only ever lags behind.
        self._committed = 0
        #: While a server's signer runs (`api.audit_timer`): called, from any thread, once the
        #: log has grown by three quarters of a checkpoint interval past what is known signed,
        #: so that the signer signs ahead of the count and no batch waits for a signature (the
        #: last quarter is the signer's time to do it: 128 entries by default).
        self.nudge: Callable[[], None] | None = None
        self._signed_through = 0
        self._ahead = max(1, checkpoint_every * 3 // 4)
        #: Batches and entries appended by one statement (for tests and the benchmark).
        self.statement_batches = 0
        self.statement_entries = 0
        with sessions() as session:
            if self._statements:
                self._committed = int(session.scalar(
                    select(AuditHead.seq).where(AuditHead.id == 1)) or 0)
            self._signed_through = audit.last_signed(session)

    def append(self, session: Session, entries: list[AuditEntry]) -> list[int]:
        """Append in the caller's transaction (signing a checkpoint when one is due)."""
        if self._statements:
            seqs = audit_statement.append_in_transaction(session, entries)
            if seqs is not None:
                self._ask_ahead(seqs)
                return seqs
        return self._append_signed(session, entries)

    def _append_signed(self, session: Session, entries: list[AuditEntry]) -> list[int]:
        if self._disabled:
            return []
        seqs = audit.append(session, entries, keyring=self._keyring(),
                            checkpoint_every=self._checkpoint_every)
        self._ask_ahead(seqs)
        return seqs

    def loop_appender(self) -> LoopAppender:
        """The batched append for coroutines on the running event loop."""
        loop = asyncio.get_running_loop()
        found = self._loops.get(loop)
        if found is None:
            connection = LoopConnection(self._engine.url) if self._statements else None
            appender = LoopAppender(
                self.group, None if connection is None else
                lambda entries: self._append_statement_async(connection, entries))
            found = self._loops[loop] = (appender, connection)
        return found[0]

    def _append_statement(self, entries: list[AuditEntry]) -> list[int] | None:
        assert self._connection is not None
        after = self._committed
        try:
            seqs = self._connection.run(
                lambda connection: audit_statement.append(connection, entries))
        except (audit_statement.NotWritten, psycopg.Error):  # refused, or could not connect
            return None  # the session path appends them (pre-pinged pool), or says why not
        except audit_statement.MaybeWritten:
            seqs = self._append_unless_present(entries, after)
        return self._note(seqs)

    async def _append_statement_async(self, connection: LoopConnection,
                                      entries: list[AuditEntry]) -> list[int] | None:
        after = self._committed
        try:
            seqs = await audit_statement.append_async(await connection.get(), entries)
        except (audit_statement.NotWritten, *LoopDatabaseError):  # refused, or no connection
            connection.discard()
            return None
        except audit_statement.MaybeWritten:
            connection.discard()
            seqs = await asyncio.to_thread(self._append_unless_present, entries, after)
        return self._note(seqs)

    def _append_unless_present(self, entries: list[AuditEntry], after: int) -> list[int]:
        session = self._sessions()
        try:
            with session.begin():
                return audit_statement.append_unless_present(
                    session, entries, after, keyring=self._keyring(),
                    checkpoint_every=self._checkpoint_every)
        finally:
            session.close()

    def _note(self, seqs: list[int] | None) -> list[int] | None:
        if seqs:
            self._committed = max(self._committed, seqs[-1])
            self.statement_batches += 1
            self.statement_entries += len(seqs)
            self._ask_ahead(seqs)
        return seqs

    def _ask_ahead(self, seqs: list[int]) -> None:
        nudge = self.nudge
        if nudge is not None and seqs and seqs[-1] - self._signed_through >= self._ahead:
            self._signed_through = seqs[-1]  # one nudge until the signer reports back
            nudge()

    def signed_through(self, size: int) -> None:
        """The signer has signed the log up to `size` (or found it signed)."""
        self._signed_through = max(self._signed_through, size)

    async def close_loop(self) -> None:
        """Close the running event loop's connection (before that loop ends)."""
        found = self._loops.pop(asyncio.get_running_loop(), None)
        if found is not None and found[1] is not None:
            await found[1].close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        for _, connection in list(self._loops.values()):
            if connection is not None:
                connection.discard()
