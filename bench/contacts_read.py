"""Benchmark: what encryption, authorisation and audit cost on the hottest read.

    contacts(first: 50) { every personal field + the nested account }

as a sales_manager, over real HTTP (uvicorn on 127.0.0.1, a separate server process), through
the whole stack (token check, GraphQL, ORM, database), against the same query on an appliance
opened with `unsafe_unguarded_for_benchmark=True` whose data were also written unguarded
(personal fields stored as plain bytes, every decision "allow", nothing audited).

For each backend (SQLite in a temporary data folder; PostgreSQL in throwaway databases on
127.0.0.1:5432 that are dropped at the end) it builds both appliances with the same synthetic
contacts, serves each, and drives them alternately (guarded, unguarded, unguarded, guarded, ...)
with N keep-alive clients for a fixed time after a warm-up. It prints requests/s, p50 and p99
latency per path and the ratio guarded/unguarded per backend (the target is >= 0.7), checks
every response (no errors, 50 edges, decrypted values, nested account) and that the guarded run
wrote one `contact.read` audit entry per request. Results also go to bench/results/*.json.

Run from the repository root:  .venv/bin/python bench/contacts_read.py [--help]
Only loopback traffic; every loop is bounded by time.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("ENCLAVE_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
HOST = "127.0.0.1"
TEAM = "bench"
PAGE = 50
TARGET_RATIO = 0.7

QUERY = ("query { contacts(first: 50) { edges { node { id firstName lastName title email phone "
         "address birthDate nationalId notes account { id name industry } } } } }")
PERSONAL = ("firstName", "lastName", "title", "email", "phone", "address", "birthDate",
            "nationalId", "notes")


# -- the server (a child process) ------------------------------------------------------------

def serve_main(argv: list[str]) -> None:
    """`contacts_read.py _serve DATA_DIR PORT [DB_URL] [--unguarded]`: one uvicorn, loopback."""
    import logging

    import uvicorn

    from api.app import create_app
    from schema.runtime import Appliance
    from security.config import Settings

    parser = argparse.ArgumentParser(prog="contacts_read.py _serve")
    parser.add_argument("data_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--database-url")
    parser.add_argument("--unguarded", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(data_dir=Path(args.data_dir), database_url=args.database_url,
                        dev_mode=True, host=HOST, port=args.port)
    appliance = Appliance.open(settings, unsafe_unguarded_for_benchmark=args.unguarded)
    # As `enclave serve`, minus the per-request access log line (equal on both paths).
    uvicorn.run(create_app(appliance), host=HOST, port=args.port, log_level="warning",
                access_log=False, server_header=False, proxy_headers=False)


# -- building the two appliances --------------------------------------------------------------

@dataclass
class Target:
    """One appliance (guarded or not), its data and, once started, its server."""

    path: str  # "guarded" | "unguarded"
    data_dir: Path
    database_url: str | None
    client_id: str = ""
    client_secret: str = ""
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def unguarded(self) -> bool:
        return self.path == "unguarded"

    def settings(self) -> Any:
        from security.config import Settings
        return Settings(data_dir=self.data_dir, database_url=self.database_url, dev_mode=True)


def populate(target: Target, contacts: int, accounts: int, seed: int) -> float:
    """Initialise, fill (through the path under test) and make a sales_manager client."""
    from api import demo_data
    from schema.context import unit_of_work
    from schema.ops import accounts as account_ops
    from schema.ops import clients as client_ops
    from schema.ops import contacts as contact_ops
    from schema.runtime import Appliance, initialise
    from security.principal import Principal

    started = time.perf_counter()
    settings = target.settings()
    initialise(settings)
    appliance = Appliance.open(settings, unsafe_unguarded_for_benchmark=target.unguarded)
    try:
        rng = random.Random(seed)  # the same records on both paths
        writer = Principal(id="bench-loader", name="bench-loader", roles=("sales_manager",),
                           team=TEAM, kind="operator")
        with unit_of_work(appliance, writer) as ctx:
            account_ids = [account_ops.create_account(ctx, data).id
                           for data in demo_data.accounts(accounts, rng)]
        batch = list(demo_data.contacts(contacts, rng))
        for start in range(0, len(batch), 500):
            with unit_of_work(appliance, writer) as ctx:
                for data in batch[start:start + 500]:
                    contact_ops.create_contact(ctx, {**data,
                                                     "account_id": rng.choice(account_ids)})
        admin = Principal(id="bench-admin", name="bench-admin", roles=("admin",), kind="operator")
        with unit_of_work(appliance, admin) as ctx:
            issued = client_ops.create_client(ctx, name="bench", roles=["sales_manager"],
                                              team=TEAM)
            target.client_id, target.client_secret = issued.client.id, issued.secret
    finally:
        appliance.close()
    return time.perf_counter() - started


def storage_check(target: Target) -> dict[str, Any]:
    """How the personal fields sit on disk: ciphertext (guarded) or plain bytes (unguarded)."""
    from sqlalchemy import func, select

    from storage.db import make_engine, make_session_factory
    from storage.models import Contact

    engine = make_engine(target.settings().resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            row = session.scalars(select(Contact).limit(1)).one()
            total = session.scalar(select(func.count()).select_from(Contact))
            blob = row.email.ciphertext if row.email is not None else b""
            plain = b"@example." in blob  # demo emails are all @example.*
            return {"contacts": total, "email_on_disk_is_plaintext": plain,
                    "key_version": row.key_version}
    finally:
        engine.dispose()


def audit_reads(target: Target) -> int:
    """Audit entries recording contact reads, read straight from the database."""
    from sqlalchemy import func, select

    from storage.db import make_engine
    from storage.models import AuditEvent

    engine = make_engine(target.settings().resolved_database_url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.action == "contact.read")) or 0)
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(target: Target, workdir: Path) -> None:
    target.port = free_port()
    target.log_path = workdir / f"server-{target.path}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "_serve", str(target.data_dir),
               str(target.port)]
    if target.database_url:
        command += ["--database-url", target.database_url]
    if target.unguarded:
        command.append("--unguarded")
    with open(target.log_path, "wb") as log:
        target.process = subprocess.Popen(command, cwd=ROOT, stdout=log,
                                          stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise RuntimeError(f"the {target.path} server exited: "
                               f"{target.log_path.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection(HOST, target.port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the {target.path} server did not come up on port {target.port}")


def stop_server(target: Target) -> None:
    process = target.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def fetch_token(target: Target) -> str:
    basic = base64.b64encode(f"{target.client_id}:{target.client_secret}".encode()).decode()
    connection = http.client.HTTPConnection(HOST, target.port, timeout=30)
    try:
        connection.request("POST", "/oauth/token", body="grant_type=client_credentials",
                           headers={"Authorization": f"Basic {basic}",
                                    "Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"token request failed: {response.status} {body[:300]!r}")
        return str(json.loads(body)["access_token"])
    finally:
        connection.close()


# -- load ----------------------------------------------------------------------------------

@dataclass
class RunResult:
    backend: str
    path: str
    round: int
    seconds: float
    requests: int  # completed inside the measured window
    total_requests: int  # including warm-up and the tail
    errors: int
    first_error: str | None
    server_cpu_s: float | None = None  # the uvicorn process, during the measured window
    db_cpu_s: float | None = None  # PostgreSQL backends of the target database, same window
    latencies_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def db_backend_pids(target: Target) -> list[int]:
    """The PostgreSQL server processes currently connected to the target's database."""
    if not target.database_url:
        return []
    from sqlalchemy import create_engine, text
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            return [int(pid) for pid in connection.scalars(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                {"name": target.database_url.rsplit("/", 1)[1]})]
    finally:
        engine.dispose()


def cpu_snapshot(target: Target) -> tuple[float | None, dict[int, float]]:
    server = process_cpu(target.process.pid) if target.process else None
    backends = {pid: cpu for pid in db_backend_pids(target)
                if (cpu := process_cpu(pid)) is not None}
    return server, backends


def check_body(body: bytes) -> str | None:
    """None when the response is the full, correct page; else what is wrong with it."""
    try:
        document = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if document.get("errors"):
        return f"errors: {json.dumps(document['errors'])[:300]}"
    try:
        edges = document["data"]["contacts"]["edges"]
    except (KeyError, TypeError):
        return f"no contacts: {body[:200]!r}"
    if len(edges) != PAGE:
        return f"{len(edges)} edges, expected {PAGE}"
    for edge in (edges[0], edges[-1]):
        node = edge["node"]
        missing = [name for name in PERSONAL if node.get(name) is None]
        if missing:
            return f"fields missing on {node.get('id')}: {missing}"
        if "@" not in node["email"] or "*" in node["email"] or "*" in node["birthDate"]:
            return f"email/birthDate not in the clear: {node['email']!r} {node['birthDate']!r}"
        account = node.get("account")
        if not account or not account.get("name"):
            return f"no nested account on {node.get('id')}"
    return None


@dataclass
class _Tally:
    total: int = 0
    errors: int = 0
    first_error: str | None = None


def drive(target: Target, backend: str, round_: int, *, token: str, concurrency: int,
          warmup: float, seconds: float) -> RunResult:
    """N keep-alive clients send the query back to back; only the window after warm-up counts."""
    payload = json.dumps({"query": QUERY}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    start = time.perf_counter()
    window_start = start + warmup
    window_end = window_start + seconds
    hard_stop = window_end + 30  # a request in flight at the end gets this long
    lock = threading.Lock()
    latencies: list[float] = []
    tally = _Tally()

    def client() -> None:
        mine: list[float] = []
        total = errors = 0
        first_error: str | None = None
        connection = http.client.HTTPConnection(HOST, target.port, timeout=30)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= window_end or sent >= hard_stop:
                    break
                try:
                    connection.request("POST", "/graphql", body=payload, headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                    problem = (None if response.status == 200
                               else f"HTTP {response.status}: {body[:200]!r}")
                except (OSError, http.client.HTTPException) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                    connection.close()
                    connection = http.client.HTTPConnection(HOST, target.port, timeout=30)
                done = time.perf_counter()
                if problem is None:
                    problem = check_body(body)
                total += 1
                if problem is not None:
                    errors += 1
                    first_error = first_error or problem
                    if errors >= 20:
                        break  # something is broken; do not spin on it
                elif sent >= window_start and done <= window_end:
                    mine.append((done - sent) * 1000)
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)
                tally.total += total
                tally.errors += errors
                tally.first_error = tally.first_error or first_error

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    # CPU spent by the server (and its database backends) inside the measured window: unlike
    # requests/s, CPU per request hardly moves when other work shares the machine.
    time.sleep(max(0.0, window_start - time.perf_counter()))
    server_0, db_0 = cpu_snapshot(target)
    time.sleep(max(0.0, window_end - time.perf_counter()))
    server_1, db_1 = cpu_snapshot(target)
    for thread in threads:
        thread.join(max(0.0, hard_stop - time.perf_counter()) + 5)
    server_cpu = server_1 - server_0 if server_0 is not None and server_1 is not None else None
    db_cpu = (sum(cpu - db_0.get(pid, 0.0) for pid, cpu in db_1.items())
              if target.database_url and db_1 else None)
    return RunResult(backend=backend, path=target.path, round=round_, seconds=seconds,
                     requests=len(latencies), total_requests=tally.total,
                     errors=tally.errors, first_error=tally.first_error,
                     server_cpu_s=server_cpu, db_cpu_s=db_cpu,
                     latencies_ms=latencies)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- backends ------------------------------------------------------------------------------

@contextmanager
def postgres_databases(count: int) -> Iterator[list[str]]:
    """`count` throwaway databases on the local server, dropped (forcefully) at the end."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the same here
        admin.dispose()
        raise SystemExit(f"PostgreSQL is not reachable at {PG_ADMIN_URL} "
                         f"({type(exc).__name__}); set ENCLAVE_BENCH_PG_URL or use "
                         "--backends sqlite") from None
    names = [f"enclave_bench_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    created: list[str] = []
    try:
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield [f"{base}/{name}" for name in names]
    finally:
        with admin.connect() as connection:
            for name in created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_backend(backend: str, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="enclave-bench-")))
        urls: list[str | None] = [None, None]
        if backend == "postgres":
            urls = list(stack.enter_context(postgres_databases(2)))
        targets = [Target("guarded", workdir / "guarded", urls[0]),
                   Target("unguarded", workdir / "unguarded", urls[1])]
        by_path = {t.path: t for t in targets}
        setup: dict[str, Any] = {}
        for target in targets:
            took = populate(target, args.contacts, args.accounts, args.seed)
            setup[target.path] = {"populate_seconds": round(took, 2), **storage_check(target)}
            log(f"  [{backend}] {target.path}: {args.contacts} contacts / {args.accounts} "
                f"accounts written in {took:.1f} s "
                f"(email on disk in plaintext: {setup[target.path]['email_on_disk_is_plaintext']})")
        for target in targets:
            stack.callback(stop_server, target)
            start_server(target, workdir)
        # Interleave to spread machine noise: G U U G G U ...
        order = []
        for round_ in range(args.rounds):
            pair = ["guarded", "unguarded"] if round_ % 2 == 0 else ["unguarded", "guarded"]
            order += [(round_ + 1, p) for p in pair]
        runs: list[RunResult] = []
        audit_before = audit_reads(by_path["guarded"])
        sent_guarded = 0
        for round_, path in order:
            target = by_path[path]
            token = fetch_token(target)
            result = drive(target, backend, round_, token=token, concurrency=args.concurrency,
                           warmup=args.warmup, seconds=args.seconds)
            runs.append(result)
            if path == "guarded":
                sent_guarded += result.total_requests - result.errors
            cpu = (f"  server CPU {1000 * result.server_cpu_s / result.requests:5.2f} ms/req"
                   if result.server_cpu_s is not None and result.requests else "")
            if result.db_cpu_s is not None and result.requests:
                cpu += f"  db CPU {1000 * result.db_cpu_s / result.requests:5.2f} ms/req"
            log(f"  [{backend}] round {round_} {path:<9} {result.rps:8.1f} req/s  "
                f"p50 {percentile(result.latencies_ms, 50):6.1f} ms  "
                f"p99 {percentile(result.latencies_ms, 99):6.1f} ms{cpu}"
                + (f"  ERRORS {result.errors}: {result.first_error}" if result.errors else ""))
            if result.errors:
                break
        audit_written = audit_reads(by_path["guarded"]) - audit_before
        audit_unguarded = audit_reads(by_path["unguarded"])
        for target in targets:
            stop_server(target)
        if args.keep_logs:
            for target in targets:
                if target.log_path and target.log_path.exists():
                    kept = ROOT / "bench" / "results" / f"server-{backend}-{target.path}.log"
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(target.log_path, kept)

    summary: dict[str, Any] = {"backend": backend, "setup": setup, "paths": {}}
    for path in ("guarded", "unguarded"):
        mine = [r for r in runs if r.path == path]
        latencies = [x for r in mine for x in r.latencies_ms]
        seconds = sum(r.seconds for r in mine)
        summary["paths"][path] = {
            "rps": (sum(r.requests for r in mine) / seconds) if seconds else 0.0,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
            "requests": sum(r.requests for r in mine),
            "errors": sum(r.errors for r in mine),
            "rounds_rps": [round(r.rps, 1) for r in mine],
            "server_cpu_ms_per_request": cpu_per_request(mine, "server_cpu_s"),
            "db_cpu_ms_per_request": cpu_per_request(mine, "db_cpu_s"),
        }
    guarded, unguarded = summary["paths"]["guarded"], summary["paths"]["unguarded"]
    summary["ratio"] = guarded["rps"] / unguarded["rps"] if unguarded["rps"] else float("nan")
    # The same comparison by CPU cost (server process + database backends) per request.
    cost = {path: (figures["server_cpu_ms_per_request"] or 0.0)
            + (figures["db_cpu_ms_per_request"] or 0.0)
            for path, figures in summary["paths"].items()}
    summary["cpu_ratio"] = (cost["unguarded"] / cost["guarded"]
                            if cost["guarded"] and cost["unguarded"] else None)
    summary["audit"] = {"contact_read_entries_written": audit_written,
                        "guarded_requests_answered": sent_guarded,
                        "one_per_request": audit_written == sent_guarded,
                        "unguarded_contact_read_entries": audit_unguarded}
    summary["errors"] = [r.first_error for r in runs if r.errors]
    summary["runs"] = [{k: v for k, v in asdict(r).items() if k != "latencies_ms"}
                       | {"rps": r.rps} for r in runs]
    return summary


def cpu_per_request(runs: list[RunResult], attribute: str) -> float | None:
    values = [getattr(r, attribute) for r in runs]
    requests = sum(r.requests for r in runs)
    if not requests or any(v is None for v in values):
        return None
    return 1000 * sum(values) / requests


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True, timeout=5,
                               check=False).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["_serve"]:
        serve_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per path, interleaved")
    parser.add_argument("--concurrency", type=int, default=4, help="keep-alive clients")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-logs", action="store_true", help="copy server logs to results")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/...)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(backends) <= {"sqlite", "postgres"} or not backends:
        parser.error("--backends takes sqlite and/or postgres")
    if args.contacts < PAGE:
        parser.error(f"--contacts must be at least {PAGE}")
    if not (args.seconds > 0 and args.warmup >= 0 and args.rounds >= 1 and args.concurrency >= 1
            and args.accounts >= 1):
        parser.error("--seconds, --rounds, --concurrency and --accounts must be positive")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    os.umask(0o077)
    log(f"contacts(first: {PAGE}) as sales_manager over HTTP: {args.contacts} contacts, "
        f"{args.concurrency} clients, {args.rounds} x ({args.warmup:g} s warm-up + "
        f"{args.seconds:g} s) per path, backends {', '.join(backends)}")
    started = time.perf_counter()
    summaries = []
    for backend in backends:
        summaries.append(run_backend(backend, args, log))

    print()
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(f"{'backend':<9} {'path':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'rounds req/s':<18} {'ratio':>6}   {'CPU ms/req: server':>18} {'db':>6} "
          f"{'CPU ratio':>9}")
    for summary in summaries:
        for path in ("guarded", "unguarded"):
            figures = summary["paths"][path]
            ratio = f"{summary['ratio']:.2f}" if path == "guarded" else ""
            cpu_ratio = (f"{summary['cpu_ratio']:.2f}" if path == "guarded"
                         and summary["cpu_ratio"] is not None else "")
            print(f"{summary['backend']:<9} {path:<10} {figures['rps']:8.1f} "
                  f"{figures['p50_ms']:8.1f} {figures['p99_ms']:8.1f} "
                  f"{' '.join(f'{x:.1f}' for x in figures['rounds_rps']):<18} {ratio:>6}   "
                  f"{ms(figures['server_cpu_ms_per_request']):>18} "
                  f"{ms(figures['db_cpu_ms_per_request']):>6} {cpu_ratio:>9}")
    print()
    failed = False
    for summary in summaries:
        audit = summary["audit"]
        verdict = "meets" if summary["ratio"] >= TARGET_RATIO else "BELOW"
        cpu_note = (f" (by CPU per request: {summary['cpu_ratio']:.2f})"
                    if summary["cpu_ratio"] is not None else "")
        print(f"{summary['backend']}: guarded/unguarded = {summary['ratio']:.2f} ({verdict} the "
              f"{TARGET_RATIO} target){cpu_note}; audit: {audit['contact_read_entries_written']} contact.read "
              f"entries for {audit['guarded_requests_answered']} guarded requests "
              f"({'one each' if audit['one_per_request'] else 'MISMATCH'}), "
              f"{audit['unguarded_contact_read_entries']} on the unguarded appliance")
        if summary["errors"]:
            failed = True
            print(f"{summary['backend']}: ERRORS: {summary['errors']}")
        if not audit["one_per_request"]:
            failed = True

    output = args.output or (ROOT / "bench" / "results" /
                             f"contacts_read-{time.strftime('%Y%m%d-%H%M%S')}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "contacts_read", "query": QUERY, "target_ratio": TARGET_RATIO,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "revision": git_revision(), "wall_seconds": round(time.perf_counter() - started, 1),
        "backends": summaries,
    }, indent=2) + "\n")
    print(f"\nresults written to {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}"
          f" ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
