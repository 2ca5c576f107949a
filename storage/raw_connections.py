"""Plain database connections outside the ORM, for the server's hottest statements.

- `RawConnections`: read-only connections for one-statement reads on the server's event loop
  (the lean lane of compiled documents).
- `LoopConnection`: one writable connection per event loop, for the audit appender.
- `DedicatedConnection`: one writable sync connection for a worker thread (the audit group's
  leader).

The event loop's connections are asyncpg's: its protocol, parameter encoding and row decoding
are compiled code, and it prepares each statement once per connection and keeps it, so the
loop spends a small fraction of the Python work psycopg's async path needs per statement
(measured in docs/performance.md). The rest of the appliance talks through SQLAlchemy and
psycopg as before.

A read that is a single SELECT needs no transaction, no ORM session and no pool pre-ping: the
statement is its own snapshot, and a connection that was lost fails the statement, which the
caller answers by running the request the ordinary way (with its retries). The read
connections are in autocommit mode, read-only (`default_transaction_read_only`), and carry the
appliance's statement timeout as a session setting. Connections belong to the event loop that
opened them (each server worker has one); at most `size` idle ones are kept per loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import psycopg
from sqlalchemy.engine import URL

T = TypeVar("T")

#: What asyncpg raises when a statement failed: the server refused it, or the connection
#: broke (asyncpg's own interface and client errors, and the socket's; seen: a connection the
#: server terminated while it sat idle failing its next statement with InternalClientError).
LoopDatabaseError = (asyncpg.PostgresError, asyncpg.InterfaceError,
                     asyncpg.exceptions.InternalClientError, OSError)


def conninfo(url: URL) -> str:
    """The libpq address of a SQLAlchemy PostgreSQL URL (asyncpg takes the same)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def abandon(connection: asyncpg.Connection) -> None:
    """Close a connection at once, without waiting on its event loop (its state is unknown,
    or the loop is going away). A connection whose loop has already closed cannot be closed
    through it; its socket goes with the loop's transport (close connections before their loop
    ends: `RawConnections.close_loop`, `LoopConnection.close`)."""
    try:
        connection.terminate()
    except RuntimeError:  # its event loop is closed
        pass


async def _until_loop_ends(close: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await close()


async def close_when_loop_ends(close: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Have `close()` awaited when the running event loop shuts down (keep the returned
    object as long as the connections it closes). asyncio.run, asyncio.Runner and the test
    clients close every live async generator of a loop just before closing the loop; a
    connection closed then goes cleanly, where one found after its loop closed cannot be."""
    sentinel = _until_loop_ends(close)
    await anext(sentinel)
    return sentinel


async def _connect(address: str, settings: dict[str, str]) -> asyncpg.Connection:
    # No statement cache limit worth having: a worker runs a few dozen statement shapes.
    return await asyncpg.connect(address, server_settings=settings,
                                 statement_cache_size=256)


class RawConnections:
    """At most `size` read connections per event loop; a caller finding them all in use
    waits for one (first come, first served), so a burst of requests never opens more
    connections than the database was sized for."""

    def __init__(self, url: URL, *, size: int, statement_timeout_ms: int) -> None:
        self._conninfo = conninfo(url)
        self._settings = {"default_transaction_read_only": "on"}
        if statement_timeout_ms:
            self._settings["statement_timeout"] = str(int(statement_timeout_ms))
        self._size = max(1, size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[asyncpg.Connection] = []
        #: This loop's connections, idle or in use.
        self._mine: set[Any] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closer: AsyncIterator[None] | None = None
        self.opened = 0

    async def get(self) -> asyncpg.Connection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another loop (a test client's): the old ones are not ours
            self._drop_idle()
            self._mine, self._waiters = set(), deque()
            self._loop = loop
            self._closer = await close_when_loop_ends(self.close_loop)
        while True:
            if self._idle:
                return self._idle.pop()
            if len(self._mine) < self._size:
                return await self._open()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the turn goes to the next in line
                raise

    async def _open(self) -> asyncpg.Connection:
        placeholder = _Opening()
        self._mine.add(placeholder)  # counted while it connects
        try:
            connection = await _connect(self._conninfo, self._settings)
        finally:
            self._mine.discard(placeholder)
        self._mine.add(connection)
        self.opened += 1
        return connection

    def put(self, connection: asyncpg.Connection) -> None:
        """Give back a connection that answered its statement in full."""
        if (connection in self._mine and not connection.is_closed()
                and asyncio.get_running_loop() is self._loop):
            self._idle.append(connection)
            self._wake()
        else:
            self.discard(connection)

    def discard(self, connection: asyncpg.Connection) -> None:
        """Close a connection whose statement failed or was cancelled (its state is unknown),
        at once and without waiting on the loop; its place goes to the next caller waiting."""
        abandon(connection)
        if connection in self._mine:
            self._mine.discard(connection)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            self._mine.discard(connection)
            abandon(connection)

    async def close_loop(self) -> None:
        """Close the running loop's idle connections (before that loop ends)."""
        if asyncio.get_running_loop() is self._loop:
            idle, self._idle = self._idle, []
            for connection in idle:
                self._mine.discard(connection)
                await connection.close(timeout=2)

    def close(self) -> None:
        self._drop_idle()


class _Opening:
    """A connection being opened: it holds its place in the count."""


class DedicatedConnection:
    """One plain sync connection in autocommit mode for one writer at a time: the audit group's
    leader. `run(work)` calls `work(connection)`; a connection whose work raised is closed (its
    state is unknown) and the next call opens a fresh one."""

    def __init__(self, url: URL) -> None:
        self._conninfo = conninfo(url)
        self._connection: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._lock:
            connection = self._connection
            if connection is None or connection.closed or self._pid != os.getpid():
                connection = self._connection = psycopg.connect(self._conninfo, autocommit=True)
                self._pid = os.getpid()
            try:
                return work(connection)
            except BaseException:
                self._connection = None
                connection.close()
                raise

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


class LoopConnection:
    """One plain connection in autocommit mode, writable, for one writer at a time on the
    event loop that opened it (a server worker's audit appender). A connection that failed is
    dropped by `discard`; the next `get` opens a fresh one."""

    def __init__(self, url: URL) -> None:
        self._conninfo = conninfo(url)
        self._connection: asyncpg.Connection | None = None
        self._closer: AsyncIterator[None] | None = None

    async def get(self) -> asyncpg.Connection:
        connection = self._connection
        if connection is None or connection.is_closed():
            self.discard()
            connection = self._connection = await _connect(self._conninfo, {})
            if self._closer is None:
                self._closer = await close_when_loop_ends(self.close)
        return connection

    def discard(self) -> None:
        """Close the connection at once, without waiting on the loop (its state is unknown,
        or the loop is going away)."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            abandon(connection)

    async def close(self) -> None:
        """Close the connection on its own loop (which is running)."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            await connection.close(timeout=2)

    def __del__(self) -> None:
        # Dropped with the event loop it belonged to (a finished asyncio.run, say), which
        # nobody closes: close the connection rather than leave it to the server's timeout.
        self.discard()
