"""Keep-alive connections spread evenly over the server's workers (issue 7).

granian's workers accept from one shared socket, and which worker wins a new connection is up
to the kernel and to timing, not to how many each already holds: 20 keep-alive connections
opened together landed 6/14, 7/13, 8/12 and 10/10 on two workers in successive starts. Each
worker answers on one Python thread, so the crowded worker's connections waited half as long
again as the other's (median 12.0 ms against 8.1 ms under the trusted-read benchmark) while the
other worker had time to spare.

So the workers keep count. Each notes the client address of every request; every
`REFRESH_SECONDS` (only while requests arrive) it publishes how many distinct connections sent
it a request within the last `WINDOW_SECONDS` in a table shared by the server's workers
(`WorkerTable`, made before granian forks them) and reads the others'. Holding more than its
share (all of them / workers, rounded up), it answers that many of its next HTTP/1.1 requests
with `Connection: close`: each such request is answered in full, then the client opens a new
connection (as HTTP/1.1 clients do), which either worker may win; a few rounds even the spread.
This is how gRPC's MAX_CONNECTION_AGE rebalances long-lived connections, but aimed: only a
worker above its share closes any. HTTP/2 connections are left alone (a `Connection` header is
not allowed there). Idle connections are not counted: they cost a worker nothing.

The kernel's own table (/proc/net/tcp) would give the same counts without sharing anything,
but reading it took 3.7 ms with 280 sockets on a development machine: a stall of the event loop
every time a worker looked.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: How often a worker publishes its count and compares (while requests arrive).
REFRESH_SECONDS = 0.5
#: A connection counts as held while it sent a request this recently.
WINDOW_SECONDS = 2.0


def excess(mine: int, total: int, workers: int) -> int:
    """How many connections a worker holding `mine` of `total` should give up."""
    return max(0, mine - math.ceil(total / max(1, workers)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the number
        return False
    return True


class WorkerTable:
    """Each worker's count of connections, in memory shared by the processes forked after it
    was made: a slot (pid, count) per worker, claimed by a worker's pid, reclaimed from a
    worker that has exited (granian respawns failed workers).

    The memory is an anonymous file (memfd), not multiprocessing's shared memory: that lives in
    /dev/shm, which the appliance's sandbox (PrivateDevices, PrivateUsers) does not let the
    service write. A POSIX record lock on the same file keeps two workers from claiming one
    slot (such locks belong to processes, so forked workers exclude each other)."""

    _SLOT = struct.Struct("qq")  # pid, count
    _COUNT = struct.Struct("q")
    _COUNT_OFFSET = 8

    def __init__(self, workers: int) -> None:
        self.workers = workers
        size = self._SLOT.size * workers
        self._fd = os.memfd_create("enclave-workers")
        os.ftruncate(self._fd, size)
        self._slots = mmap.mmap(self._fd, size)  # MAP_SHARED: forked workers see writes

    def _read(self, index: int) -> tuple[int, int]:
        pid, count = self._SLOT.unpack_from(self._slots, index * self._SLOT.size)
        return pid, count

    def _write(self, index: int, pid: int, count: int) -> None:
        self._SLOT.pack_into(self._slots, index * self._SLOT.size, pid, count)

    def claim(self, pid: int) -> int | None:
        """The slot of worker `pid` (claimed now if it has none); None when all are taken."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            for index in range(self.workers):
                if self._read(index)[0] == pid:
                    return index
            for index in range(self.workers):
                holder, _ = self._read(index)
                if holder == 0 or not _alive(holder):
                    self._write(index, pid, 0)
                    return index
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return None

    def publish(self, index: int, count: int) -> int:
        """Record this worker's count; the count of all workers.

        No lock: each worker writes only its own slot, and a count read while another worker
        rewrites its slot is at worst half a second old, which the next look corrects."""
        self._COUNT.pack_into(self._slots, index * self._SLOT.size + self._COUNT_OFFSET, count)
        slots = [self._read(i) for i in range(self.workers)]
        return sum(count for pid, count in slots if pid and _alive(pid))


#: The table of the server being served (`api.serving` makes it before the workers fork).
TABLE: WorkerTable | None = None


class ConnectionBalancer:
    """ASGI middleware: counts this worker's connections and closes (after answering) as many
    HTTP/1.1 connections as it holds beyond its share."""

    def __init__(self, app: ASGIApp, table: WorkerTable, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self._table = table
        self._clock = clock
        self._slot: int | None = None
        self._seen: dict[Any, float] = {}
        self._look_at = clock() + REFRESH_SECONDS
        self._to_close = 0
        #: Connections asked to close so far (for tests and diagnosis).
        self.closed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("http_version") != "1.1" \
                or not self._closing_one(scope.get("client")):
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)

    def _closing_one(self, client: Any) -> bool:
        now = self._clock()
        if client is not None:
            self._seen[client] = now
        if now >= self._look_at:
            self._look_at = now + REFRESH_SECONDS
            self._to_close = self._excess(now)
        if self._to_close <= 0:
            return False
        self._to_close -= 1
        if client is not None:
            self._seen.pop(client, None)  # it is going away
        self.closed += 1
        return True

    def _excess(self, now: float) -> int:
        since = now - WINDOW_SECONDS
        self._seen = {client: at for client, at in self._seen.items() if at >= since}
        if self._slot is None:
            self._slot = self._table.claim(os.getpid())
            if self._slot is None:
                return 0
        mine = len(self._seen)
        total = self._table.publish(self._slot, mine)
        return excess(mine, total, self._table.workers)
