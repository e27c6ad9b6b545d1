"""Critical results: listed for the ordering doctor until the doctor or a doctor of the ordering
team acknowledges them; acknowledging is audited."""

from __future__ import annotations

import asyncio

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.lab.v1 import lab_service_pb2 as pb
from tests.lab.helpers import (
    BMP,
    DOMAIN,
    GLUCOSE,
    POTASSIUM,
    Hospital,
    Lab,
    Patients,
    missing,
    quantity,
    reported,
)
from tests.support import fails, invalid_in

# Normal adult values of the rest of the basic metabolic panel, in the catalogue's units.
NORMAL = {
    "6299-2": (12.0, "mg/dL"),
    "2160-0": (0.8, "mg/dL"),
    "17861-6": (9.5, "mg/dL"),
    "2951-2": (140.0, "mmol/L"),
    "2075-0": (100.0, "mmol/L"),
    "2028-9": (25.0, "mmol/L"),
}


async def _released_with_critical_potassium(
    lab: Lab, patients: Patients, hospital: Hospital
) -> pb.DiagnosticReport:
    work = await reported(lab, patients, hospital, code=BMP)
    assert work.report is not None
    await lab.RecordObservations(
        pb.RecordObservationsRequest(
            parent=work.report.name,
            observations=[
                quantity(GLUCOSE, 90, "mg/dL"),
                quantity(POTASSIUM, 7.1, "mmol/L"),
                *(
                    quantity(r.code, NORMAL[r.code.code][0], NORMAL[r.code.code][1])
                    for r in work.report.results
                    if r.code.code in NORMAL
                ),
            ],
        ),
        metadata=hospital.tech.md,
    )
    return await lab.FinalizeReport(
        pb.FinalizeReportRequest(name=work.report.name), metadata=hospital.tech.md
    )


async def audited(engine: AsyncEngine, name: str, *, at_least: int) -> bool:
    """Whether the audit trail holds `at_least` EXECUTE events of `name` within 20 s."""
    for _ in range(200):
        async with engine.connect() as connection:
            count = (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM audit.events WHERE entity_resource_name = :name "
                        "AND action = 'execute'"
                    ),
                    {"name": name},
                )
            ).scalar_one()
        if count >= at_least:
            return True
        await asyncio.sleep(0.1)
    return False


async def _open(lab: Lab, who: tuple[tuple[str, str], ...]) -> list[pb.CriticalResult]:
    found: list[pb.CriticalResult] = []
    token = ""
    while True:
        reply = await lab.ListCriticalResults(
            pb.ListCriticalResultsRequest(page_token=token, page_size=500), metadata=who
        )
        found += reply.critical_results
        token = reply.next_page_token
        if not token:
            return found


async def test_a_critical_value_stays_listed_until_acknowledged(
    lab: Lab, patients: Patients, hospital: Hospital, lab_db: AsyncEngine
) -> None:
    report = await _released_with_critical_potassium(lab, patients, hospital)
    potassium = next(r for r in report.results if r.code.code == "2823-3")
    assert potassium.interpretation == pb.OBSERVATION_INTERPRETATION_CRITICAL_HIGH
    listed = [c for c in await _open(lab, hospital.doctor.md) if c.name == potassium.name]
    assert len(listed) == 1
    assert listed[0].observation == potassium
    assert listed[0].requester == hospital.doctor.name and listed[0].report_version == 1
    # Another doctor's list does not have it, and reading the list does not acknowledge it.
    assert potassium.name not in {c.name for c in await _open(lab, hospital.colleague.md)}
    assert potassium.name in {c.name for c in await _open(lab, hospital.doctor.md)}
    # A doctor of the ordering team acknowledges it for the ordering doctor.
    acknowledged = await lab.AcknowledgeCriticalResult(
        pb.AcknowledgeCriticalResultRequest(name=potassium.name), metadata=hospital.colleague.md
    )
    assert acknowledged.acknowledged_by == hospital.colleague.name
    assert acknowledged.HasField("acknowledge_time")
    assert potassium.name not in {c.name for c in await _open(lab, hospital.doctor.md)}
    again = await lab.AcknowledgeCriticalResult(
        pb.AcknowledgeCriticalResultRequest(name=potassium.name), metadata=hospital.doctor.md
    )
    assert again == acknowledged
    # Both acknowledgements reach the audit trail as EXECUTE events of the result (the lab relay
    # delivers them in the background; orders, not running here, does not hold them up).
    assert await audited(lab_db, potassium.name, at_least=2)


async def test_a_corrected_critical_value_is_listed_again(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    report = await _released_with_critical_potassium(lab, patients, hospital)
    potassium = next(r for r in report.results if r.code.code == "2823-3")
    await lab.AcknowledgeCriticalResult(
        pb.AcknowledgeCriticalResultRequest(name=potassium.name), metadata=hospital.doctor.md
    )
    await lab.AmendReport(
        pb.AmendReportRequest(
            name=report.name,
            reason="Recalibrated",
            observations=[quantity(POTASSIUM, 2.0, "mmol/L")],
        ),
        metadata=hospital.tech.md,
    )
    listed = [c for c in await _open(lab, hospital.doctor.md) if c.name == potassium.name]
    assert [c.report_version for c in listed] == [2]
    assert listed[0].observation.interpretation == pb.OBSERVATION_INTERPRETATION_CRITICAL_LOW


async def test_only_the_ordering_doctor_or_team_acknowledges(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    report = await _released_with_critical_potassium(lab, patients, hospital)
    potassium = next(r for r in report.results if r.code.code == "2823-3")
    for who, reason in (
        (hospital.stranger, "DEPARTMENT_MISMATCH"),
        (hospital.nurse, "ROLE_NOT_PERMITTED"),
        (hospital.tech, "ROLE_NOT_PERMITTED"),
    ):
        failure = await fails(
            lab.AcknowledgeCriticalResult(
                pb.AcknowledgeCriticalResultRequest(name=potassium.name), metadata=who.md
            )
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, reason), who
    for who in (hospital.nurse, hospital.tech):
        assert await _open(lab, who.md) == []


async def test_a_normal_result_is_not_a_critical_result(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    report = await _released_with_critical_potassium(lab, patients, hospital)
    glucose = next(r for r in report.results if r.code.code == "2345-7")
    failure = await fails(
        lab.AcknowledgeCriticalResult(
            pb.AcknowledgeCriticalResultRequest(name=glucose.name), metadata=hospital.doctor.md
        )
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_critical_result_requests_are_checked(lab: Lab, hospital: Hospital) -> None:
    assert await invalid_in(
        DOMAIN,
        lab.AcknowledgeCriticalResult(
            pb.AcknowledgeCriticalResultRequest(name=missing("diagnosticReports")),
            metadata=hospital.doctor.md,
        ),
    ) == ["name"]
    assert await invalid_in(
        DOMAIN,
        lab.ListCriticalResults(
            pb.ListCriticalResultsRequest(page_size=-1), metadata=hospital.doctor.md
        ),
    ) == ["page_size"]
