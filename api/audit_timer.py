"""The server's periodic audit signer: no audit entry stays unsigned for long.

Appending signs a checkpoint every `audit_checkpoint_every` entries; on a quiet appliance that
can take hours, and entries not yet covered by a signed checkpoint are what someone with the
database could rewrite unnoticed. While a server runs, each worker looks every
`audit_checkpoint_seconds` and signs the log's end when it holds unsigned entries (the head
row's lock keeps two workers from signing the same size; the second finds nothing to do).
A failure is logged and tried again at the next tick: it never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from schema.runtime import Appliance

log = logging.getLogger("enclave.audit")


async def sign_periodically(appliance: Appliance, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(appliance.sign_audit_tail)
        except Exception:  # noqa: BLE001 - the next tick tries again
            log.exception("signing the audit log's end failed; trying again in %g s", seconds)


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
