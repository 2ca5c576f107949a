"""In-process companion to contacts_read.py: time and profile one request's work.

Runs `schema.graphql.execution.execute` for the contacts(first: 50) query directly (no HTTP),
single-threaded, on a guarded and an unguarded SQLite (or PostgreSQL) appliance filled as the
HTTP benchmark fills them; prints the per-request time of each and, with --profile, the
cProfile of the guarded path sorted by cumulative and own time.

    .venv/bin/python bench/profile_contacts.py [--backend sqlite|postgres] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import contacts_read as bench


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--breakdown", action="store_true",
                        help="time the guard's parts (reveal, preload, audit, commit)")
    args = parser.parse_args()

    from schema.graphql.execution import execute
    from schema.runtime import Appliance
    from security.principal import Principal

    principal = Principal(id="c-bench", name="c-bench", roles=("sales_manager",),
                          team=bench.TEAM, kind="client")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="enclave-prof-")))
        urls: list[str | None] = [None, None]
        if args.backend == "postgres":
            urls = list(stack.enter_context(bench.postgres_databases(2)))
        appliances = {}
        for path, url in zip(("guarded", "unguarded"), urls, strict=False):
            target = bench.Target(path, workdir / path, url)
            bench.populate(target, args.contacts, 20, 7)
            appliance = Appliance.open(target.settings(),
                                       unsafe_unguarded_for_benchmark=target.unguarded)
            stack.callback(appliance.close)
            appliances[path] = appliance

        def once(appliance: Appliance) -> None:
            body = execute(appliance, principal, bench.QUERY, None, None, "prof")
            problem = bench.check_body(__import__("json").dumps(body).encode())
            assert problem is None, problem

        timings: dict[str, list[float]] = {"guarded": [], "unguarded": []}
        cpu: dict[str, list[float]] = {"guarded": [], "unguarded": []}
        for appliance in appliances.values():
            for _ in range(20):
                once(appliance)
        for _ in range(args.iterations):  # interleaved
            for path, appliance in appliances.items():
                start, start_cpu = time.perf_counter(), time.thread_time()
                once(appliance)
                timings[path].append((time.perf_counter() - start) * 1000)
                cpu[path].append((time.thread_time() - start_cpu) * 1000)

        def median(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        for path, wall in timings.items():
            print(f"{args.backend} {path:<9} wall median {median(wall):6.2f} ms  "
                  f"CPU median {median(cpu[path]):6.2f} ms")
        g, u = median(timings["guarded"]), median(timings["unguarded"])
        gc_, uc = median(cpu["guarded"]), median(cpu["unguarded"])
        print(f"in-process ratio (unguarded / guarded): wall {u / g:.2f} (+{g - u:.2f} ms), "
              f"CPU {uc / gc_:.2f} (+{gc_ - uc:.2f} ms)")

        if args.breakdown:
            breakdown(appliances, once, args.iterations, args.backend)

        if args.profile:
            for path in ("guarded", "unguarded"):
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.iterations):
                    once(appliances[path])
                profiler.disable()
                for sort in ("cumulative", "tottime"):
                    out = io.StringIO()
                    pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(args.top)
                    print(f"==== {path} by {sort} ({args.iterations} requests) ====")
                    print(out.getvalue())


def breakdown(appliances, once, iterations, backend) -> None:  # type: ignore[no-untyped-def]
    """Wall time spent in each part of the guarded path, by wrapping the functions."""
    import functools

    from sqlalchemy.orm import Session

    import security.audit
    from schema.context import RequestContext
    from security.guard import Guard
    from security.keys import KeyRing
    from security.unguarded import UnguardedGuard

    spent: dict[str, float] = {}
    wrapped = [(Guard, "reveal"), (Guard, "preload"), (Guard, "_open"), (Guard, "_note_read"),
               (UnguardedGuard, "reveal"), (RequestContext, "finish"), (Session, "commit"),
               (KeyRing, "load_subject_keys"), (security.audit, "append"),
               (RequestContext, "__init__")]
    originals = []
    for owner, name in wrapped:
        original = getattr(owner, name)
        originals.append((owner, name, original))
        label = f"{getattr(owner, '__name__', owner)}.{name}"

        def timed(*a, __original=original, __label=label, **k):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return __original(*a, **k)
            finally:
                spent[__label] = spent.get(__label, 0.0) + time.perf_counter() - start

        setattr(owner, name, functools.wraps(original)(timed))
    try:
        for path, appliance in appliances.items():
            spent.clear()
            start = time.perf_counter()
            for _ in range(iterations):
                once(appliance)
            total = time.perf_counter() - start
            print(f"-- {backend} {path}: {total / iterations * 1000:.2f} ms per request "
                  "(with timing wrappers), of which:")
            for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"   {label:<32} {seconds / iterations * 1000:7.3f} ms")
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


if __name__ == "__main__":
    main()
