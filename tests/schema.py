"""What the schema tests of every service share: compare a service's migrated schema with its
tables.py, list a schema's tables, and run its migrations down to base and up again."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from his.runtime.migrations import downgrade, upgrade


async def migration_differences(engine: AsyncEngine, schema: str, metadata: MetaData) -> list[Any]:
    """What alembic's autogenerate finds between the database behind `engine` (its `schema`
    only, without alembic's own version table) and `metadata`: empty when the migrations build
    exactly what tables.py declares. Server defaults are not compared."""

    def ours(name: str | None, kind: str, _: object) -> bool:
        if kind == "schema":
            return name == schema
        return not (kind == "table" and name == "alembic_version")

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": ours,
                "compare_server_default": False,
            },
        )
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(differences)


async def tables_of(url: str, schema: str) -> set[str]:
    """The names of the tables in `schema` of the database at `url`."""
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = :schema"
                ),
                {"schema": schema},
            )
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def downgraded_and_upgraded(url: str, service: str) -> tuple[set[str], set[str], set[str]]:
    """Run `service`'s migrations on the database at `url` (migrated to head) down to base and
    up again; the tables of its schema (named as the service) before, in between and after."""
    migrated = await tables_of(url, service)
    await asyncio.to_thread(downgrade, service, url, "base")
    downgraded = await tables_of(url, service)
    await asyncio.to_thread(upgrade, service, url)
    return migrated, downgraded, await tables_of(url, service)
