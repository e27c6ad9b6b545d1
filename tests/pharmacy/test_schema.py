"""The pharmacy schema: migration 0001 builds exactly tables.py and runs back and forth."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.pharmacy.tables import metadata
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade, upgrade
from tests.support import fresh_database


def _ours(name: str | None, kind: str, _: object) -> bool:
    if kind == "schema":
        return name == "pharmacy"
    return not (kind == "table" and name == "alembic_version")


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"include_schemas": True, "include_name": _ours, "compare_server_default": False},
    )
    return list(compare_metadata(context, metadata))


async def test_migration_builds_what_tables_py_declares(pharmacy_db: AsyncEngine) -> None:
    async with pharmacy_db.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'pharmacy'"
                )
            )
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "pharmacy_schema", "pharmacy")
    assert await _tables(url) == {
        "alembic_version",
        "medications",
        "stock_items",
        "stock_receipts",
        "stock_adjustments",
        "prescriptions",
        "dispenses",
        "outbox",
        "inbox",
    }
    await asyncio.to_thread(downgrade, "pharmacy", url, "base")
    assert await _tables(url) == {"alembic_version"}
    await asyncio.to_thread(upgrade, "pharmacy", url)
    assert "dispenses" in await _tables(url)


async def test_stock_never_goes_below_zero_even_behind_the_services_back(
    pharmacy_db: AsyncEngine,
) -> None:
    async with pharmacy_db.connect() as connection:
        failed = False
        try:
            await connection.execute(text("UPDATE pharmacy.stock_items SET on_hand = -1"))
        except IntegrityError as error:
            failed = "on_hand_not_negative" in str(error)
        await connection.rollback()
    assert failed
