"""The event loop's read connections (storage.raw_connections): bounded, fair, read-only,
closed with their loop. Real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from schema.runtime import Appliance
from storage.raw_connections import RawConnections

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def _backends(appliance: Appliance) -> int:
    with appliance.engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")).scalar_one())


def test_callers_beyond_the_bound_wait_their_turn_and_none_is_lost(
        appliance: Appliance) -> None:
    pool = RawConnections(appliance.engine.url, size=2, statement_timeout_ms=0)
    order: list[int] = []

    async def read(index: int) -> Any:
        connection = await pool.get()
        try:
            value = await connection.fetchval("SELECT $1::int, pg_sleep(0.05)", index)
            order.append(index)
            return value
        finally:
            pool.put(connection)

    async def run() -> tuple[list[Any], int]:
        results = await asyncio.gather(*(read(i) for i in range(8)))
        return results, pool.opened

    results, opened = asyncio.run(run())
    assert results == list(range(8))
    assert sorted(order) == list(range(8))
    assert opened == 2  # eight readers, two connections


def test_a_discarded_connection_gives_its_place_to_a_waiting_caller(
        appliance: Appliance) -> None:
    pool = RawConnections(appliance.engine.url, size=1, statement_timeout_ms=0)

    async def run() -> int:
        first = await pool.get()
        waiting = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the one place is taken
        pool.discard(first)  # its statement failed, say
        second = await asyncio.wait_for(waiting, 5)
        assert second is not first and not second.is_closed()
        value = int(await second.fetchval("SELECT 1"))
        pool.put(second)
        return value

    assert asyncio.run(run()) == 1
    assert pool.opened == 2


def test_a_caller_cancelled_while_waiting_does_not_take_a_place(appliance: Appliance) -> None:
    pool = RawConnections(appliance.engine.url, size=1, statement_timeout_ms=0)

    async def run() -> None:
        first = await pool.get()
        gone = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.01)
        gone.cancel()
        later = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.01)
        pool.put(first)
        assert await asyncio.wait_for(later, 5) is first
        pool.put(first)

    asyncio.run(run())


def test_connections_close_when_their_loop_ends(appliance: Appliance) -> None:
    pool = RawConnections(appliance.engine.url, size=3, statement_timeout_ms=0)
    before = _backends(appliance)

    async def run() -> int:
        held = [await pool.get() for _ in range(3)]
        for connection in held:
            pool.put(connection)
        return _backends(appliance)

    assert asyncio.run(run()) == before + 3
    assert _backends(appliance) == before  # closed by the loop's shutdown, not left open


def test_the_read_connections_carry_the_statement_timeout(appliance: Appliance) -> None:
    pool = RawConnections(appliance.engine.url, size=1, statement_timeout_ms=100)

    async def run() -> None:
        connection = await pool.get()
        try:
            with pytest.raises(asyncpg.exceptions.QueryCanceledError):
                await connection.fetchval("SELECT pg_sleep(2)")
        finally:
            pool.discard(connection)

    asyncio.run(run())
