"""Benchmark: what record rules and field decisions cost on the pipeline summary.

    pipelineSummary(currency: "EUR") { stage { id } count totalAmount weightedAmount }

as a sales_manager (team rule: the SQL aggregate carries the team clause; amount, stage,
probability and currency are checked readable), over real HTTP through the whole stack (token,
GraphQL, ORM, GROUP BY in the database), against the same query on an appliance opened with
`unsafe_unguarded_for_benchmark=True` (every decision "allow", scope "@all").

For each backend (SQLite in a temporary data folder; PostgreSQL in throwaway databases on
127.0.0.1:5432, dropped at the end) it fills both appliances with the same N synthetic
opportunities of the manager's team (the guarded one also holds as many of another team, which
its record rule must leave out), serves each (the server of bench/contacts_read.py), and drives
them alternately with keep-alive clients. Both paths so give the same answer, which every
response is checked against (computed here from the seed with Decimals). It prints req/s, p50
and p99 per path and the ratio guarded/unguarded, by req/s and by CPU per request (server plus
database backends: unguarded cost / guarded cost), the steadier figure on a shared machine.

Run from the repository root:  .venv/bin/python bench/pipeline_summary.py [--help]
The default run (both backends) takes well under a minute. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import contacts_read as common  # noqa: E402  (the server, tokens, PostgreSQL databases)

TEAM = common.TEAM
OTHER_TEAM = "elsewhere"
QUERY = ('query { pipelineSummary(currency: "EUR") { stage { id } currency count totalAmount '
         "weightedAmount } }")
STAGES = {"prospecting": 10, "qualification": 25, "proposal": 50, "negotiation": 75,
          "won": 100, "lost": 0}


def synthetic(count: int, seed: int) -> list[dict[str, Any]]:
    """Opportunities with amounts in cents (exact), spread over the stages and two currencies."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        stage = rng.choice(list(STAGES))
        rows.append({"name": f"Deal {i:05d}", "stage_id": stage, "probability": STAGES[stage],
                     "currency": "EUR" if rng.random() < 0.8 else "USD",
                     "amount": Decimal(rng.randint(100, 50_000_000)) / 100})
    return rows


def expected(rows: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal, Decimal]]:
    """The guarded manager's EUR figures per stage, computed from the seed."""
    found = {stage: (0, Decimal(0), Decimal(0)) for stage in STAGES}
    for row in rows:
        if row["currency"] != "EUR":
            continue
        count, total, weighted = found[row["stage_id"]]
        found[row["stage_id"]] = (count + 1, total + row["amount"],
                                  weighted + row["amount"] * row["probability"] / 100)
    return found


def populate(target: common.Target, rows: list[dict[str, Any]]) -> float:
    """Initialise, insert the rows for TEAM (and, guarded, again for OTHER_TEAM), make a
    manager client."""
    from schema.context import unit_of_work
    from schema.ops import clients as client_ops
    from schema.runtime import Appliance, initialise
    from security.principal import Principal
    from storage.crm_models import Opportunity
    from storage.ids import new_id

    started = time.perf_counter()
    settings = target.settings()
    initialise(settings)
    appliance = Appliance.open(settings, unsafe_unguarded_for_benchmark=target.unguarded)
    try:
        # Plain rows (nothing sealed): the figures, not the writes, are under test.
        with appliance.sessions() as session, session.begin():
            for team in (TEAM,) if target.unguarded else (TEAM, OTHER_TEAM):
                session.execute(Opportunity.__table__.insert(), [
                    {**row, "id": new_id(), "owner": f"seed-{team}", "team": team,
                     "key_version": None} for row in rows])
        admin = Principal(id="bench-admin", name="bench-admin", roles=("admin",),
                          kind="operator")
        with unit_of_work(appliance, admin) as ctx:
            issued = client_ops.create_client(ctx, name="bench", roles=["sales_manager"],
                                              team=TEAM)
            target.client_id, target.client_secret = issued.client.id, issued.secret
    finally:
        appliance.close()
    return time.perf_counter() - started


def check_body(body: bytes, want: dict[str, tuple[int, Decimal, Decimal]]) -> str | None:
    try:
        document = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if document.get("errors"):
        return f"errors: {json.dumps(document['errors'])[:300]}"
    rows = (document.get("data") or {}).get("pipelineSummary") or []
    got = {r["stage"]["id"]: (r["count"], Decimal(r["totalAmount"]), Decimal(r["weightedAmount"]))
           for r in rows}
    if got != want:
        return f"figures differ: {got} != {want}"
    return None


def drive(target: common.Target, *, token: str, want: dict[str, tuple[int, Decimal, Decimal]],
          concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    payload = json.dumps({"query": QUERY}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    window_start = time.perf_counter() + warmup
    window_end = window_start + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    problems: list[str] = []

    def client() -> None:
        mine: list[float] = []
        connection = http.client.HTTPConnection(common.HOST, target.port, timeout=30)
        try:
            while (sent := time.perf_counter()) < window_end:
                connection.request("POST", "/graphql", body=payload, headers=headers)
                response = connection.getresponse()
                body = response.read()
                done = time.perf_counter()
                problem = (f"HTTP {response.status}" if response.status != 200
                           else check_body(body, want))
                if problem is not None:
                    with lock:
                        problems.append(problem)
                    return
                if sent >= window_start and done <= window_end:
                    mine.append((done - sent) * 1000)
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    # CPU of the server and its database backends inside the window: steadier than req/s
    # when other work shares the machine.
    time.sleep(max(0.0, window_start - time.perf_counter()))
    server_0, db_0 = common.cpu_snapshot(target)
    time.sleep(max(0.0, window_end - time.perf_counter()))
    server_1, db_1 = common.cpu_snapshot(target)
    for thread in threads:
        thread.join(window_end - time.perf_counter() + 35)
    cpu = None
    if server_0 is not None and server_1 is not None and latencies:
        used = server_1 - server_0 + sum(v - db_0.get(pid, 0.0) for pid, v in db_1.items())
        cpu = 1000 * used / len(latencies)
    return {"rps": len(latencies) / seconds, "p50_ms": common.percentile(latencies, 50),
            "p99_ms": common.percentile(latencies, 99), "requests": len(latencies),
            "cpu_ms_per_request": cpu, "errors": problems[:3]}


def run_backend(backend: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    want = expected(rows)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="enclave-bench-")))
        urls: list[str | None] = [None, None]
        if backend == "postgres":
            urls = list(stack.enter_context(common.postgres_databases(2)))
        targets = {"guarded": common.Target("guarded", workdir / "guarded", urls[0]),
                   "unguarded": common.Target("unguarded", workdir / "unguarded", urls[1])}
        for target in targets.values():
            took = populate(target, rows)
            held = len(rows) * (1 if target.unguarded else 2)
            print(f"  [{backend}] {target.path}: {held} opportunities in {took:.1f} s",
                  file=sys.stderr, flush=True)
        for target in targets.values():
            stack.callback(common.stop_server, target)
            common.start_server(target, workdir)
        results: dict[str, list[dict[str, Any]]] = {"guarded": [], "unguarded": []}
        for round_ in range(args.rounds):
            order = ["guarded", "unguarded"] if round_ % 2 == 0 else ["unguarded", "guarded"]
            for path in order:
                target = targets[path]
                result = drive(target, token=common.fetch_token(target), want=want,
                               concurrency=args.concurrency, warmup=args.warmup,
                               seconds=args.seconds)
                results[path].append(result)
                print(f"  [{backend}] round {round_ + 1} {path:<9} {result['rps']:8.1f} req/s  "
                      f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
                      f"CPU {_ms(result['cpu_ms_per_request'])} ms/req"
                      + (f"  ERRORS: {result['errors']}" if result["errors"] else ""),
                      file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"backend": backend, "paths": {}}
    for path, runs in results.items():
        summary["paths"][path] = {
            "rps": sum(r["rps"] for r in runs) / len(runs),
            "p50_ms": sum(r["p50_ms"] for r in runs) / len(runs),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "cpu_ms_per_request": (None if any(r["cpu_ms_per_request"] is None for r in runs)
                                   else sum(r["cpu_ms_per_request"] for r in runs) / len(runs)),
            "errors": [e for r in runs for e in r["errors"]]}
    unguarded_rps = summary["paths"]["unguarded"]["rps"]
    summary["ratio"] = (summary["paths"]["guarded"]["rps"] / unguarded_rps
                        if unguarded_rps else float("nan"))
    cost = [summary["paths"][p]["cpu_ms_per_request"] for p in ("unguarded", "guarded")]
    summary["cpu_ratio"] = cost[0] / cost[1] if all(cost) else None
    return summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--opportunities", type=int, default=2000,
                        help="in the manager's team (the guarded appliance holds twice as many)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=1, help="runs per path, interleaved")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or not set(backends) <= {"sqlite", "postgres"}:
        parser.error("--backends takes sqlite and/or postgres")
    if args.opportunities < 1 or args.seconds <= 0 or args.rounds < 1 or args.concurrency < 1:
        parser.error("--opportunities, --seconds, --rounds and --concurrency must be positive")
    os.umask(0o077)
    started = time.perf_counter()
    rows = synthetic(args.opportunities, args.seed)
    print(f"pipelineSummary as sales_manager over HTTP: {args.opportunities} opportunities per "
          f"team, {args.concurrency} clients, {args.rounds} x ({args.warmup:g} s + "
          f"{args.seconds:g} s) per path", file=sys.stderr, flush=True)
    summaries = [run_backend(backend, args, rows) for backend in backends]
    print(f"\n{'backend':<9} {'path':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} "
          f"{'CPU ms/req':>10} {'CPU ratio':>9}")
    failed = False
    for summary in summaries:
        for path in ("guarded", "unguarded"):
            figures = summary["paths"][path]
            ratio = f"{summary['ratio']:.2f}" if path == "guarded" else ""
            cpu_ratio = (f"{summary['cpu_ratio']:.2f}" if path == "guarded"
                         and summary["cpu_ratio"] is not None else "")
            print(f"{summary['backend']:<9} {path:<10} {figures['rps']:8.1f} "
                  f"{figures['p50_ms']:8.1f} {figures['p99_ms']:8.1f} {ratio:>6} "
                  f"{_ms(figures['cpu_ms_per_request']):>10} {cpu_ratio:>9}")
            if figures["errors"]:
                failed = True
                print(f"{summary['backend']} {path}: ERRORS {figures['errors']}")
    output = args.output or (ROOT / "bench" / "results" /
                             f"pipeline_summary-{time.strftime('%Y%m%d-%H%M%S')}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "pipeline_summary", "query": QUERY,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "revision": common.git_revision(), "backends": summaries,
        "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
    print(f"\nresults written to {output} ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
