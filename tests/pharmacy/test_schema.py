"""The pharmacy schema: migration 0001 builds exactly tables.py and runs back and forth."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.pharmacy.tables import metadata
from his.runtime.embedded_pg import EmbeddedPostgres
from tests.pharmacy.helpers import Pharmacy, create_medication, receive
from tests.schema import downgraded_and_upgraded, migration_differences
from tests.support import fresh_database


async def test_migration_builds_what_tables_py_declares(pharmacy_db: AsyncEngine) -> None:
    assert await migration_differences(pharmacy_db, "pharmacy", metadata) == []


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "pharmacy_schema", "pharmacy")
    migrated, downgraded, upgraded = await downgraded_and_upgraded(url, "pharmacy")
    assert migrated == {
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
    assert downgraded == {"alembic_version"}
    assert "dispenses" in upgraded


async def test_stock_never_goes_below_zero_even_behind_the_services_back(
    pharmacy_db: AsyncEngine, pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    # A lot of its own, so the UPDATE below has a row to refuse whichever tests ran before.
    drug = await create_medication(pharmacy)
    lot = await receive(pharmacy, drug.name, pharmacy_location, 5)
    async with pharmacy_db.connect() as connection:
        failed = False
        try:
            await connection.execute(
                text("UPDATE pharmacy.stock_items SET on_hand = -1 WHERE id = :id"),
                {"id": lot.name.rsplit("/", 1)[-1]},
            )
        except IntegrityError as error:
            failed = "on_hand_not_negative" in str(error)
        await connection.rollback()
    assert failed
