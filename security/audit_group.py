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
appending for others while its own answer waits. Coroutines on an event loop (the lean lane)
go through a `LoopAppender`, which appends all of the loop's waiting entries at once: in one
statement on the loop's own connection when it can (`security.audit_statement`), else through
the group from a worker thread. Reads announce themselves when they start (`expect`), and a
batch about to be written waits for those still on their way, at most GATHER_SECONDS: under
load one commit (one WAL flush) serves every read in flight on the loop, and a lone read waits
for nobody.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.orm import Session

from security.audit import AuditEntry


class _Waiter:
    __slots__ = ("done", "entries", "error", "lead", "plain", "seqs")

    def __init__(self, entries: Sequence[AuditEntry], plain: bool) -> None:
        self.entries = entries
        self.plain = plain
        self.done = threading.Event()
        self.lead = False
        self.seqs: list[int] = []
        self.error: BaseException | None = None


class GroupAppender:
    """`append(entries)` durably, batched with other threads' concurrent appends."""

    def __init__(self, sessions: Callable[[], Session],
                 append: Callable[[Session, list[AuditEntry]], list[int]],
                 plain: Callable[[list[AuditEntry]], list[int] | None] | None = None) -> None:
        self._sessions = sessions
        self._append = append
        #: A cheaper way for the usual batch (security.audit_statement on a connection of
        #: its own); None from it means "not this batch": it goes through `append`.
        self._plain = plain
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._leading = False
        #: Transactions committed and entries written (for tests and the benchmark).
        self.batches = 0
        self.entries = 0

    def append(self, entries: Sequence[AuditEntry], *, plain: bool = True) -> list[int]:
        """The entries' sequence numbers, once committed; raises if their batch failed.
        `plain=False`: the caller's cheaper way already declined these entries (a checkpoint
        is due, or it was refused), so their batch goes straight through `append`."""
        if not entries:
            return []
        me = _Waiter(entries, plain)
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
            seqs = (self._plain(entries)
                    if self._plain is not None and all(w.plain for w in batch) else None)
            if seqs is None:
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


#: How long a batch about to be written waits at most for reads still on their way
#: (measured under the trusted-read benchmark: batches of ~6.5 reads instead of ~2.7, 12% less
#: CPU per read, a lower p99).
GATHER_SECONDS = 0.002


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LoopAppender:
    """`GroupAppender.append` for coroutines on one event loop: the entries of every request
    waiting on this loop are appended in one batch, by `plain` on the loop itself when it
    takes the batch (None from it: a checkpoint is due, or the batch was not written), else by
    the group in one call from a worker thread. Each caller resumes only once the transaction
    holding its entries has committed, and raises if it did not."""

    def __init__(self, group: GroupAppender,
                 plain: Callable[[list[AuditEntry]], Awaitable[list[int] | None]] | None = None
                 ) -> None:
        self._group = group
        self._plain = plain
        self._pending: list[tuple[Sequence[AuditEntry], asyncio.Future[list[int]]]] = []
        self._writing = False
        #: Reads on this loop that will hand entries soon (`expect`), and what a batch about
        #: to be written waits on while there are any (resolved when the last one arrives).
        self._expected = 0
        self._quiet: asyncio.Future[None] | None = None

    def expect(self) -> None:
        """A read on this loop has started and will `append(..., expected=True)` (or
        `unexpect()`): a batch about to be written waits a little for it."""
        self._expected += 1

    def unexpect(self) -> None:
        self._expected -= 1
        if not self._expected and self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)

    async def append(self, entries: Sequence[AuditEntry], *, expected: bool = False,
                     ) -> list[int]:
        """The entries' sequence numbers, once committed. `expected`: the caller announced
        itself with `expect()`."""
        if not entries:
            if expected:
                self.unexpect()
            return []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((entries, done))
        if expected:
            self.unexpect()
        if not self._writing:
            self._writing = True
            loop.create_task(self._drain())
        # A caller that goes away (cancelled) cancels only its own wait: its entries are in the
        # batch already and are appended all the same.
        return await done

    async def _gather(self) -> None:
        """While reads that have announced themselves are still on their way, wait for them,
        for at most GATHER_SECONDS: one batch, one commit (one WAL flush), for all of them.
        Under load this makes batches as large as the reads in flight; a lone read waits for
        nobody."""
        if not self._expected or GATHER_SECONDS <= 0:
            return
        loop = asyncio.get_running_loop()
        quiet = self._quiet = loop.create_future()
        timer = loop.call_later(GATHER_SECONDS, _resolve, quiet)
        try:
            await quiet
        finally:
            timer.cancel()
            self._quiet = None

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._gather()
                batch, self._pending = self._pending, []
                entries = [entry for mine, _ in batch for entry in mine]
                try:
                    seqs = await self._plain(entries) if self._plain is not None else None
                    if seqs is None:  # declined by `plain`: the group need not ask again
                        seqs = await asyncio.to_thread(self._group.append, entries,
                                                       plain=self._plain is None)
                except BaseException as exc:  # noqa: BLE001 - every waiter learns of it
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                start = 0
                for mine, done in batch:
                    if not done.done():
                        done.set_result(seqs[start:start + len(mine)])
                    start += len(mine)
        finally:
            self._writing = False
