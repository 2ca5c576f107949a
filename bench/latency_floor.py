"""Benchmark: what p50 and p99 any server gets on this machine at 20 connections (issue 7).

A server that does nothing but spend a fixed amount of CPU per request (no database, no GraphQL,
no crypto) and answer with a body the size of the trusted read's, served the way `enclave
serve` serves (granian, one worker per core, uvloop, api.connection_balance) and driven by
bench/trusted_path.py's own load generator (20 keep-alive connections, closed loop). Each CPU
amount is one run: requests/s, p10, p50, p90, p99, and p99 against the mean latency (which a
closed loop fixes at connections / throughput).

It separates what our server does to the tail from what the machine does to any server's: if
this do-nothing server's p99 is about twice its mean at a given throughput, so will be
Enclave's and PostGraphile's at that throughput, and a p99 target is a throughput target.

Run from the repository root:  make bench-floor  (or .venv/bin/python bench/latency_floor.py
[--cpu-us 300 600 1200]). Only loopback traffic; every loop is bounded by time.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for entry in (str(ROOT), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import contacts_read as base  # noqa: E402  (free ports, percentiles)
import trusted_path  # noqa: E402  (the load generator, server processes)

#: About the size of the trusted read's answer (50 contacts with six fields and an account).
BODY = json.dumps({"data": {"filler": "x" * 9000}}).encode()


def build() -> Any:
    """The do-nothing application of one worker (granian calls this factory in each)."""
    from api import connection_balance

    cpu_s = int(os.environ["FLOOR_CPU_US"]) / 1e6
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        # CPU time, not wall time: a worker descheduled meanwhile still owes the whole amount.
        until = time.thread_time() + cpu_s
        while time.thread_time() < until:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    if connection_balance.TABLE is not None:
        return connection_balance.ConnectionBalancer(app, connection_balance.TABLE)
    return app


def serve_main(port: int, workers: int) -> None:
    """`latency_floor.py _serve PORT WORKERS`: as api.serving.serve starts granian."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    from api import connection_balance

    if workers > 1:
        try:
            connection_balance.TABLE = connection_balance.WorkerTable(workers)
        except OSError as error:  # as `enclave serve` does: serve unbalanced, and say so
            print(f"latency floor: connections not balanced ({error})", file=sys.stderr)
    Granian("latency_floor:build", factory=True, address=trusted_path.HOST, port=port,
            interface=Interfaces.ASGI, workers=workers, loop=Loops.uvloop,
            log_access=False).serve()


def start(cpu_us: int, workers: int, workdir: Path) -> trusted_path.Server:
    port = base.free_port()
    log = workdir / f"floor-{cpu_us}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_serve",
                                    str(port), str(workers)], cwd=BENCH, stdout=out,
                                   stderr=subprocess.STDOUT,
                                   env={**os.environ, "FLOOR_CPU_US": str(cpu_us)})
    server = trusted_path.Server(f"floor-{cpu_us}", port, process, log)
    trusted_path.wait_up(server, "/")
    return server


def main(argv: list[str]) -> int:
    if argv[:1] == ["_serve"]:
        serve_main(int(argv[1]), int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-us", type=int, nargs="+", default=[300, 600, 1200],
                        help="CPU per request, in microseconds (one run each)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="enclave-bench-floor-"))
    print(f"latency floor: {args.concurrency} connections, {args.workers} workers, "
          f"{args.warmup:g} s + {args.seconds:g} s per run", file=sys.stderr)
    print(f"{'CPU us/req':>10} {'req/s':>8} {'p10':>6} {'p50':>6} {'p90':>6} {'p99':>6} "
          f"{'mean':>6} {'p99/mean':>8}   (ms)")
    rows: list[dict[str, Any]] = []
    try:
        for cpu_us in args.cpu_us:
            server = start(cpu_us, args.workers, workdir)
            try:
                request = trusted_path._request(server.port, None, {"query": "{ floor }"})
                result = trusted_path.drive("floor", "read", server,
                                            lambda rng, request=request: request,
                                            lambda body: None if body == BODY else "wrong body",
                                            args)
            finally:
                trusted_path.stop(server)
            latencies = result.latencies_ms
            mean = args.concurrency * 1000 / result.rps if result.rps else float("nan")
            row = {"cpu_us": cpu_us, "rps": result.rps, "mean_ms": mean,
                   **{f"p{q}_ms": base.percentile(latencies, q) for q in (10, 50, 90, 99)},
                   "errors": result.errors, "first_error": result.first_error}
            rows.append(row)
            print(f"{cpu_us:>10} {result.rps:8.1f} "
                  + " ".join(f"{row[f'p{q}_ms']:6.1f}" for q in (10, 50, 90, 99))
                  + f" {mean:6.1f} {row['p99_ms'] / mean:8.2f}"
                  + (f"   ERRORS {result.errors}: {result.first_error}" if result.errors
                     else ""), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    output = BENCH / "results" / f"latency_floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "latency_floor", "revision": base.git_revision(),
        "args": vars(args), "machine": {"cpus": os.cpu_count(),
                                        "python": platform.python_version()},
        "runs": rows}, indent=2) + "\n")
    print(f"\nresults written to {output.relative_to(ROOT)}")
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
