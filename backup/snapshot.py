"""A consistent view of the live database while it keeps taking writes.

SQLite: the online backup API copies the database into a private file next to it (one step,
under one read transaction, so it is a single point in time; WAL lets writers go on), and the
backup reads that copy. PostgreSQL: one REPEATABLE READ, READ ONLY transaction reads every
table, so all of them are seen as of its first query, with server-side cursors.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine

from storage.db import sqlite_url


def _sqlite_path(engine: Engine) -> Path:
    database = engine.url.database
    if not database or database == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be backed up")
    return Path(database)


@contextmanager
def _sqlite_snapshot(engine: Engine) -> Iterator[Connection]:
    source_path = _sqlite_path(engine)
    copy_path = source_path.with_name(f".{source_path.name}.snapshot-{uuid.uuid4().hex}")
    os.close(os.open(copy_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    copy_engine: Engine | None = None
    try:
        source = sqlite3.connect(source_path, timeout=15)
        target = sqlite3.connect(copy_path)
        try:
            source.backup(target)  # pages=-1: the whole database in one step
        finally:
            target.close()
            source.close()
        copy_engine = create_engine(sqlite_url(copy_path))
        with copy_engine.connect() as connection:
            yield connection
    finally:
        if copy_engine is not None:
            copy_engine.dispose()
        for leftover in (copy_path, copy_path.with_name(copy_path.name + "-journal")):
            leftover.unlink(missing_ok=True)


@contextmanager
def _postgres_snapshot(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        snapshot = connection.execution_options(isolation_level="REPEATABLE READ",
                                                postgresql_readonly=True)
        with snapshot.begin():
            yield snapshot


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection that sees the whole database as of one moment."""
    if engine.dialect.name == "sqlite":
        with _sqlite_snapshot(engine) as connection:
            yield connection
    else:
        with _postgres_snapshot(engine) as connection:
            yield connection
