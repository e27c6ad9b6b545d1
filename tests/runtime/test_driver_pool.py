"""The driver's connection pool (his.runtime.driver_pool) through `Database.driver()`, on the real
session database: connections are reused, lost ones replaced, a full pool refuses in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from his.base.errors import FailedPrecondition, ResourceExhausted, Unavailable
from his.runtime.config import DatabaseConfig
from his.runtime.database import Database, translate_error

NAME = "his-driver-pool-test"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(
        database_url,
        DatabaseConfig(driver_pool_size=2, pool_timeout_s=0.3),
        application_name=NAME,
    )
    yield db
    await db.dispose()


async def _pid(database: Database) -> int:
    async with database.driver() as connection:
        return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def _terminate_ours(database_url: str) -> int:
    """What a restart or failover does to every connection of the pool: the server ends them."""
    outsider = await asyncpg.connect(database_url)
    try:
        return int(
            await outsider.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                NAME,
            )
        )
    finally:
        await outsider.close()


async def test_a_connection_is_reused_after_a_statement_the_server_refused(
    database: Database,
) -> None:
    first = await _pid(database)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with database.driver() as connection:
            await connection.fetchval("SELECT 1 / 0")
    assert await _pid(database) == first
    assert database.driver_pool.open_connections == 1


async def test_our_refusal_inside_a_transaction_rolls_it_back_and_keeps_the_connection(
    database: Database,
) -> None:
    first = await _pid(database)
    with pytest.raises(FailedPrecondition):
        async with database.driver_transaction() as connection:
            await connection.execute("CREATE TEMPORARY TABLE refused (x int) ON COMMIT DROP")
            raise FailedPrecondition("the slot is full", reason="SLOT_FULL")
    async with database.driver() as connection:
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SELECT pg_backend_pid()") == first
        assert await connection.fetchval("SELECT to_regclass('refused') IS NULL")


async def test_idle_connections_the_server_dropped_are_replaced_without_a_failed_call(
    database: Database, database_url: str
) -> None:
    before = set(await asyncio.gather(_held_pid(database), _held_pid(database)))
    assert len(before) == 2
    assert await _terminate_ours(database_url) == 2
    await asyncio.sleep(0.2)  # the driver reads the server's goodbye on the idle sockets
    after = set(await asyncio.gather(_held_pid(database), _held_pid(database)))
    assert after.isdisjoint(before)


async def _held_pid(database: Database) -> int:
    async with database.driver() as connection:
        pid = int(await connection.fetchval("SELECT pg_backend_pid()"))
        await asyncio.sleep(0.05)  # held, so that two callers take two connections
        return pid


async def test_a_connection_dropped_in_use_is_unavailable_then_the_pool_serves_again(
    database: Database, database_url: str
) -> None:
    await asyncio.gather(_held_pid(database), _held_pid(database))
    with pytest.raises(Exception) as raised:
        async with database.driver() as connection:
            sleeping = asyncio.ensure_future(connection.execute("SELECT pg_sleep(5)"))
            await asyncio.sleep(0.1)
            await _terminate_ours(database_url)
            await sleeping
    assert isinstance(translate_error(raised.value), Unavailable)
    # The idle sibling was dropped too: expired with it, so the next call does not fail on it.
    assert database.driver_pool.open_connections == 0
    assert await _pid(database) > 0


async def test_a_transaction_cut_short_by_a_cancellation_does_not_come_back(
    database: Database,
) -> None:
    first = await _pid(database)

    async def stuck() -> None:
        async with database.driver_transaction() as connection:
            await connection.execute("SELECT pg_sleep(5)")

    task = asyncio.ensure_future(stuck())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with database.driver() as connection:
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SELECT pg_backend_pid()") != first


async def test_a_full_pool_refuses_in_time_with_resource_exhausted(database: Database) -> None:
    release = asyncio.Event()
    held = asyncio.Event()
    holders = 0

    async def hold() -> None:
        nonlocal holders
        async with database.driver():
            holders += 1
            if holders == 2:
                held.set()
            await release.wait()

    tasks = [asyncio.ensure_future(hold()) for _ in range(2)]
    await held.wait()
    with pytest.raises(Exception) as raised:
        async with database.driver():
            pass
    translated = translate_error(raised.value)
    assert isinstance(translated, ResourceExhausted)
    assert translated.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    await asyncio.gather(*tasks)
    # The refusal took nothing: both connections are back and serve.
    assert await _pid(database) > 0
    assert database.driver_pool.open_connections == 2
