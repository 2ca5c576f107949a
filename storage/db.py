"""Engines and units of work, one code path for SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from security.errors import ConfigurationError

T = TypeVar("T")

# SQLSTATEs after which the whole unit of work may simply be run again: the server was a demoted
# primary (read-only), a serialisation failure, a deadlock.
_RETRYABLE_SQLSTATES = {"25006", "40001", "40P01", "57P01", "08006", "08003"}


def normalise_url(url: str) -> str:
    """Pick the psycopg 3 driver for PostgreSQL URLs given without a driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError("the database URL is not a URL: give "
                                 "postgresql://USER@HOST/NAME (or sqlite:///PATH)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"the database URL names {parsed.get_backend_name()!r}: "
                                 "Enclave runs on PostgreSQL (or SQLite)")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 15})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE can be issued: a read
        # that later appends to the audit log must not fail to upgrade its lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA secure_delete=ON")  # erased key bytes do not linger in free pages
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    if isinstance(exc, OperationalError):
        text = str(orig or exc).lower()
        return "database is locked" in text or "server closed the connection" in text or (
            "connection" in text and ("refused" in text or "lost" in text or "reset" in text)
        )
    return False


def run_unit_of_work(
    sessions: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    attempts: int = 6,
    max_delay: float = 2.0,
) -> T:
    """Run `work` in one transaction, and run it again whole after a lost connection, a
    read-only primary or a serialisation failure. Work must be idempotent (application ids)."""
    delay = 0.05
    for attempt in range(1, attempts + 1):
        try:
            with sessions() as session, session.begin():
                return work(session)
        except DBAPIError as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")  # pragma: no cover
