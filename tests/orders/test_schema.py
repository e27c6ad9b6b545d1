"""The orders schema: migration 0001 builds exactly tables.py, runs back and forth, and the
database itself refuses what the servicer never writes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.orders.tables import metadata
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade, upgrade
from tests.support import fresh_database


def _ours(name: str | None, kind: str, _: object) -> bool:
    if kind == "schema":
        return name == "orders"
    return not (kind == "table" and name == "alembic_version")


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"include_schemas": True, "include_name": _ours, "compare_server_default": False},
    )
    return list(compare_metadata(context, metadata))


async def test_migration_builds_what_tables_py_declares(orders_db: AsyncEngine) -> None:
    async with orders_db.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'orders'"
                )
            )
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "orders_schema", "orders")
    assert await _tables(url) == {
        "alembic_version",
        "service_requests",
        "medication_requests",
        "dispenses",
        "outbox",
        "inbox",
    }
    await asyncio.to_thread(downgrade, "orders", url, "base")
    assert await _tables(url) == {"alembic_version"}
    await asyncio.to_thread(upgrade, "orders", url)
    assert "medication_requests" in await _tables(url)


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
