"""Lab orders: placing, reading, listing, and the status changes of their life."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.orders.v1 import orders_service_pb2 as pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from tests.emr.helpers import missing, open_encounter
from tests.orders.helpers import (
    DOMAIN,
    GLUCOSE,
    Emr,
    Hospital,
    Orders,
    Patients,
    changed_revisions,
    lab_order,
    place_lab_order,
    request_id,
    visit,
)
from tests.support import fails, invalid_in

CHANGED = "his.orders.v1.ServiceRequestChanged"


@pytest.mark.usefixtures("orders_outbox_held")
async def test_a_doctor_orders_a_test_and_the_lab_is_told(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(
        orders,
        hospital,
        at,
        note="fasting sample",
        priority=pb.REQUEST_PRIORITY_STAT,
        reason=types_pb2.Coding(system="http://hl7.org/fhir/sid/icd-10", code="E11.9"),
    )
    assert made.name.startswith("serviceRequests/")
    assert (made.status, made.priority) == (
        pb.SERVICE_REQUEST_STATUS_ACTIVE,
        pb.REQUEST_PRIORITY_STAT,
    )
    assert (made.patient, made.encounter) == (at.patient, at.encounter)
    assert made.requester == hospital.doctor.name
    assert made.performer == hospital.lab
    assert made.code == GLUCOSE
    assert made.reason.code == "E11.9"
    assert made.note == "fasting sample"
    assert made.etag == "1"
    assert made.create_time.seconds > 0
    got = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert got == made
    assert await changed_revisions(orders_db, CHANGED, made.name) == [1]


@pytest.mark.usefixtures("orders_outbox_held")
async def test_a_repeated_create_returns_the_first_order_and_tells_the_lab_once(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    key = request_id()
    request = pb.CreateServiceRequestRequest(
        service_request=lab_order(at, hospital.lab), request_id=key
    )
    # Concurrent replays: one order, one event, every caller gets it.
    made = await asyncio.gather(
        *(orders.CreateServiceRequest(request, metadata=hospital.doctor.md) for _ in range(6))
    )
    assert len({m.name for m in made}) == 1
    assert await changed_revisions(orders_db, CHANGED, made[0].name) == [1]
    other = pb.CreateServiceRequestRequest(
        service_request=lab_order(at, hospital.lab, note="another"), request_id=key
    )
    assert await invalid_in(
        DOMAIN, orders.CreateServiceRequest(other, metadata=hospital.doctor.md)
    ) == ["request_id"]


async def test_bad_lab_orders_are_refused_naming_each_field(
    orders: Orders, hospital: Hospital
) -> None:
    assert hospital.doctor is not None
    bad = pb.ServiceRequest(
        patient="people/1",
        encounter="encounters/x",
        performer="labs/1",
        code=types_pb2.Coding(system="http://snomed.info/sct", code="glucose"),
        priority=42,  # type: ignore[arg-type]
        reason=types_pb2.Coding(display="no code"),
        note="x" * 1001,
    )
    fields = await invalid_in(
        DOMAIN,
        orders.CreateServiceRequest(
            pb.CreateServiceRequestRequest(service_request=bad, request_id=" padded "),
            metadata=hospital.doctor.md,
        ),
    )
    assert set(fields) == {
        "service_request.patient",
        "service_request.encounter",
        "service_request.performer",
        "service_request.code.system",
        "service_request.code.code",
        "service_request.priority",
        "service_request.reason.system",
        "service_request.reason.code",
        "service_request.note",
        "request_id",
    }
    assert set(
        await invalid_in(
            DOMAIN,
            orders.CreateServiceRequest(
                pb.CreateServiceRequestRequest(), metadata=hospital.doctor.md
            ),
        )
    ) == {
        "service_request",
        "service_request.patient",
        "service_request.encounter",
        "service_request.performer",
        "service_request.code.system",
        "service_request.code.code",
        "service_request.priority",
    }


async def test_orders_need_an_active_patient_an_open_encounter_of_theirs_and_a_laboratory(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    other = await visit(patients, emr, hospital)
    planned = await open_encounter(
        emr,
        hospital.doctor,
        at.patient,
        hospital.clinic,
        status=emr_pb.ENCOUNTER_STATUS_PLANNED,
    )
    cases = {
        "PATIENT_NOT_FOUND": lab_order(at, hospital.lab, patient=missing("patients")),
        "ENCOUNTER_OTHER_PATIENT": lab_order(at, hospital.lab, encounter=other.encounter),
        "ENCOUNTER_NOT_OPEN": lab_order(at, hospital.lab, encounter=planned.name),
        "PERFORMER_NOT_FOUND": lab_order(at, missing("departments")),
        "PERFORMER_NOT_LAB": lab_order(at, hospital.clinic),
    }
    for reason, bad in cases.items():
        failure = await fails(
            orders.CreateServiceRequest(
                pb.CreateServiceRequestRequest(service_request=bad), metadata=hospital.doctor.md
            )
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            reason,
        ), (reason, failure)
    # A patient deactivated after the encounter was opened.
    gone = await visit(patients, emr, hospital)
    await patients.DeactivatePatient(patient_pb.DeactivatePatientRequest(name=gone.patient))
    inactive = await fails(
        orders.CreateServiceRequest(
            pb.CreateServiceRequestRequest(service_request=lab_order(gone, hospital.lab)),
            metadata=hospital.doctor.md,
        )
    )
    assert (inactive.code, inactive.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PATIENT_INACTIVE",
    )
    # emr answers for an encounter that does not exist as for one the doctor may not see.
    unknown = await fails(
        orders.CreateServiceRequest(
            pb.CreateServiceRequestRequest(
                service_request=lab_order(at, hospital.lab, encounter=missing("encounters"))
            ),
            metadata=hospital.doctor.md,
        )
    )
    assert (unknown.code, unknown.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )
    listed = await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(
            patient=at.patient, statuses=list(pb.ServiceRequestStatus.values())[1:]
        ),
        metadata=hospital.doctor.md,
    )
    assert list(listed.service_requests) == []


async def test_only_doctors_caring_for_the_patient_order_tests(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.nurse is not None and hospital.other_doctor is not None
    assert hospital.lab_technician is not None
    at = await visit(patients, emr, hospital)
    request = pb.CreateServiceRequestRequest(service_request=lab_order(at, hospital.lab))
    for who, reason in (
        (hospital.nurse, "ROLE_NOT_PERMITTED"),
        (hospital.lab_technician, "ROLE_NOT_PERMITTED"),
        # emr refuses the encounter to a doctor of another department, for the same reason.
        (hospital.other_doctor, "DEPARTMENT_MISMATCH"),
    ):
        failure = await fails(orders.CreateServiceRequest(request, metadata=who.md))
        assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)


async def test_get_of_a_missing_or_malformed_order(orders: Orders, hospital: Hospital) -> None:
    assert hospital.doctor is not None and hospital.nurse is not None
    # Decided with the least favourable facts: a refusal never tells whether an order exists.
    failure = await fails(
        orders.GetServiceRequest(
            pb.GetServiceRequestRequest(name=missing("serviceRequests")),
            metadata=hospital.doctor.md,
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )
    assert await invalid_in(
        DOMAIN,
        orders.GetServiceRequest(
            pb.GetServiceRequestRequest(name="serviceRequests/1"), metadata=hospital.doctor.md
        ),
    ) == ["name"]


@pytest.mark.usefixtures("orders_outbox_held")
async def test_hold_resume_revoke_and_each_change_is_a_new_revision_for_the_lab(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at)
    held = await orders.HoldServiceRequest(
        pb.HoldServiceRequestRequest(name=made.name, reason="not fasting", etag="1"), metadata=md
    )
    assert (held.status, held.status_reason, held.etag) == (
        pb.SERVICE_REQUEST_STATUS_ON_HOLD,
        "not fasting",
        "2",
    )
    again = await orders.HoldServiceRequest(
        pb.HoldServiceRequestRequest(name=made.name, reason="other", etag="1"), metadata=md
    )
    assert again == held  # already on hold: nothing changes, whatever the etag
    stale = await fails(
        orders.ResumeServiceRequest(
            pb.ResumeServiceRequestRequest(name=made.name, etag="1"), metadata=md
        )
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    resumed = await orders.ResumeServiceRequest(
        pb.ResumeServiceRequestRequest(name=made.name, etag="2"), metadata=md
    )
    assert (resumed.status, resumed.status_reason) == (pb.SERVICE_REQUEST_STATUS_ACTIVE, "")
    revoked = await orders.RevokeServiceRequest(
        pb.RevokeServiceRequestRequest(name=made.name, reason="ordered twice"), metadata=md
    )
    assert (revoked.status, revoked.revoke_reason) == (
        pb.SERVICE_REQUEST_STATUS_REVOKED,
        "ordered twice",
    )
    kept = await orders.RevokeServiceRequest(
        pb.RevokeServiceRequestRequest(name=made.name, reason="second reason"), metadata=md
    )
    assert kept.revoke_reason == "ordered twice"
    illegal = await fails(
        orders.HoldServiceRequest(
            pb.HoldServiceRequestRequest(name=made.name, reason="x"), metadata=md
        )
    )
    assert (illegal.code, illegal.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ILLEGAL_TRANSITION",
    )
    error = await orders.MarkServiceRequestEnteredInError(
        pb.MarkServiceRequestEnteredInErrorRequest(name=made.name, reason="wrong patient"),
        metadata=md,
    )
    assert (error.status, error.status_reason, error.etag) == (
        pb.SERVICE_REQUEST_STATUS_ENTERED_IN_ERROR,
        "wrong patient",
        "5",
    )
    assert await changed_revisions(orders_db, CHANGED, made.name) == [1, 2, 3, 4, 5]
    # Never deleted: still readable, listed only when asked for by status.
    got = await orders.GetServiceRequest(pb.GetServiceRequestRequest(name=made.name), metadata=md)
    assert got.status == pb.SERVICE_REQUEST_STATUS_ENTERED_IN_ERROR
    default = await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(patient=at.patient), metadata=md
    )
    assert [o.name for o in default.service_requests] == []
    asked = await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(
            patient=at.patient, statuses=[pb.SERVICE_REQUEST_STATUS_ENTERED_IN_ERROR]
        ),
        metadata=md,
    )
    assert [o.name for o in asked.service_requests] == [made.name]


async def test_status_changes_need_a_reason_and_a_well_formed_name(
    orders: Orders, hospital: Hospital
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    for call in (
        orders.RevokeServiceRequest(pb.RevokeServiceRequestRequest(name="x"), metadata=md),
        orders.HoldServiceRequest(
            pb.HoldServiceRequestRequest(name="x", reason="r" * 501), metadata=md
        ),
        orders.MarkServiceRequestEnteredInError(
            pb.MarkServiceRequestEnteredInErrorRequest(name="x", reason=" "), metadata=md
        ),
    ):
        assert set(await invalid_in(DOMAIN, call)) == {"name", "reason"}
    assert await invalid_in(
        DOMAIN, orders.ResumeServiceRequest(pb.ResumeServiceRequestRequest(), metadata=md)
    ) == ["name"]


async def test_completion_is_the_labs_not_a_persons(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.doctor is not None and hospital.lab_technician is not None
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at)
    for who, reason in (
        (hospital.doctor, "COMPLETED_BY_FULFILLER"),
        (hospital.lab_technician, "ROLE_NOT_PERMITTED"),
    ):
        failure = await fails(
            orders.CompleteServiceRequest(
                pb.CompleteServiceRequestRequest(name=made.name), metadata=who.md
            )
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)
    got = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert got.status == pb.SERVICE_REQUEST_STATUS_ACTIVE


async def test_a_patients_orders_are_listed_newest_first_in_pages(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    at = await visit(patients, emr, hospital)
    made = [(await place_lab_order(orders, hospital, at)).name for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await orders.ListServiceRequests(
            pb.ListServiceRequestsRequest(patient=at.patient, page_size=2, page_token=token),
            metadata=md,
        )
        seen += [o.name for o in page.service_requests]
        token = page.next_page_token
        if not token:
            break
    assert seen == made[::-1]
    by_lab = await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(
            patient=at.patient, performer=hospital.other_lab, encounter=at.encounter
        ),
        metadata=md,
    )
    assert list(by_lab.service_requests) == []
    assert set(
        await invalid_in(
            DOMAIN,
            orders.ListServiceRequests(
                pb.ListServiceRequestsRequest(
                    patient="p/1",
                    performer="x",
                    page_size=-1,
                    statuses=[9],  # type: ignore[list-item]
                ),
                metadata=md,
            ),
        )
    ) == {"patient", "performer", "page_size", "statuses"}
    assert await invalid_in(
        DOMAIN,
        orders.ListServiceRequests(
            pb.ListServiceRequestsRequest(patient=at.encounter, page_token="junk"), metadata=md
        ),
    ) == ["patient"]
    failure = await fails(
        orders.ListServiceRequests(
            pb.ListServiceRequestsRequest(patient=at.patient, page_token="junk"), metadata=md
        )
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["page_token"]


@pytest.mark.usefixtures("orders_outbox_held")
async def test_concurrent_status_changes_each_make_one_revision_and_one_event(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at)
    calls: list[Awaitable[pb.ServiceRequest]] = []
    for _ in range(4):
        calls += [
            orders.HoldServiceRequest(
                pb.HoldServiceRequestRequest(name=made.name, reason="wait"), metadata=md
            ),
            orders.ResumeServiceRequest(
                pb.ResumeServiceRequestRequest(name=made.name), metadata=md
            ),
            orders.RevokeServiceRequest(
                pb.RevokeServiceRequestRequest(name=made.name, reason="stop"), metadata=md
            ),
        ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    # Each call either changed the order, found it there already, or met an illegal transition.
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, grpc.aio.AioRpcError), result
            assert result.code() == grpc.StatusCode.FAILED_PRECONDITION, result
    final = await orders.GetServiceRequest(pb.GetServiceRequestRequest(name=made.name), metadata=md)
    revisions = await changed_revisions(orders_db, CHANGED, made.name)
    # Row locks serialize them: one event per change, revisions without gaps or repeats.
    assert revisions == list(range(1, int(final.etag) + 1))
