"""The iam schema: the migrations build exactly tables.py, runs back and forth, and the database
itself refuses rows the service would never write."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.iam.tables import metadata
from his.runtime.embedded_pg import EmbeddedPostgres
from tests.iam.conftest import fresh_database
from tests.schema import downgraded_and_upgraded, migration_differences


async def test_migration_builds_what_tables_py_declares(iam_db: AsyncEngine) -> None:
    assert await migration_differences(iam_db, "iam", metadata) == []


async def test_migration_downgrades_and_upgrades_again(postgres: EmbeddedPostgres) -> None:
    url = await fresh_database(postgres, "his_iam_migrations")
    tables = {
        "alembic_version",
        "departments",
        "staff",
        "memberships",
        "emergency_access_grants",
        "outbox",
        "patient_sign_ins",
        "sign_in_attempts",
        "access_changes",
        "staff_credentials",
        "staff_enrolments",
        "staff_login_failures",
    }
    migrated, downgraded, upgraded = await downgraded_and_upgraded(url, "iam")
    assert migrated == tables
    assert downgraded == {"alembic_version"}
    assert upgraded == tables


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
