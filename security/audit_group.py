"""Group commit for the audit entries of concurrent reads.

A read's audit entry must be durable before its answer leaves. Appending it inside the read's
own transaction makes every read hold the log's head row from its append to its commit (the
WAL flush included), so concurrent reads queue on that lock one commit at a time. Here the
reads of one process hand their entries to a `GroupAppender`: whichever caller finds no append
in progress leads, and appends everything waiting, in arrival order, in one transaction (one
head lock, one INSERT, one commit); the others wait. Every caller returns only once the
transaction holding its entries has committed, and raises if it did not: the answer is never
sent before its entry is durable. Hash chain, Merkle tree and checkpoints are `audit.append`'s,
unchanged.

Leadership passes on after each batch (to the first caller still waiting), so no caller keeps
appending for others while its own answer waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from security.audit import AuditEntry


class _Waiter:
    __slots__ = ("done", "entries", "error", "lead", "seqs")

    def __init__(self, entries: Sequence[AuditEntry]) -> None:
        self.entries = entries
        self.done = threading.Event()
        self.lead = False
        self.seqs: list[int] = []
        self.error: BaseException | None = None


class GroupAppender:
    """`append(entries)` durably, batched with other threads' concurrent appends."""

    def __init__(self, sessions: Callable[[], Session],
                 append: Callable[[Session, list[AuditEntry]], list[int]]) -> None:
        self._sessions = sessions
        self._append = append
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._leading = False
        #: Transactions committed and entries written (for tests and the benchmark).
        self.batches = 0
        self.entries = 0

    def append(self, entries: Sequence[AuditEntry]) -> list[int]:
        """The entries' sequence numbers, once committed; raises if their batch failed."""
        if not entries:
            return []
        me = _Waiter(entries)
        with self._lock:
            self._waiting.append(me)
            lead = me.lead = not self._leading
            self._leading = True
        if not lead:
            me.done.wait()
            if not me.lead:  # appended (or failed) by another caller's batch
                if me.error is not None:
                    raise me.error
                return me.seqs
        self._lead()
        if me.error is not None:
            raise me.error
        return me.seqs

    def _lead(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        try:
            self._write(batch)
        finally:
            with self._lock:
                if self._waiting:  # hand over to the first caller still waiting
                    successor = self._waiting[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._leading = False
            for waiter in batch:
                waiter.done.set()

    def _write(self, batch: list[_Waiter]) -> None:
        entries = [entry for waiter in batch for entry in waiter.entries]
        try:
            session = self._sessions()
            try:
                with session.begin():
                    seqs = self._append(session, entries)
            finally:
                session.close()
        except BaseException as exc:
            for waiter in batch:
                waiter.lead = False
                waiter.error = exc
            return
        self.batches += 1
        self.entries += len(entries)
        start = 0
        for waiter in batch:
            waiter.lead = False
            waiter.seqs = seqs[start:start + len(waiter.entries)]
            start += len(waiter.entries)
