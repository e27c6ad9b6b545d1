"""The lab schema: migration 0001 builds exactly tables.py, runs back and forth, seeds the
catalogue, and keeps released report versions unchangeable."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.lab.tables import metadata
from his.lab.v1 import lab_service_pb2 as pb
from his.runtime.embedded_pg import EmbeddedPostgres
from tests.lab.helpers import Hospital, Lab, Patients, reported
from tests.schema import downgraded_and_upgraded, migration_differences
from tests.support import fresh_database


async def test_migration_builds_what_tables_py_declares(lab_db: AsyncEngine) -> None:
    assert await migration_differences(lab_db, "lab", metadata) == []


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "lab_schema", "lab")
    migrated, downgraded, upgraded = await downgraded_and_upgraded(url, "lab")
    assert migrated == {
        "alembic_version",
        "lab_orders",
        "lab_tests",
        "panel_items",
        "reference_ranges",
        "specimens",
        "specimen_orders",
        "reports",
        "report_specimens",
        "observations",
        "report_versions",
        "critical_results",
        "outbox",
        "inbox",
    }
    assert downgraded == {"alembic_version"}
    assert "reports" in upgraded


async def test_the_catalogue_is_seeded_with_panels_units_and_ranges(lab_db: AsyncEngine) -> None:
    async with lab_db.connect() as connection:
        cbc = (
            await connection.execute(
                text(
                    "SELECT t.code, t.unit FROM lab.panel_items p JOIN lab.lab_tests t "
                    "ON t.code = p.test_code WHERE p.order_code = '58410-2' ORDER BY p.position"
                )
            )
        ).all()
        sexes = (
            await connection.execute(
                text("SELECT DISTINCT sex FROM lab.reference_ranges WHERE test_code = '718-7'")
            )
        ).scalars()
        assert [tuple(r) for r in cbc] == [
            ("718-7", "g/dL"),
            ("4544-3", "%"),
            ("6690-2", "10*3/uL"),
            ("777-3", "10*3/uL"),
        ]
        assert set(sexes) == {"any", "male", "female"}


async def test_a_released_version_never_changes(
    lab: Lab, patients: Patients, hospital: Hospital, lab_db: AsyncEngine
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    await lab.RecordObservations(
        pb.RecordObservationsRequest(
            parent=work.report.name,
            observations=[
                pb.Observation(
                    code=r.code,
                    status=pb.OBSERVATION_STATUS_CANCELLED,
                    note="Sample insufficient",
                )
                for r in work.report.results
            ],
        ),
        metadata=hospital.tech.md,
    )
    await lab.FinalizeReport(
        pb.FinalizeReportRequest(name=work.report.name), metadata=hospital.tech.md
    )
    report_id = work.report.name.split("/")[1]
    for statement in (
        "UPDATE lab.report_versions SET body = '' WHERE report_id = :id",
        "DELETE FROM lab.report_versions WHERE report_id = :id",
    ):
        with pytest.raises(IntegrityError, match="a released report version never changes"):
            async with lab_db.begin() as connection:
                await connection.execute(text(statement), {"id": report_id})
