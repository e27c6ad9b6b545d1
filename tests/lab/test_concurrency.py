"""Invariants under real concurrency: a report is released once, amendments make consecutive
versions, a revocation delivered while specimens are being taken is never lost."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from tests.lab.helpers import (
    HEMOGLOBIN,
    Hospital,
    Lab,
    Patients,
    changed,
    deliver,
    loinc,
    ordered,
    quantity,
    reported,
    specimen,
)
from tests.support import failure_of


async def _recorded(lab: Lab, patients: Patients, hospital: Hospital) -> pb.DiagnosticReport:
    work = await reported(lab, patients, hospital)
    assert work.report is not None
    return await lab.RecordObservations(
        pb.RecordObservationsRequest(
            parent=work.report.name,
            observations=[
                quantity(HEMOGLOBIN, 13, "g/dL"),
                quantity(loinc("4544-3"), 40, "%"),
                quantity(loinc("6690-2"), 6, "10*3/uL"),
                quantity(loinc("777-3"), 250, "10*3/uL"),
            ],
        ),
        metadata=hospital.tech.md,
    )


async def _issued(engine: AsyncEngine, name: str) -> int:
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM lab.outbox WHERE destination = 'orders' "
                        "AND envelope LIKE :name"
                    ),
                    {"name": b"%" + name.encode() + b"%"},
                )
            ).scalar_one()
        )


@pytest.mark.usefixtures("lab_outbox_held")
async def test_racing_finalizations_release_one_version_and_one_event(
    lab: Lab, patients: Patients, hospital: Hospital, lab_db: AsyncEngine
) -> None:
    report = await _recorded(lab, patients, hospital)
    results = await asyncio.gather(
        *(
            lab.FinalizeReport(
                pb.FinalizeReportRequest(name=report.name, conclusion="ok"),
                metadata=hospital.tech.md,
            )
            for _ in range(8)
        )
    )
    assert {r.version for r in results} == {1}
    assert len({r.etag for r in results}) == 1
    versions = await lab.ListDiagnosticReportVersions(
        pb.ListDiagnosticReportVersionsRequest(name=report.name), metadata=hospital.tech.md
    )
    assert len(versions.diagnostic_reports) == 1
    assert await _issued(lab_db, report.name) == 1


async def test_racing_amendments_make_consecutive_versions(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    report = await _recorded(lab, patients, hospital)
    await lab.FinalizeReport(pb.FinalizeReportRequest(name=report.name), metadata=hospital.tech.md)
    values = [12.0 + i / 10 for i in range(6)]
    results = await asyncio.gather(
        *(
            lab.AmendReport(
                pb.AmendReportRequest(
                    name=report.name,
                    reason="recheck",
                    observations=[quantity(HEMOGLOBIN, value, "g/dL")],
                ),
                metadata=hospital.tech.md,
            )
            for value in values
        )
    )
    assert sorted(r.version for r in results) == [2, 3, 4, 5, 6, 7]
    versions = await lab.ListDiagnosticReportVersions(
        pb.ListDiagnosticReportVersionsRequest(name=report.name), metadata=hospital.tech.md
    )
    assert [v.version for v in versions.diagnostic_reports] == [1, 2, 3, 4, 5, 6, 7]
    # Each version holds the value its amendment wrote, and the last one is the report in force.
    hb = [
        next(r for r in v.results if r.code.code == "718-7").value_quantity.value
        for v in versions.diagnostic_reports[1:]
    ]
    assert sorted(hb) == sorted(values)
    current = await lab.GetDiagnosticReport(
        pb.GetDiagnosticReportRequest(name=report.name), metadata=hospital.tech.md
    )
    assert current == versions.diagnostic_reports[-1]


async def test_a_revocation_racing_new_specimens_is_never_lost(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await ordered(lab, patients, hospital)
    revoked = orders_pb.ServiceRequest()
    revoked.CopyFrom(work.order)
    revoked.status = orders_pb.SERVICE_REQUEST_STATUS_REVOKED
    calls = [
        lab.CreateSpecimen(
            pb.CreateSpecimenRequest(specimen=specimen([work.order.name], hospital.tech.name)),
            metadata=hospital.tech.md,
        )
        for _ in range(6)
    ]
    outcomes = await asyncio.gather(
        deliver(lab, changed(revoked, 2)), *calls, return_exceptions=True
    )
    delivered = outcomes[0]
    assert isinstance(delivered, pb.DeliverEventsResponse) and delivered.applied == 1, delivered
    taken = [o for o in outcomes[1:] if isinstance(o, pb.Specimen)]
    refused = [o for o in outcomes[1:] if isinstance(o, grpc.aio.AioRpcError)]
    # Every call either took a specimen or was refused because the order was revoked: nothing
    # else happened (an empty `refused` only means the revocation came last).
    assert len(taken) + len(refused) == 6, outcomes
    assert all(
        e.code() == grpc.StatusCode.FAILED_PRECONDITION
        and failure_of(e).reason == "ORDER_NOT_ACTIVE"
        for e in refused
    ), refused
    # Whatever was taken before the revocation was applied, nothing is taken after it.
    late = await asyncio.gather(
        lab.CreateSpecimen(
            pb.CreateSpecimenRequest(specimen=specimen([work.order.name], hospital.tech.name)),
            metadata=hospital.tech.md,
        ),
        return_exceptions=True,
    )
    assert isinstance(late[0], grpc.aio.AioRpcError)
    assert late[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await lab.ListLabOrders(
        pb.ListLabOrdersRequest(
            patient=work.patient, statuses=[orders_pb.SERVICE_REQUEST_STATUS_REVOKED]
        ),
        metadata=hospital.tech.md,
    )
    assert [r.name for r in listed.service_requests] == [work.order.name]
