"""The emr schema: migration 0001 builds exactly tables.py and runs back and forth."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from his.emr.tables import metadata
from his.runtime.embedded_pg import EmbeddedPostgres
from tests.schema import downgraded_and_upgraded, migration_differences
from tests.support import fresh_database


async def test_migration_builds_what_tables_py_declares(emr_db: AsyncEngine) -> None:
    assert await migration_differences(emr_db, "emr", metadata) == []


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "emr_schema", "emr")
    migrated, downgraded, upgraded = await downgraded_and_upgraded(url, "emr")
    assert migrated == {
        "alembic_version",
        "encounters",
        "notes",
        "diagnoses",
        "data_keys",
        "outbox",
    }
    assert downgraded == {"alembic_version"}
    assert "notes" in upgraded
