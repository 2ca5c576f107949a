"""The server's periodic audit signer: no audit entry stays unsigned for long.

Appending signs a checkpoint every `audit_checkpoint_every` entries; on a quiet appliance that
can take hours, and entries not yet covered by a signed checkpoint are what someone with the
database could rewrite unnoticed. While a server runs, each worker looks every
`audit_checkpoint_seconds` and signs the log's end when it holds unsigned entries.

It also signs ahead of the count: the worker's audit writer wakes it once the log has grown
by three quarters of a checkpoint interval since the last signature it knows of. Signing at
the count happens inside the batch that reaches it, holding the head row's lock that every
appender of every worker waits on while the tree grows and the note is signed (about 10 ms
of CPU each); signing here grows the tree and signs holding no lock, and takes the lock only
to store the checkpoint (`security.audit.sign_ahead`), so the count is reached only when this
signer falls behind. Workers woken together sign once: on PostgreSQL a signer holds a lock
from reading the log's end until its checkpoint is stored, and a signer woken by the count
signs only if a quarter of an interval is still unsigned (another worker may have signed a
moment ago). A failure is logged and tried again at the next tick: it never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from schema.runtime import Appliance

log = logging.getLogger("enclave.audit")


async def sign_periodically(appliance: Appliance, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    writer = appliance.audit_writer

    def nudge() -> None:  # from the thread that appended
        loop.call_soon_threadsafe(wake.set)

    writer.nudge = nudge
    # Woken by the count, sign only if the end is still far from signed: another worker's
    # signer, woken by the same count, may have signed it a moment ago.
    nudged_at_least = max(1, appliance.settings.audit_checkpoint_every // 4)
    try:
        while True:
            at_least = 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), seconds)
                at_least = nudged_at_least
            wake.clear()
            try:
                await asyncio.to_thread(appliance.sign_audit_tail, at_least)
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("signing the audit log's end failed; trying again in %g s",
                              seconds)
    finally:
        writer.nudge = None


@contextlib.asynccontextmanager
async def running(appliance: Appliance) -> AsyncIterator[None]:
    """The periodic signer, for as long as the block runs (a server's lifespan)."""
    seconds = appliance.settings.audit_checkpoint_seconds
    if not seconds:
        yield
        return
    task = asyncio.get_running_loop().create_task(sign_periodically(appliance, seconds))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
