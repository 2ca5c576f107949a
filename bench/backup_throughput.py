"""Benchmark: backup, verify and restore throughput, beside the plain tools on the same data.

For each backend (SQLite in a temporary data folder; PostgreSQL in throwaway databases on
127.0.0.1:5432, dropped at the end) it fills an appliance with N synthetic contacts through the
guarded path, then times, in one run:

  enclave   backup create          (snapshot, JSON lines, zstd, age, signed manifest)
            backup verify          (with the identity: decrypt and check every table)
            backup restore         (onto a fresh machine: new KEK, empty database)
  baseline  SQLite: sqlite3 .backup            and  sqlite3 .restore
            PostgreSQL: pg_dump | zstd -3      and  zstd -dc | psql (into an empty database)

and prints MB/s (of the live database's size: the SQLite file, or PostgreSQL's Enclave tables
with their indexes and TOAST; every line of a backend divides the same amount) and rows/s (rows
of every table), with the file sizes. Results also go to bench/results/*.json.

Run from the repository root:  .venv/bin/python bench/backup_throughput.py [--help]
Only loopback traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("ENCLAVE_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TEAM = "bench"
MB = 1_000_000


@dataclass
class Line:
    backend: str
    tool: str
    operation: str
    seconds: float
    database_bytes: int
    rows: int
    file_bytes: int | None

    @property
    def mb_per_s(self) -> float:
        return self.database_bytes / MB / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def _principal(role: str, team: str | None = None) -> Any:
    from security.principal import Principal
    return Principal(id=f"bench-{role}", name=role, roles=(role,), team=team, kind="operator")


def populate(settings: Any, contacts: int, recipient: str) -> float:
    import random

    from api import demo_data
    from backup.recipients import add_recipient
    from schema.context import unit_of_work
    from schema.ops import accounts as account_ops
    from schema.ops import contacts as contact_ops
    from schema.runtime import Appliance, initialise

    started = time.perf_counter()
    initialise(settings)
    appliance = Appliance.open(settings)
    try:
        rng = random.Random(7)
        writer = _principal("sales_manager", TEAM)
        with unit_of_work(appliance, writer) as ctx:
            account_ids = [account_ops.create_account(ctx, data).id
                           for data in demo_data.accounts(50, rng)]
        batch = list(demo_data.contacts(contacts, rng))
        for start in range(0, len(batch), 500):
            with unit_of_work(appliance, writer) as ctx:
                for data in batch[start:start + 500]:
                    contact_ops.create_contact(ctx, {**data,
                                                     "account_id": rng.choice(account_ids)})
        with unit_of_work(appliance, _principal("admin")) as ctx:
            add_recipient(ctx, recipient, label="bench")
    finally:
        appliance.close()
    return time.perf_counter() - started


def database_size(engine: Any) -> int:
    from sqlalchemy import text
    if engine.dialect.name == "sqlite":
        import sqlite3
        path = Path(engine.url.database)
        raw = sqlite3.connect(path, isolation_level=None)
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
        return path.stat().st_size
    from storage.models import Base
    names = ", ".join(f"'{name}'" for name in Base.metadata.tables)
    with engine.connect() as connection:  # Enclave's tables with their indexes and TOAST
        return int(connection.scalar(text(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            f"ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname IN ({names})")))


def total_rows(engine: Any) -> int:
    from sqlalchemy import func, select

    from storage.models import Base
    with engine.connect() as connection:
        return sum(connection.scalar(select(func.count()).select_from(t)) or 0
                   for t in Base.metadata.sorted_tables)


def timed(command: list[str] | str, *, shell: bool = False) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=shell, check=True, capture_output=True,
                   executable="/bin/bash" if shell else None)
    return time.perf_counter() - started


@contextmanager
def postgres_databases(count: int) -> Iterator[list[str]]:
    from sqlalchemy import create_engine, text
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names = [f"enclave_bench_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    try:
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield [f"{base}/{name}" for name in names]
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def run_backend(backend: str, contacts: int, work: Path, log: Any) -> list[Line]:
    from pyrage import x25519

    from backup import appliance_anchor, create_backup, load_identities, restore_backup
    from backup import verify_backup as verify
    from schema.runtime import Appliance
    from security.config import Settings
    from storage.db import make_engine

    identity = x25519.Identity.generate()
    identity_file = work / f"{backend}-recovery.txt"
    identity_file.write_text(f"{identity}\n")
    identities = load_identities(identity_file)
    lines: list[Line] = []
    with (postgres_databases(3) if backend == "postgres" else _none()) as urls:
        source = Settings(data_dir=work / f"{backend}-source", dev_mode=True,
                          database_url=urls[0] if urls else None)
        seconds = populate(source, contacts, str(identity.to_public()))
        log(f"{backend}: {contacts:,} contacts written through the guarded path in "
            f"{seconds:.1f} s")
        appliance = Appliance.open(source)
        try:
            size, rows = database_size(appliance.engine), total_rows(appliance.engine)
            log(f"{backend}: database {size / MB:.1f} MB, {rows:,} rows in all tables")

            def line(tool: str, operation: str, seconds: float, file: Path | None) -> None:
                made = Line(backend, tool, operation, seconds, size, rows,
                            file.stat().st_size if file else None)
                lines.append(made)
                log(f"  {tool:<9} {operation:<34} {seconds:7.2f} s  {made.mb_per_s:7.1f} MB/s "
                    f"{made.rows_per_s:10,.0f} rows/s" +
                    (f"  file {made.file_bytes / MB:.1f} MB" if made.file_bytes else ""))

            admin = _principal("admin")
            started = time.perf_counter()
            result = create_backup(appliance, work / f"{backend}-backups", principal=admin)
            line("enclave", "backup create", time.perf_counter() - started, result.path)
            started = time.perf_counter()
            verify(result.path, appliance_anchor(appliance), identities)
            line("enclave", "backup verify --identity", time.perf_counter() - started, None)
            if backend == "sqlite":
                baseline = work / "sqlite-baseline.db"
                seconds = timed(["sqlite3", str(appliance.engine.url.database),
                                 f".backup '{baseline}'"])
                line("sqlite3", ".backup", seconds, baseline)
            else:
                dump = work / "pg.sql.zst"
                seconds = timed(f"set -o pipefail; pg_dump '{libpq_url(urls[0])}' | zstd -q -3 "
                                f"-o '{dump}'", shell=True)
                line("pg_dump", "pg_dump | zstd -3", seconds, dump)
        finally:
            appliance.close()

        target = Settings(data_dir=work / f"{backend}-fresh", dev_mode=True,
                          database_url=urls[1] if urls else None)
        started = time.perf_counter()
        restore_backup(result.path, identities, target, principal=admin,
                       signer=result.manifest.signer_fingerprint)
        line("enclave", "backup restore (fresh machine)", time.perf_counter() - started, None)
        restored = make_engine(target.resolved_database_url)
        try:
            assert total_rows(restored) >= rows, "the restore lost rows"
        finally:
            restored.dispose()
        if backend == "sqlite":
            again = work / "sqlite-restored.db"
            seconds = timed(["sqlite3", str(again), f".restore '{work / 'sqlite-baseline.db'}'"])
            line("sqlite3", ".restore", seconds, None)
        else:
            seconds = timed(f"set -o pipefail; zstd -q -dc '{work / 'pg.sql.zst'}' | "
                            f"psql -q -v ON_ERROR_STOP=1 '{libpq_url(urls[2])}' >/dev/null",
                            shell=True)
            line("psql", "zstd -dc | psql (empty database)", seconds, None)
    return lines


@contextmanager
def _none() -> Iterator[list[str]]:
    yield []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres"])
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")
    args = parser.parse_args(argv)
    needed = {"sqlite": ["sqlite3"], "postgres": ["pg_dump", "psql", "zstd"]}
    missing = sorted({tool for b in args.backends for tool in needed[b] if not shutil.which(tool)})
    if missing:
        raise SystemExit(f"missing tools for the baselines: {', '.join(missing)} "
                         "(apt-get install sqlite3 postgresql-client zstd)")

    def log(message: str) -> None:
        print(message, flush=True)

    lines: list[Line] = []
    with tempfile.TemporaryDirectory(prefix="enclave-bench-backup-") as work:
        for backend in args.backends:
            lines += run_backend(backend, args.contacts, Path(work), log)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    output = args.output or ROOT / "bench" / "results" / f"backup_throughput-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "contacts": args.contacts, "machine": {"python": platform.python_version(),
                                               "cpus": os.cpu_count()},
        "lines": [{**asdict(line), "mb_per_s": round(line.mb_per_s, 2),
                   "rows_per_s": round(line.rows_per_s)} for line in lines]}, indent=2) + "\n")
    print(f"\nresults written to {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
