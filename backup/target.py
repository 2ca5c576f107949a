"""The restore target: what is there now, and how new contents replace it atomically.

SQLite: the new database is built in a file beside the target and renamed over it (after the
old one is checkpointed and found unused), so the target is either wholly old or wholly new.
PostgreSQL: one transaction migrates, empties every table (with the audit tables' append-only
triggers disabled, which is transactional there) and refills them; a failure rolls back.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url

from backup.errors import BackupError
from security.config import Settings
from storage import migrate
from storage.db import make_engine, normalise_url, sqlite_url
from storage.models import Base

APPEND_ONLY_TABLES = ("audit_events", "audit_checkpoints")


@dataclass(frozen=True)
class TargetState:
    description: str
    dialect: str
    sqlite_path: Path | None
    rows: int          # rows in Enclave's tables (0: empty)
    revision: str | None

    @property
    def empty(self) -> bool:
        return self.rows == 0


def _count_rows(engine: Engine) -> tuple[int, str | None]:
    with engine.connect() as connection:
        present = set(inspect(connection).get_table_names())
        rows = sum(connection.scalar(select(func.count()).select_from(table)) or 0
                   for name, table in Base.metadata.tables.items() if name in present)
        revision = migrate.current_revision(connection) if "alembic_version" in present else None
    return rows, revision


def inspect_target(settings: Settings) -> TargetState:
    """Look without touching: a SQLite file that does not exist yet is not created."""
    url = normalise_url(settings.resolved_database_url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.exists():
            return TargetState(str(path), "sqlite", path, 0, None)
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
        try:
            rows, revision = _count_rows(engine)
        finally:
            engine.dispose()
        return TargetState(str(path), "sqlite", path, rows, revision)
    engine = make_engine(url)
    try:
        rows, revision = _count_rows(engine)
    finally:
        engine.dispose()
    return TargetState(parsed.render_as_string(hide_password=True), parsed.get_backend_name(),
                       None, rows, revision)


# -- SQLite: build beside, then rename over ---------------------------------------------------

def _release_sqlite(path: Path) -> None:
    """Fold the old database's WAL into it and leave WAL mode, which needs it unused: a
    running service would keep writing to the file that is about to be replaced."""
    connection = sqlite3.connect(path, timeout=2, isolation_level=None)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        mode = connection.execute("PRAGMA journal_mode=DELETE").fetchone()
        if not mode or str(mode[0]).lower() != "delete":
            raise sqlite3.OperationalError("database is locked")
    except sqlite3.OperationalError:
        raise BackupError(f"{path} is in use: stop the Enclave service before restoring "
                          "over it") from None
    finally:
        connection.close()


def _fsync_dir(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def sqlite_build(target: Path) -> Iterator[Connection]:
    """A connection, in a transaction, to a new database beside `target`; on success it is
    committed and renamed over `target`; on failure it is removed and `target` untouched."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    building = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex}")
    os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    engine = make_engine(sqlite_url(building))
    try:
        with engine.connect() as connection:
            with connection.begin():
                migrate.upgrade(connection)
                yield connection
        engine.dispose()
        done = sqlite3.connect(building, isolation_level=None)
        try:
            done.execute("PRAGMA journal_mode=DELETE")
        finally:
            done.close()
        with building.open("rb+") as handle:
            os.fsync(handle.fileno())
        if target.exists():
            _release_sqlite(target)
        os.replace(building, target)
        _fsync_dir(target.parent)
        for stale in ("-wal", "-shm"):
            leftover = target.with_name(target.name + stale)
            if leftover.exists() and leftover.stat().st_size == 0:
                leftover.unlink()
    finally:
        engine.dispose()
        for leftover in (building, *(building.with_name(building.name + s)
                                     for s in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)


# -- PostgreSQL: one transaction --------------------------------------------------------------

@contextmanager
def postgres_build(url: str) -> Iterator[Connection]:
    """A connection in one transaction that has emptied every Enclave table; it commits only
    if the caller's block finishes."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            with connection.begin():
                connection.execute(text("SET LOCAL lock_timeout = '30s'"))
                migrate.upgrade(connection)
                names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
                for table in APPEND_ONLY_TABLES:
                    connection.execute(text(f'ALTER TABLE "{table}" DISABLE TRIGGER USER'))
                connection.execute(text(f"TRUNCATE {names}"))
                for table in APPEND_ONLY_TABLES:
                    connection.execute(text(f'ALTER TABLE "{table}" ENABLE TRIGGER USER'))
                yield connection
                reset_sequences(connection)
    finally:
        engine.dispose()


def reset_sequences(connection: Connection) -> None:
    """Rows came in with their ids: move each serial column's sequence past them."""
    for table in Base.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True:
                connection.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                    f'COALESCE(MAX("{column.name}"), 1), MAX("{column.name}") IS NOT NULL) '
                    f'FROM "{table.name}"'))
