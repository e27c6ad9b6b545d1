"""Specimens: collected for the laboratory's orders of one patient, received (AVAILABLE),
rejected (UNSATISFACTORY) or entered in error, each change audited."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from tests.lab.helpers import (
    DOMAIN,
    Hospital,
    Lab,
    Patients,
    accession,
    changed,
    collected,
    deliver,
    missing,
    new_patient,
    order,
    ordered,
    reported,
    request_id,
    specimen,
)
from tests.support import fails, invalid_in


async def test_a_specimen_for_two_orders_of_one_patient(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    first = order(patient, hospital.laboratory, hospital.doctor.name)
    second = order(patient, hospital.laboratory, hospital.doctor.name)
    await deliver(lab, changed(first, 1), changed(second, 1))
    made = await lab.CreateSpecimen(
        pb.CreateSpecimenRequest(specimen=specimen([first.name, second.name], hospital.tech.name)),
        metadata=hospital.tech.md,
    )
    assert made.status == pb.SPECIMEN_STATUS_AVAILABLE
    assert made.patient == patient and made.laboratory == hospital.laboratory
    assert list(made.service_requests) == [first.name, second.name]
    assert made.collector == hospital.tech.name
    got = await lab.GetSpecimen(pb.GetSpecimenRequest(name=made.name), metadata=hospital.tech.md)
    assert got == made
    listed = await lab.ListSpecimens(
        pb.ListSpecimensRequest(service_request=second.name), metadata=hospital.tech.md
    )
    assert list(listed.specimens) == [made]


async def test_orders_of_two_patients_make_no_specimen(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    one = order(await new_patient(patients), hospital.laboratory, hospital.doctor.name)
    two = order(await new_patient(patients), hospital.laboratory, hospital.doctor.name)
    await deliver(lab, changed(one, 1), changed(two, 1))
    failure = await fails(
        lab.CreateSpecimen(
            pb.CreateSpecimenRequest(specimen=specimen([one.name, two.name], hospital.tech.name)),
            metadata=hospital.tech.md,
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ORDERS_MISMATCH",
    )


async def test_a_revoked_or_unknown_order_takes_no_specimen(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await ordered(lab, patients, hospital)
    revoked = orders_pb.ServiceRequest()
    revoked.CopyFrom(work.order)
    revoked.status = orders_pb.SERVICE_REQUEST_STATUS_REVOKED
    await deliver(lab, changed(revoked, 2))
    for name, reason in (
        (work.order.name, "ORDER_NOT_ACTIVE"),
        (missing("serviceRequests"), "ORDER_NOT_KNOWN"),
    ):
        failure = await fails(
            lab.CreateSpecimen(
                pb.CreateSpecimenRequest(specimen=specimen([name], hospital.tech.name)),
                metadata=hospital.tech.md,
            )
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)


async def test_an_accession_id_is_taken_once_even_by_racing_calls(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await ordered(lab, patients, hospital)
    label = accession()
    calls = [
        lab.CreateSpecimen(
            pb.CreateSpecimenRequest(
                specimen=specimen([work.order.name], hospital.tech.name, accession_id=label)
            ),
            metadata=hospital.tech.md,
        )
        for _ in range(6)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    made = [r for r in results if isinstance(r, pb.Specimen)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) == 1
    assert [e.code() for e in refused] == [grpc.StatusCode.ALREADY_EXISTS] * 5


async def test_a_repeated_create_returns_the_first_specimen(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await ordered(lab, patients, hospital)
    request = pb.CreateSpecimenRequest(
        specimen=specimen([work.order.name], hospital.tech.name), request_id=request_id()
    )
    first, again = await asyncio.gather(
        lab.CreateSpecimen(request, metadata=hospital.tech.md),
        lab.CreateSpecimen(request, metadata=hospital.tech.md),
    )
    assert first == again


async def test_bad_specimens_are_named(lab: Lab, hospital: Hospital) -> None:
    future = Timestamp()
    future.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    bad = pb.Specimen(
        service_requests=["serviceRequests/x", "orders/1"],
        accession_id="has spaces",
        collect_time=future,
        collector="people/1",
    )
    bad.specimen_type.system = "http://example.org"
    fields = await invalid_in(
        DOMAIN,
        lab.CreateSpecimen(
            pb.CreateSpecimenRequest(specimen=bad, request_id=" padded "),
            metadata=hospital.tech.md,
        ),
    )
    assert fields == [
        "specimen.service_requests[0]",
        "specimen.service_requests[1]",
        "specimen.specimen_type.system",
        "specimen.specimen_type.code",
        "specimen.accession_id",
        "specimen.collect_time",
        "specimen.collector",
        "request_id",
    ]
    assert await invalid_in(
        DOMAIN, lab.CreateSpecimen(pb.CreateSpecimenRequest(), metadata=hospital.tech.md)
    ) == ["specimen"]


async def test_rejecting_keeps_the_first_reason_and_the_order_active(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await collected(lab, hospital, await ordered(lab, patients, hospital))
    assert work.specimen is not None
    rejected = await lab.RejectSpecimen(
        pb.RejectSpecimenRequest(name=work.specimen.name, reason="Haemolysed"),
        metadata=hospital.tech.md,
    )
    assert rejected.status == pb.SPECIMEN_STATUS_UNSATISFACTORY
    assert rejected.reject_reason == "Haemolysed"
    again = await lab.RejectSpecimen(
        pb.RejectSpecimenRequest(name=work.specimen.name, reason="Clotted"),
        metadata=hospital.tech.md,
    )
    assert again == rejected
    # The order still takes a new specimen, and the rejected one cannot be reported on.
    fresh = await lab.CreateSpecimen(
        pb.CreateSpecimenRequest(specimen=specimen([work.order.name], hospital.tech.name)),
        metadata=hospital.tech.md,
    )
    failure = await fails(
        lab.CreateDiagnosticReport(
            pb.CreateDiagnosticReportRequest(
                diagnostic_report=pb.DiagnosticReport(
                    service_request=work.order.name, specimens=[fresh.name, rejected.name]
                )
            ),
            metadata=hospital.tech.md,
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPECIMEN_NOT_USABLE",
    )
    assert failure.metadata["index"] == "1"


async def test_a_specimen_entered_in_error_is_final(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await collected(lab, hospital, await ordered(lab, patients, hospital))
    assert work.specimen is not None
    marked = await lab.MarkSpecimenEnteredInError(
        pb.MarkSpecimenEnteredInErrorRequest(name=work.specimen.name, reason="Wrong patient"),
        metadata=hospital.tech.md,
    )
    assert marked.status == pb.SPECIMEN_STATUS_ENTERED_IN_ERROR
    assert marked.entered_in_error_reason == "Wrong patient"
    failure = await fails(
        lab.RejectSpecimen(
            pb.RejectSpecimenRequest(name=work.specimen.name, reason="late"),
            metadata=hospital.tech.md,
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPECIMEN_ENTERED_IN_ERROR",
    )


async def test_a_specimen_in_a_report_is_neither_rejected_nor_marked(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await reported(lab, patients, hospital)
    assert work.specimen is not None
    for call in (
        lab.RejectSpecimen(
            pb.RejectSpecimenRequest(name=work.specimen.name, reason="x"), metadata=hospital.tech.md
        ),
        lab.MarkSpecimenEnteredInError(
            pb.MarkSpecimenEnteredInErrorRequest(name=work.specimen.name, reason="x"),
            metadata=hospital.tech.md,
        ),
    ):
        failure = await fails(call)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SPECIMEN_IN_REPORT",
        )


async def test_specimen_names_and_reasons_are_checked(lab: Lab, hospital: Hospital) -> None:
    assert await invalid_in(
        DOMAIN,
        lab.RejectSpecimen(pb.RejectSpecimenRequest(name="specimens/1"), metadata=hospital.tech.md),
    ) == ["name", "reason"]
    assert await invalid_in(
        DOMAIN,
        lab.MarkSpecimenEnteredInError(
            pb.MarkSpecimenEnteredInErrorRequest(name=missing("specimens"), reason="x" * 501),
            metadata=hospital.tech.md,
        ),
    ) == ["reason"]
    assert await invalid_in(
        DOMAIN, lab.GetSpecimen(pb.GetSpecimenRequest(name="x"), metadata=hospital.tech.md)
    ) == ["name"]
    # A specimen that does not exist is refused as another laboratory's would be: whether it
    # exists is not told to a caller who could not see it (access.authorize, ADR 0002).
    failure = await fails(
        lab.GetSpecimen(pb.GetSpecimenRequest(name=missing("specimens")), metadata=hospital.tech.md)
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )


async def test_a_technician_of_another_laboratory_sees_no_specimen(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await collected(lab, hospital, await ordered(lab, patients, hospital))
    assert work.specimen is not None
    failure = await fails(
        lab.GetSpecimen(
            pb.GetSpecimenRequest(name=work.specimen.name), metadata=hospital.other_tech.md
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )
    listed = await lab.ListSpecimens(
        pb.ListSpecimensRequest(patient=work.patient), metadata=hospital.other_tech.md
    )
    assert not listed.specimens
    failure = await fails(
        lab.CreateSpecimen(
            pb.CreateSpecimenRequest(
                specimen=specimen([work.order.name], hospital.other_tech.name)
            ),
            metadata=hospital.other_tech.md,
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )


async def test_the_ordering_doctor_reads_the_specimen_a_stranger_does_not(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    work = await collected(lab, hospital, await ordered(lab, patients, hospital))
    assert work.specimen is not None
    got = await lab.GetSpecimen(
        pb.GetSpecimenRequest(name=work.specimen.name), metadata=hospital.doctor.md
    )
    assert got == work.specimen
    failure = await fails(
        lab.GetSpecimen(
            pb.GetSpecimenRequest(name=work.specimen.name), metadata=hospital.colleague.md
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )
