"""A pooled connection used through the driver goes back to the pool after a refusal or a statement
the server refused (the hot paths must not reconnect on every refused booking), and is discarded
after anything that may leave it unusable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text

from his.base.errors import FailedPrecondition, Unavailable
from his.runtime.config import DatabaseConfig
from his.runtime.database import Database, driver_of, translate_error


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A database with a pool of exactly one connection: a kept connection is the next one."""
    db = Database(
        database_url,
        DatabaseConfig(pool_size=1, max_overflow=0),
        application_name="his-driver-test",
    )
    yield db
    await db.dispose()


async def _backend(database: Database) -> int:
    async with database.driver() as connection:
        return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def test_a_refusal_inside_a_driver_transaction_keeps_the_connection(
    database: Database,
) -> None:
    before = await _backend(database)
    with pytest.raises(FailedPrecondition):
        async with database.driver_transaction() as connection:
            await connection.execute("SELECT 1")
            raise FailedPrecondition("the slot is fully booked", reason="SLOT_FULL")
    assert await _backend(database) == before


@pytest.mark.parametrize("transaction", [True, False])
async def test_a_statement_the_server_refused_keeps_the_connection(
    database: Database, transaction: bool
) -> None:
    before = await _backend(database)
    block = database.driver_transaction() if transaction else database.driver()
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with block as connection:
            await connection.execute("SELECT 1 / 0")
    assert await _backend(database) == before
    # ...and it is idle, not left inside a failed transaction.
    async with database.driver() as connection:
        assert await connection.fetchval("SELECT 2") == 2
        assert not connection.is_in_transaction()


async def test_a_cancellation_mid_statement_discards_the_connection(database: Database) -> None:
    before = await _backend(database)

    async def slow() -> None:
        async with database.driver_transaction() as connection:
            await connection.execute("SELECT pg_sleep(5)")

    task = asyncio.ensure_future(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _backend(database) != before


@pytest.mark.parametrize("sqlalchemy_first", [False, True])
async def test_a_statement_on_the_sessions_driver_rolls_back_with_the_session(
    database: Database, sqlalchemy_first: bool
) -> None:
    """`driver_of` before any statement of the session's: SQLAlchemy has not sent BEGIN yet, and
    a statement on the driver would otherwise commit on its own."""
    async with database.driver() as connection:
        await connection.execute("CREATE TABLE IF NOT EXISTS driver_of_test (n int)")
        await connection.execute("TRUNCATE driver_of_test")
    with pytest.raises(FailedPrecondition):
        async with database.transaction() as session:
            if sqlalchemy_first:
                await session.execute(text("SELECT 1"))
            driver = await driver_of(session)
            await driver.execute("INSERT INTO driver_of_test VALUES (1)")
            await session.execute(text("INSERT INTO driver_of_test VALUES (2)"))
            raise FailedPrecondition("refused after both wrote", reason="TEST")
    async with database.transaction() as session:
        driver = await driver_of(session)
        await driver.execute("INSERT INTO driver_of_test VALUES (3)")
    async with database.driver() as connection:
        kept = await connection.fetch("SELECT n FROM driver_of_test ORDER BY n")
        await connection.execute("DROP TABLE driver_of_test")
    assert [row["n"] for row in kept] == [3]


async def test_a_dropped_connection_under_driver_of_is_unavailable_and_replaced(
    database: Database,
) -> None:
    """The session's pooled connection was dropped by the server (a restart, a failover):
    `driver_of` fails as any first statement does — UNAVAILABLE, the connection invalidated —
    and the next transaction gets a fresh one (the pool holds exactly one)."""
    async with database.transaction() as session:
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    async with database.driver() as connection:
        await connection.execute("SELECT pg_terminate_backend($1)", pid)
    await asyncio.sleep(0.2)
    with pytest.raises(Exception) as failed:
        async with database.transaction() as session:
            driver = await driver_of(session)
            await driver.execute("SELECT 1")
    assert isinstance(translate_error(failed.value), Unavailable), repr(failed.value)
    async with database.transaction() as session:
        driver = await driver_of(session)
        assert await driver.fetchval("SELECT pg_backend_pid()") != pid
