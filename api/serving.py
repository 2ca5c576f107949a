"""Production serving: granian, one worker process per core (issue 7).

granian's workers each accept on the shared socket (plain `uvicorn --workers` was seen handing
all 20 connections of a benchmark to one worker); which worker wins a connection is still the
kernel's pick (20 connections landed 6/14 to 10/10), so `api.connection_balance` evens out
keep-alive connections between them. Each worker opens its own appliance (keys unsealed from
the same passphrase source) and its own database pool: `storage.db.make_engine` gives 10
connections + 10 overflow per worker, so cores x 20 stays well under PostgreSQL's default
max_connections of 100 on the supported 2-8 core profiles. `ENCLAVE_WORKERS` overrides the count.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from security.config import Settings


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


def build() -> Any:
    """The application of one worker (granian calls this factory in each worker)."""
    from api import connection_balance
    from api.app import create_app
    from schema.runtime import Appliance
    app = create_app(Appliance.open(Settings.from_env()))
    if connection_balance.TABLE is not None:  # made by `serve` before forking this worker
        app = connection_balance.ConnectionBalancer(app, connection_balance.TABLE)
    # Everything built so far (schema, policy, key ring, SQLAlchemy's mappers) lives as long
    # as the worker: keep it out of the collector's generations, so that collections walk only
    # what requests allocate (measured: shorter pauses, p99 of the trusted read down by half).
    gc.collect()
    gc.freeze()
    # A request allocates thousands of objects (a page's rows, records and strings) and frees
    # nearly all of them by reference counting; at the default threshold (700) the collector
    # ran several times per request and took about 5% of a worker's CPU (perf). Collections
    # of the young generation every GC_YOUNG allocations still bound what cyclic garbage can
    # pile up.
    gc.set_threshold(GC_YOUNG, 20, 20)
    return app


GC_YOUNG = 50_000


def serve(settings: Settings) -> None:
    """Serve with `worker_count(settings)` granian workers; the settings reach each worker
    through the environment it inherits."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    from api import connection_balance

    os.environ["ENCLAVE_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        os.environ["ENCLAVE_DATABASE_URL"] = settings.database_url
    os.environ["ENCLAVE_HOST"], os.environ["ENCLAVE_PORT"] = settings.host, str(settings.port)
    workers = worker_count(settings)
    if workers > 1:  # which worker accepts a connection is the kernel's pick: even it out
        try:
            connection_balance.TABLE = connection_balance.WorkerTable(workers)
        except OSError as error:  # a sandbox without memfd: serve, unbalanced, and say so
            print(f"enclave: connections not balanced over workers ({error})", file=sys.stderr)
    Granian("api.serving:build", factory=True, address=settings.host, port=settings.port,
            interface=Interfaces.ASGI, workers=workers,
            # uvloop named rather than left to granian's `auto`, which would take its own
            # experimental loop (rloop) first if that were ever installed.
            loop=Loops.uvloop, respawn_failed_workers=True, log_access=False).serve()
