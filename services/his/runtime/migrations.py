"""Alembic migrations per service, each in `his/<service>/migrations/`, run from code.

Every service keeps its tables and its alembic_version table in its own schema. A migration takes
a transaction-scoped advisory lock first, so replicas starting together migrate one at a time.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from his.runtime.database import async_url


def alembic_config(service: str, url: str) -> Config:
    """An Alembic config for one service's migrations against `url`."""
    package = importlib.import_module(f"his.{service}")
    assert package.__file__ is not None
    config = Config()
    config.set_main_option("script_location", str(Path(package.__file__).parent / "migrations"))
    config.attributes["his_service"] = service
    config.attributes["his_url"] = url
    return config


def upgrade(service: str, url: str, revision: str = "head") -> None:
    """Migrate one service's schema to `revision` (blocking: use asyncio.to_thread in a loop)."""
    command.upgrade(alembic_config(service, url), revision)


def downgrade(service: str, url: str, revision: str) -> None:
    """Migrate one service's schema down to `revision`."""
    command.downgrade(alembic_config(service, url), revision)


def run_env(metadata: MetaData) -> None:
    """The body of every service's `migrations/env.py`."""
    service: str = context.config.attributes["his_service"]
    url: str = context.config.attributes["his_url"]

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=service,
            include_schemas=True,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"his-migrate-{service}"},
            )
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{service}"'))
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(async_url(url))
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())
