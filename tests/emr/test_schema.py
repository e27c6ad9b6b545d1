"""The emr schema: migration 0001 builds exactly tables.py and runs back and forth."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.emr.tables import metadata
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade, upgrade
from tests.support import fresh_database


def _ours(name: str | None, kind: str, _: object) -> bool:
    if kind == "schema":
        return name == "emr"
    return not (kind == "table" and name == "alembic_version")


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"include_schemas": True, "include_name": _ours, "compare_server_default": False},
    )
    return list(compare_metadata(context, metadata))


async def test_migration_builds_what_tables_py_declares(emr_db: AsyncEngine) -> None:
    async with emr_db.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'emr'")
            )
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "emr_schema", "emr")
    assert await _tables(url) == {
        "alembic_version",
        "encounters",
        "notes",
        "diagnoses",
        "data_keys",
        "outbox",
    }
    await asyncio.to_thread(downgrade, "emr", url, "base")
    assert await _tables(url) == {"alembic_version"}
    await asyncio.to_thread(upgrade, "emr", url)
    assert "notes" in await _tables(url)
