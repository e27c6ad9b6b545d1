"""The orders schema: migration 0001 builds exactly tables.py, runs back and forth, and the
database itself refuses what the servicer never writes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.orders.tables import metadata
from his.runtime.embedded_pg import EmbeddedPostgres
from tests.schema import downgraded_and_upgraded, migration_differences
from tests.support import fresh_database


async def test_migration_builds_what_tables_py_declares(orders_db: AsyncEngine) -> None:
    assert await migration_differences(orders_db, "orders", metadata) == []


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "orders_schema", "orders")
    migrated, downgraded, upgraded = await downgraded_and_upgraded(url, "orders")
    assert migrated == {
        "alembic_version",
        "service_requests",
        "medication_requests",
        "dispenses",
        "outbox",
        "inbox",
    }
    assert downgraded == {"alembic_version"}
    assert "medication_requests" in upgraded


@pytest.mark.parametrize(
    "values",
    [
        {"status": "draft"},
        {"priority": "whenever"},
        {"status": "revoked"},  # a revoked order says why
        {"revision": 0},
    ],
)
async def test_the_database_refuses_a_lab_order_the_servicer_never_writes(
    orders_db: AsyncEngine, values: dict[str, Any]
) -> None:
    row = {
        "id": uuid.uuid4(),
        "patient_id": uuid.uuid4(),
        "encounter_id": uuid.uuid4(),
        "requester_id": uuid.uuid4(),
        "performer_id": uuid.uuid4(),
        "department_id": uuid.uuid4(),
        "encounter_class": "outpatient",
        "code_system": "http://loinc.org",
        "code": "2345-7",
        "priority": "routine",
        "status": "active",
        "revision": 1,
        **values,
    }
    columns = ", ".join(row)
    params = ", ".join(f":{key}" for key in row)
    with pytest.raises(IntegrityError):
        async with orders_db.begin() as connection:
            await connection.execute(
                text(f"INSERT INTO orders.service_requests ({columns}) VALUES ({params})"),
                row,
            )
