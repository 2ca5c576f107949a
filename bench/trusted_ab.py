"""A/B benchmark: the trusted read of this checkout against other revisions, in one run.

The development machines are shared: two `make bench-trusted` runs made minutes apart can
differ by 40% on the same code (PostGraphile's own figure moves as much). To see what a change
does, this compares revisions side by side: one PostgreSQL database filled once, then in each
round an Enclave server (granian, 2 workers, as `trusted_path.py` starts it) from each source in
turn — this checkout, and each `--rev` checked out as a temporary git worktree — driven on the
benchmark's trusted read, and PostGraphile 5 on the plain copy as the reference. It prints
requests/s, server CPU per request and p99 per source and round, and the medians.

    make bench-ab BENCH_ARGS="--rev d9e3d38 --rounds 3"

A revision from before one of this checkout's migrations gets its own copy of the filled
database, migrated down to that revision's head (`CREATE DATABASE ... TEMPLATE`, then this
checkout's Alembic downgrade), so both run on the same rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for entry in (str(ROOT), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import contacts_read as base  # noqa: E402
import trusted_path as tp  # noqa: E402


def _start(source: Path, target: base.Target, workdir: Path, workers: int) -> tp.Server:
    port = base.free_port()
    log = workdir / f"enclave-{source.name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(source / "bench" / "trusted_path.py"), "_serve",
             str(target.data_dir), str(port), target.database_url or "", str(workers)],
            cwd=source, stdout=out, stderr=subprocess.STDOUT)
    server = tp.Server("enclave", port, process, log)
    tp.wait_up(server, "/healthz")
    return server


def _head_of(source: Path) -> str:
    """The migration head of a source tree, as its own code names it."""
    found = subprocess.run(
        [sys.executable, "-c", "from storage import migrate; print(migrate.head_revision())"],
        cwd=source, capture_output=True, text=True, check=True)
    return found.stdout.strip()


def _copy_at(url: str, revision: str, suffix: str) -> str:
    """A copy of the database at `url`, migrated down to `revision`; dropped with the others
    by `drop_copies`."""
    from sqlalchemy import create_engine, text

    from storage import migrate
    from storage.db import make_engine

    source = url.rsplit("/", 1)[1]
    copy = f"{source}_{suffix}"
    admin = create_engine(base.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{source}"'))
    finally:
        admin.dispose()
    copy_url = f"{url.rsplit('/', 1)[0]}/{copy}"
    engine = make_engine(copy_url)
    try:
        migrate.downgrade(engine, revision)
    finally:
        engine.dispose()
    return copy_url


def drop_copies(urls: list[str]) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(base.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for url in urls:
                name = url.rsplit("/", 1)[1]
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _worktree(rev: str, workdir: Path) -> Path:
    path = workdir / f"rev-{rev.replace('/', '_')}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev],
                   check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", default=[],
                        help="a git revision to compare (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-postgraphile", action="store_true")
    args = parser.parse_args(argv)
    drive_args = argparse.Namespace(concurrency=args.concurrency, warmup=args.warmup,
                                    seconds=args.seconds)
    workdir = Path(tempfile.mkdtemp(prefix="enclave-bench-ab-"))
    sources: dict[str, Path] = {"this checkout": ROOT}
    results: dict[str, list[tuple[float, float, float]]] = {}
    postgraphile = None
    copies: list[str] = []
    try:
        for rev in args.rev:
            sources[rev] = _worktree(rev, workdir)
        with base.postgres_databases(2) as (url, plain_url):
            target = base.Target("guarded", workdir / "var", url)
            base.populate(target, args.contacts, 200, 7)
            tp.plain_copy(target, plain_url)
            tp.analyse(url)
            docs = tp.register_documents(target)
            first_page = tp.contact_ids(url, tp.PAGE)  # every contact is in the client's team
            ours = _head_of(ROOT)
            databases = {name: url for name in sources}
            for index, (name, source) in enumerate(sources.items()):
                head = _head_of(source)
                if head != ours:
                    databases[name] = _copy_at(url, head, f"r{index}")
                    copies.append(databases[name])
            if not args.no_postgraphile:
                node, cli = tp.install_postgraphile(print)
                postgraphile = tp.start_postgraphile(node, cli, plain_url, workdir)
            for round_ in range(args.rounds):
                # Each round in the other order: whatever the earlier run leaves behind (a
                # longer audit log, autovacuum) falls on each source alike.
                order = list(sources.items())
                for name, source in (order if round_ % 2 == 0 else order[::-1]):
                    database = base.Target("guarded", target.data_dir, databases[name])
                    server = _start(source, database, workdir, args.workers)
                    try:
                        token = base.fetch_token(base.Target(
                            "guarded", target.data_dir, databases[name], port=server.port,
                            client_id=target.client_id, client_secret=target.client_secret))
                        request = tp._request(server.port, token,
                                              {"documentId": docs[tp.QUERY]})
                        result = tp.drive("trusted", "read", server, lambda rng, r=request: r,
                                          tp.ReadCheck("trusted", first_page),
                                          drive_args)
                    finally:
                        tp.stop(server)
                    _report(results, name, round_, result)
                if postgraphile is not None:
                    request = tp._request(postgraphile.port, None, {"query": tp.PG_QUERY})
                    result = tp.drive("postgraphile", "read", postgraphile,
                                      lambda rng, r=request: r,
                                      tp.ReadCheck("postgraphile", first_page),
                                      drive_args)
                    _report(results, "postgraphile", round_, result)
    finally:
        tp.stop(postgraphile)
        drop_copies(copies)
        for source in sources.values():
            if source != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(source)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'source':<16} {'median req/s':>12} {'CPU ms/req':>10} {'p99 ms':>8}")
    reference = statistics.median(r[0] for r in results.get("postgraphile", [(0, 0, 0)]))
    for name, rows in results.items():
        rps = statistics.median(r[0] for r in rows)
        ratio = f"  a/c {rps / reference:.2f}" if reference and name != "postgraphile" else ""
        print(f"{name:<16} {rps:12.1f} {statistics.median(r[1] for r in rows):10.2f} "
              f"{statistics.median(r[2] for r in rows):8.1f}{ratio}")
    return 0


def _report(results: dict[str, list[tuple[float, float, float]]], name: str, round_: int,
            result: Any) -> None:
    if result.errors:
        raise SystemExit(f"{name}: {result.errors} bad answers: {result.first_error}")
    figures = (result.rps, 1000 * result.server_cpu_s / max(result.requests, 1),
               base.percentile(result.latencies_ms, 99))
    results.setdefault(name, []).append(figures)
    print(f"round {round_} {name:<16} {figures[0]:8.1f} req/s  CPU {figures[1]:5.2f} ms/req  "
          f"p99 {figures[2]:6.1f} ms", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
