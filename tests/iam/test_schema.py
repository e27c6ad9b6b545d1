"""The iam schema: migration 0001 builds exactly tables.py, runs back and forth, and the database
itself refuses rows the service would never write."""

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

from his.iam.tables import metadata
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade, upgrade
from tests.iam.conftest import fresh_database


def _ours(name: str | None, kind: str, _: object) -> bool:
    if kind == "schema":
        return name == "iam"
    return not (kind == "table" and name == "alembic_version")


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": _ours,
            "compare_server_default": False,
        },
    )
    return list(compare_metadata(context, metadata))


async def test_migration_builds_what_tables_py_declares(iam_db: AsyncEngine) -> None:
    async with iam_db.connect() as connection:
        differences = await connection.run_sync(_differences)

    assert differences == []


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'iam'")
            )
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def test_migration_downgrades_and_upgrades_again(postgres: EmbeddedPostgres) -> None:
    url = await fresh_database(postgres, "his_iam_migrations")
    tables = {
        "alembic_version",
        "departments",
        "staff",
        "memberships",
        "emergency_access_grants",
        "outbox",
    }
    assert await _tables(url) == tables

    await asyncio.to_thread(downgrade, "iam", url, "base")
    assert await _tables(url) == {"alembic_version"}

    await asyncio.to_thread(upgrade, "iam", url)
    assert await _tables(url) == tables


async def _insert_staff(iam_db: AsyncEngine, **values: object) -> None:
    row: dict[str, object] = {
        "id": uuid.uuid4(),
        "username": f"db.{uuid.uuid4().hex[:10]}",
        "display_name": "Direct Insert",
        "roles": ["DOCTOR"],
        **values,
    }
    async with iam_db.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO iam.staff (id, username, display_name, roles) "
                "VALUES (:id, :username, :display_name, :roles)"
            ),
            row,
        )


@pytest.mark.parametrize(
    "values",
    [
        {"roles": []},
        {"roles": ["DOCTOR", "SERVICE"]},
        {"roles": ["doctor"]},
        {"username": "Has Spaces"},
    ],
)
async def test_the_database_refuses_unknown_roles_and_bad_usernames(
    iam_db: AsyncEngine, values: dict[str, object]
) -> None:
    with pytest.raises(IntegrityError):
        await _insert_staff(iam_db, **values)
