"""Plain async psycopg connections for one-statement reads (the lean lane of compiled
documents, run on the server's event loop without a worker thread).

A read that is a single SELECT needs no transaction, no ORM session and no pool pre-ping: the
statement is its own snapshot, and a connection that was lost fails the statement, which the
caller answers by running the request the ordinary way (with its retries). These connections
are in autocommit mode, read-only (`default_transaction_read_only`), and carry the appliance's
statement timeout as a session setting. Connections belong to the event loop that opened them
(each server worker has one); at most `size` idle ones are kept per loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from sqlalchemy.engine import URL

T = TypeVar("T")


def conninfo(url: URL) -> str:
    """The libpq address of a SQLAlchemy PostgreSQL URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class RawConnections:
    def __init__(self, url: URL, *, size: int, statement_timeout_ms: int) -> None:
        self._conninfo = conninfo(url)
        options = ["-c default_transaction_read_only=on"]
        if statement_timeout_ms:
            options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
        self._options = " ".join(options)
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self.opened = 0

    async def get(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another loop (a test client's): the old ones are not ours
            self._drop_idle()
            self._loop = loop
        if self._idle:
            return self._idle.pop()
        connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True,
                                                           options=self._options)
        self.opened += 1
        return connection

    async def put(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Give back a connection that answered its statement in full."""
        if (len(self._idle) < self._size and not connection.closed
                and asyncio.get_running_loop() is self._loop):
            self._idle.append(connection)
        else:
            await connection.close()

    @staticmethod
    def discard(connection: psycopg.AsyncConnection[Any]) -> None:
        """Close a connection whose statement failed or was cancelled (its state is unknown),
        at once and without waiting on the loop."""
        connection.pgconn.finish()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            self.discard(connection)

    def close(self) -> None:
        self._drop_idle()


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
    """One plain async connection in autocommit mode, writable, for one writer at a time on the
    event loop that opened it (a server worker's audit appender). A connection that failed is
    dropped by `discard`; the next `get` opens a fresh one."""

    def __init__(self, url: URL) -> None:
        self._conninfo = conninfo(url)
        self._connection: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        connection = self._connection
        if connection is None or connection.closed or connection.broken:
            self.discard()
            connection = self._connection = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True)
        return connection

    def discard(self) -> None:
        """Close the connection at once, without waiting on the loop (its state is unknown,
        or the loop is going away)."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            connection.pgconn.finish()

    def __del__(self) -> None:
        # Dropped with the event loop it belonged to (a finished asyncio.run, say), which
        # nobody closes: close the connection rather than leave it to the server's timeout.
        self.discard()
