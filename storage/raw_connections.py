"""Plain psycopg connections for one-statement reads (the lean lane of compiled documents).

A read that is a single SELECT needs no transaction, no ORM session and no pool pre-ping: the
statement is its own snapshot, and a connection that was lost fails the statement, which the
caller answers by running the request the ordinary way (with its retries). These connections
are in autocommit mode and carry the appliance's statement timeout as a session setting.
At most `size` idle connections are kept; more are opened when needed and closed on return.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
from sqlalchemy.engine import URL


def conninfo(url: URL) -> str:
    """The libpq address of a SQLAlchemy PostgreSQL URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class RawConnections:
    def __init__(self, url: URL, *, size: int, statement_timeout_ms: int) -> None:
        self._conninfo = conninfo(url)
        self._options = (f"-c statement_timeout={int(statement_timeout_ms)}"
                         if statement_timeout_ms else "")
        self._size = size
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.opened = 0

    def get(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._pid != os.getpid():  # a forked worker must not share its parent's sockets
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        connection = psycopg.connect(self._conninfo, autocommit=True, options=self._options)
        self.opened += 1
        return connection

    def put(self, connection: psycopg.Connection[Any]) -> None:
        """Give back a connection that answered its statement in full."""
        with self._lock:
            if len(self._idle) < self._size and self._pid == os.getpid() \
                    and not connection.closed:
                self._idle.append(connection)
                return
        connection.close()

    def discard(self, connection: psycopg.Connection[Any]) -> None:
        """Close a connection whose statement failed (its state is unknown)."""
        try:
            connection.close()
        except psycopg.Error:
            pass

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
