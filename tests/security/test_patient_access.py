"""A signed-in patient (role PATIENT, subject `patients/{id}`) against the real services: their own
demographics and appointments, the departments, schedules and free slots to book from, and
nothing of anyone else. (The matrix of tests/security/test_policy_end_to_end.py has a patient who
owns none of its records among its callers: every rpc of every service refuses them.)

Patient tokens come from the session's test issuer, with exactly the claims iam's
CompletePatientSignIn puts in them (tests/iam/test_patient_sign_in.py signs in for real).
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.iam.helpers import make_department
from tests.identity import ISSUER, metadata
from tests.patient.helpers import make_patient
from tests.scheduling.helpers import future_slots
from tests.security.helpers import Audit, Iam, Patients, Scheduling, audit_events, outcome

DENIED = grpc.StatusCode.PERMISSION_DENIED


def as_patient(patient: str) -> tuple[tuple[str, str], ...]:
    """Call metadata of `patient` signed in."""
    return metadata(ISSUER.token(patient, ("PATIENT",)))


@pytest.fixture
async def two_patients(patients: Patients) -> tuple[str, str]:
    """Two fresh active patients with phone numbers: the one signed in, and another."""
    made = [
        await patients.CreatePatient(patient_pb.CreatePatientRequest(patient=make_patient()))
        for _ in range(2)
    ]
    return made[0].name, made[1].name


async def test_a_patient_reads_their_own_record_and_no_one_elses(
    patients: Patients, two_patients: tuple[str, str]
) -> None:
    me, other = two_patients
    mine = await patients.GetPatient(patient_pb.GetPatientRequest(name=me), metadata=as_patient(me))
    assert mine.name == me and mine.phone

    for name in (other, f"patients/{uuid.uuid4()}"):
        result = await outcome(
            patients.GetPatient(patient_pb.GetPatientRequest(name=name), metadata=as_patient(me))
        )
        # The same refusal whether the record exists or not.
        assert (result.code, result.reason) == (DENIED, "NOT_OWN"), result
    searched = await outcome(
        patients.ListPatients(
            patient_pb.ListPatientsRequest(phone=mine.phone), metadata=as_patient(me)
        )
    )
    assert (searched.code, searched.reason) == (DENIED, "NOT_OWN")
    changed = await outcome(
        patients.UpdatePatient(
            patient_pb.UpdatePatientRequest(
                patient=patient_pb.Patient(name=me, phone="+8613800000000", etag=mine.etag),
                update_mask=FieldMask(paths=["phone"]),
            ),
            metadata=as_patient(me),
        )
    )
    assert (changed.code, changed.reason) == (DENIED, "ROLE_NOT_PERMITTED")


async def test_a_patient_sees_departments_schedules_and_free_slots(
    iam: Iam, scheduling: Scheduling, two_patients: tuple[str, str]
) -> None:
    me, _ = two_patients
    department = await iam.CreateDepartment(
        iam_pb.CreateDepartmentRequest(department=make_department())
    )
    fixture = await future_slots(scheduling, count=2)
    slot = fixture.slots[0]
    call = as_patient(me)

    listed = await iam.ListDepartments(iam_pb.ListDepartmentsRequest(page_size=500), metadata=call)
    assert department.name in [d.name for d in listed.departments]
    got = await iam.GetDepartment(iam_pb.GetDepartmentRequest(name=department.name), metadata=call)
    assert got == department
    schedules = await scheduling.ListSchedules(
        pb.ListSchedulesRequest(department=slot.department), metadata=call
    )
    assert slot.schedule in [s.name for s in schedules.schedules]
    free = await scheduling.ListSlots(
        pb.ListSlotsRequest(schedule=slot.schedule, only_free=True), metadata=call
    )
    assert [s.name for s in free.slots] == [s.name for s in fixture.slots]
    assert (await scheduling.GetSlot(pb.GetSlotRequest(name=slot.name), metadata=call)) == slot
    # A slot tells how many are booked, never who: no field of it names a patient.
    assert not [f.name for f in pb.Slot.DESCRIPTOR.fields if "patient" in f.name]
    staff = await outcome(iam.ListStaffMembers(iam_pb.ListStaffMembersRequest(), metadata=call))
    assert (staff.code, staff.reason) == (DENIED, "ROLE_NOT_PERMITTED")
    changed = await outcome(
        scheduling.BlockSlot(pb.BlockSlotRequest(name=slot.name, reason="x"), metadata=call)
    )
    assert (changed.code, changed.reason) == (DENIED, "ROLE_NOT_PERMITTED")


async def test_a_patient_books_lists_and_cancels_their_own_appointment(
    scheduling: Scheduling, two_patients: tuple[str, str]
) -> None:
    me, _ = two_patients
    slot = (await future_slots(scheduling)).slots[0]
    call = as_patient(me)

    booked = await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=me, slot=slot.name, request_id=f"r-{uuid.uuid4()}"),
        metadata=call,
    )
    assert (booked.patient, booked.slot) == (me, slot.name)
    got = await scheduling.GetAppointment(pb.GetAppointmentRequest(name=booked.name), metadata=call)
    assert got == booked
    listed = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=me), metadata=call
    )
    assert [a.name for a in listed.appointments] == [booked.name]
    for refused in (
        scheduling.CheckInAppointment(
            pb.CheckInAppointmentRequest(name=booked.name, etag=got.etag), metadata=call
        ),
        scheduling.MarkNoShow(pb.MarkNoShowRequest(name=booked.name, etag=got.etag), metadata=call),
        scheduling.CompleteAppointment(
            pb.CompleteAppointmentRequest(name=booked.name, etag=got.etag), metadata=call
        ),
    ):
        # The desk's and the clinic's changes, not the patient's.
        result = await outcome(refused)
        assert (result.code, result.reason) == (DENIED, "ROLE_NOT_PERMITTED"), result
    cancelled = await scheduling.CancelAppointment(
        pb.CancelAppointmentRequest(name=booked.name, reason="cannot come", etag=got.etag),
        metadata=call,
    )
    assert cancelled.status == pb.APPOINTMENT_STATUS_CANCELLED


async def test_a_patient_cannot_book_for_another_patient(
    scheduling: Scheduling, two_patients: tuple[str, str]
) -> None:
    me, other = two_patients
    slot = (await future_slots(scheduling)).slots[0]

    result = await outcome(
        scheduling.BookAppointment(
            pb.BookAppointmentRequest(patient=other, slot=slot.name), metadata=as_patient(me)
        )
    )

    assert (result.code, result.reason) == (DENIED, "NOT_OWN")
    free = await scheduling.GetSlot(pb.GetSlotRequest(name=slot.name))
    assert free.booked_count == 0


async def test_another_patients_appointment_is_refused_as_if_it_did_not_exist(
    scheduling: Scheduling, two_patients: tuple[str, str]
) -> None:
    me, other = two_patients
    slot = (await future_slots(scheduling)).slots[0]
    theirs = await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=other, slot=slot.name)
    )
    call = as_patient(me)

    for name in (theirs.name, f"appointments/{uuid.uuid4()}"):
        got = await outcome(
            scheduling.GetAppointment(pb.GetAppointmentRequest(name=name), metadata=call)
        )
        cancelled = await outcome(
            scheduling.CancelAppointment(
                pb.CancelAppointmentRequest(name=name, reason="guessing"), metadata=call
            )
        )
        # The same answer for a guessed name that exists and one that does not.
        assert (got.code, got.reason) == (DENIED, "NOT_OWN"), got
        assert (cancelled.code, cancelled.reason) == (DENIED, "NOT_OWN"), cancelled
    still = await scheduling.GetAppointment(pb.GetAppointmentRequest(name=theirs.name))
    assert still.status == pb.APPOINTMENT_STATUS_BOOKED


async def test_a_patient_lists_only_their_own_appointments(
    scheduling: Scheduling, two_patients: tuple[str, str]
) -> None:
    me, other = two_patients
    slot = (await future_slots(scheduling)).slots[0]
    await scheduling.BookAppointment(pb.BookAppointmentRequest(patient=other, slot=slot.name))
    call = as_patient(me)

    theirs = await outcome(
        scheduling.ListAppointments(pb.ListAppointmentsRequest(patient=other), metadata=call)
    )
    by_department = await outcome(
        scheduling.ListAppointments(
            pb.ListAppointmentsRequest(department=slot.department), metadata=call
        )
    )
    unfiltered = await outcome(
        scheduling.ListAppointments(pb.ListAppointmentsRequest(), metadata=call)
    )

    assert (theirs.code, theirs.reason) == (DENIED, "NOT_OWN")
    assert (by_department.code, by_department.reason) == (DENIED, "NOT_OWN")
    # No filter at all is bad input for anyone: the patient names themselves.
    assert unfiltered.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unfiltered.failure is not None and unfiltered.failure.fields == ["patient"]


async def test_the_audit_trail_names_the_patient_as_the_actor(
    patients: Patients, scheduling: Scheduling, auditor: Audit, two_patients: tuple[str, str]
) -> None:
    me, _ = two_patients
    slot = (await future_slots(scheduling)).slots[0]
    before = {e.name for e in await audit_events(auditor, patient=me)}
    call = as_patient(me)
    await patients.GetPatient(patient_pb.GetPatientRequest(name=me), metadata=call)
    booked = await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=me, slot=slot.name), metadata=call
    )

    events = [e for e in await audit_events(auditor, patient=me) if e.name not in before]

    by_patient = [e for e in events if e.agent.patient == me]
    assert {e.entity.resource_name for e in by_patient} >= {me, booked.name}
    for event in by_patient:
        assert event.agent.staff == ""
        assert list(event.agent.roles) == ["PATIENT"]
        assert event.purpose_of_use == audit_pb.PURPOSE_OF_USE_PATIENT_REQUEST
        assert event.outcome == audit_pb.AUDIT_EVENT_OUTCOME_SUCCESS
