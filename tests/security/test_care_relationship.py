"""Least privilege by care relationship (issue 17): who reads a patient's demographics.

A doctor or nurse reads a patient only with a care relationship — an appointment of one of their
departments, or with them as its practitioner, within the window (his.patient.care), which the
patient service learns from scheduling's AppointmentChanged events through its inbox — and only
while the patient has not revoked privacy consent; otherwise only through break-the-glass, audited
as emergency. The registration desk reads everyone. Everything runs against the session's real
services; `delivered()` waits until the relays carried what was recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
import pytest

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.outbox import envelope
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.iam.helpers import make_staff
from tests.identity import ISSUER, REGISTRAR, metadata
from tests.patient.helpers import grant_request, make_patient
from tests.scheduling.helpers import active_patient, future_slots, make_schedule
from tests.security.helpers import (
    Audit,
    Iam,
    Patients,
    Scheduling,
    audit_events,
    booked_in,
    department,
    names,
    operation,
    outcome,
)
from tests.security.test_break_the_glass import Doctor, _grant
from tests.support import delivered

DENIED = grpc.StatusCode.PERMISSION_DENIED
GET_PATIENT = operation("patient", "GetPatient")


@pytest.fixture
async def doctor(iam: Iam) -> Doctor:
    """A new active DOCTOR staff member of the session's iam (grants need one)."""
    member = await iam.CreateStaffMember(iam_pb.CreateStaffMemberRequest(staff_member=make_staff()))
    return Doctor(member.name)


def _get(patient: str) -> patient_pb.GetPatientRequest:
    return patient_pb.GetPatientRequest(name=patient)


async def _family(patients: Patients, patient: str) -> str:
    return str((await patients.GetPatient(_get(patient))).family_name)


async def test_an_unrelated_doctor_reading_demographics_is_denied_naming_the_missing_relationship(
    patients: Patients, scheduling: Scheduling, doctor: Doctor
) -> None:
    patient, _ = await booked_in(patients, scheduling, department())
    await delivered()
    token = doctor.token(department())  # a doctor of another department

    refused = await outcome(patients.GetPatient(_get(patient), metadata=metadata(token)))

    assert (refused.code, refused.reason) == (DENIED, "NO_CARE_RELATIONSHIP"), refused
    # The same refusal for a patient who does not exist: nothing tells the two apart.
    nowhere = await outcome(
        patients.GetPatient(_get(f"patients/{uuid.uuid4()}"), metadata=metadata(token))
    )
    assert (nowhere.code, nowhere.reason) == (DENIED, "NO_CARE_RELATIONSHIP"), nowhere
    # A search leaves the patient out rather than refusing (and tells nothing of them).
    listed = await patients.ListPatients(
        patient_pb.ListPatientsRequest(name_prefix=await _family(patients, patient)),
        metadata=metadata(token),
    )
    assert patient not in names(listed.patients)


@pytest.mark.parametrize("role", ["DOCTOR", "NURSE"])
async def test_a_clinician_whose_department_has_an_appointment_in_the_window_reads_demographics(
    patients: Patients, scheduling: Scheduling, role: str
) -> None:
    ward = department()
    patient, _ = await booked_in(patients, scheduling, ward)
    await delivered()
    token = ISSUER.staff(role, departments=(department(), ward))

    read = await patients.GetPatient(_get(patient), metadata=metadata(token))

    assert read.name == patient and read.family_name and read.mrn  # the full record
    listed = await patients.ListPatients(
        patient_pb.ListPatientsRequest(name_prefix=read.family_name), metadata=metadata(token)
    )
    assert patient in names(listed.patients)


async def test_the_practitioner_of_the_appointment_reads_demographics_from_any_department(
    patients: Patients, scheduling: Scheduling
) -> None:
    practitioner_id = str(uuid.uuid4())
    made = await future_slots(
        scheduling,
        schedule=make_schedule(
            department_name=department(), practitioner_name=f"staff/{practitioner_id}"
        ),
    )
    patient = await active_patient(patients)
    await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=patient, slot=made.slot.name)
    )
    await delivered()
    token = ISSUER.staff("DOCTOR", staff_id=practitioner_id)  # in no department at all

    assert (await patients.GetPatient(_get(patient), metadata=metadata(token))).name == patient


async def test_a_cancelled_appointment_ends_the_relationship(
    patients: Patients, scheduling: Scheduling
) -> None:
    ward = department()
    patient, appointment = await booked_in(patients, scheduling, ward)
    await delivered()
    token = metadata(ISSUER.staff("DOCTOR", departments=(ward,)))
    assert (await patients.GetPatient(_get(patient), metadata=token)).name == patient

    await scheduling.CancelAppointment(
        pb.CancelAppointmentRequest(name=appointment, reason="patient called to cancel")
    )
    await delivered()

    refused = await outcome(patients.GetPatient(_get(patient), metadata=token))
    assert (refused.code, refused.reason) == (DENIED, "NO_CARE_RELATIONSHIP"), refused


def _appointment_changed(
    patient: str, ward: str, start: dt.datetime, revision: int = 1
) -> patient_pb.DeliverEventsRequest:
    appointment = pb.Appointment(
        name=f"appointments/{uuid.uuid4()}",
        patient=patient,
        department=ward,
        status=pb.APPOINTMENT_STATUS_FULFILLED,
    )
    appointment.start_time.FromDatetime(start)
    appointment.end_time.FromDatetime(start + dt.timedelta(minutes=15))
    event = pb.AppointmentChanged(appointment=appointment, revision=revision)
    return patient_pb.DeliverEventsRequest(
        events=[envelope(event, source="scheduling", trace_id="")]
    )


async def test_an_appointment_outside_the_window_relates_nobody(patients: Patients) -> None:
    patient = await active_patient(patients)
    long_ago, recent = department(), department()
    now = dt.datetime.now(dt.UTC)
    as_scheduling = metadata(ISSUER.service("scheduling"))
    # As scheduling's relay delivers them: a visit a year ago, and one last week.
    for ward, start in (
        (long_ago, now - dt.timedelta(days=365)),
        (recent, now - dt.timedelta(days=7)),
    ):
        reply = await patients.DeliverEvents(
            _appointment_changed(patient, ward, start), metadata=as_scheduling
        )
        assert (reply.applied, reply.duplicates) == (1, 0)

    old = await outcome(
        patients.GetPatient(
            _get(patient), metadata=metadata(ISSUER.staff("DOCTOR", departments=(long_ago,)))
        )
    )
    assert (old.code, old.reason) == (DENIED, "NO_CARE_RELATIONSHIP"), old
    fresh = ISSUER.staff("NURSE", departments=(recent,))
    assert (await patients.GetPatient(_get(patient), metadata=metadata(fresh))).name == patient


async def test_appointment_events_apply_once_and_only_from_scheduling(patients: Patients) -> None:
    patient = await active_patient(patients)
    request = _appointment_changed(patient, department(), dt.datetime.now(dt.UTC))
    as_scheduling = metadata(ISSUER.service("scheduling"))

    first = await patients.DeliverEvents(request, metadata=as_scheduling)
    again = await patients.DeliverEvents(request, metadata=as_scheduling)

    assert (first.applied, again.applied, again.duplicates) == (1, 0, 1)
    for caller in (ISSUER.service("emr"), ISSUER.staff("DOCTOR"), REGISTRAR):
        refused = await outcome(patients.DeliverEvents(request, metadata=metadata(caller)))
        assert refused.code == DENIED, refused


async def test_a_malformed_appointment_event_names_the_field(patients: Patients) -> None:
    request = _appointment_changed("patients/nobody", department(), dt.datetime.now(dt.UTC))

    refused = await outcome(
        patients.DeliverEvents(request, metadata=metadata(ISSUER.service("scheduling")))
    )

    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, refused
    assert refused.failure is not None
    assert refused.failure.fields == ["events[0].payload.appointment.patient"]


async def test_revoked_privacy_consent_refuses_even_a_related_doctor(
    patients: Patients, scheduling: Scheduling
) -> None:
    ward = department()
    patient, _ = await booked_in(patients, scheduling, ward)
    consent = await patients.GrantConsent(
        grant_request(patient, scope=patient_pb.CONSENT_SCOPE_PATIENT_PRIVACY)
    )
    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=consent.name))
    await delivered()

    refused = await outcome(
        patients.GetPatient(
            _get(patient), metadata=metadata(ISSUER.staff("DOCTOR", departments=(ward,)))
        )
    )

    assert (refused.code, refused.reason) == (DENIED, "CONSENT_REVOKED"), refused
    # The registration desk still reads the patient (to register and book them).
    assert (await patients.GetPatient(_get(patient), metadata=metadata(REGISTRAR))).name == patient


async def test_the_front_desk_reads_any_patient_without_a_relationship(
    patients: Patients,
) -> None:
    patient = await active_patient(patients)
    desk = metadata(ISSUER.staff("REGISTRAR", departments=(department(),)))
    assert (await patients.GetPatient(_get(patient), metadata=desk)).name == patient


async def test_with_a_grant_an_unrelated_doctor_reads_demographics_audited_as_emergency(
    patients: Patients, iam: Iam, auditor: Audit, doctor: Doctor
) -> None:
    patient = await active_patient(patients)
    token = metadata(doctor.token(department()))
    refused = await outcome(patients.GetPatient(_get(patient), metadata=token))
    assert (refused.code, refused.reason) == (DENIED, "NO_CARE_RELATIONSHIP"), refused

    grant = await iam.CreateEmergencyAccessGrant(_grant(patient, 600), metadata=token)
    read = await patients.GetPatient(_get(patient), metadata=token)

    assert read.name == patient
    disclosed = await audit_events(auditor, patient=patient, emergency_only=True)
    reads = [e for e in disclosed if e.operation == GET_PATIENT]
    assert len(reads) == 1, disclosed
    [event] = reads
    assert event.emergency_access and event.emergency_access_grant == grant.name
    assert event.purpose_of_use == audit_pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT
    assert (event.agent.staff, event.entity.resource_name) == (doctor.name, patient)
    assert event.action == audit_pb.AUDIT_EVENT_ACTION_READ


async def test_a_second_concurrent_grant_for_the_same_person_and_patient_is_refused(
    patients: Patients, iam: Iam, doctor: Doctor
) -> None:
    patient = await active_patient(patients)
    token = metadata(doctor.token(department()))

    results = await asyncio.gather(
        *(
            outcome(iam.CreateEmergencyAccessGrant(_grant(patient, 600), metadata=token))
            for _ in range(4)
        )
    )

    codes = sorted(result.code.value for result in results)
    assert codes == sorted(
        [grpc.StatusCode.OK.value] + [grpc.StatusCode.ALREADY_EXISTS.value] * 3
    ), results
    assert {r.reason for r in results if r.code != grpc.StatusCode.OK} == {
        "EMERGENCY_ACCESS_ALREADY_GRANTED"
    }
    listed = await iam.ListEmergencyAccessGrants(
        iam_pb.ListEmergencyAccessGrantsRequest(patient=patient, active_only=True)
    )
    assert len(listed.emergency_access_grants) == 1


async def test_a_grant_without_substance_is_refused_naming_the_reason(
    patients: Patients, iam: Iam, doctor: Doctor
) -> None:
    patient = await active_patient(patients)
    for reason in ("emergency access needed now!!", "zzzzzzzzzzzzzzzzzzzzzzzzzz"):
        refused = await outcome(
            iam.CreateEmergencyAccessGrant(
                _grant(patient, 600, reason=reason), metadata=metadata(doctor.token())
            )
        )
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, refused
        assert refused.failure is not None
        assert refused.failure.fields == ["emergency_access_grant.reason"]


async def test_a_search_pages_only_related_patients_so_its_tokens_tell_nothing_of_the_others(
    patients: Patients, scheduling: Scheduling
) -> None:
    # Three patients of one family name; the doctor's ward has an appointment with the second.
    family = f"Care{uuid.uuid4().hex[:10]}"
    made = [
        await patients.CreatePatient(
            patient_pb.CreatePatientRequest(patient=make_patient(family_name=family))
        )
        for _ in range(3)
    ]
    ward = department()
    slots = await future_slots(scheduling, schedule=make_schedule(department_name=ward))
    await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=made[1].name, slot=slots.slot.name)
    )
    await delivered()
    related = metadata(ISSUER.staff("DOCTOR", departments=(ward,)))
    unrelated = metadata(ISSUER.staff("DOCTOR", departments=(department(),)))

    # Filtered after paging, a page of one would come back empty with a next_page_token: "more
    # patients of this name exist". Restricted in SQL, the unrelated doctor learns nothing.
    nothing = await patients.ListPatients(
        patient_pb.ListPatientsRequest(name_prefix=family, page_size=1), metadata=unrelated
    )
    one = await patients.ListPatients(
        patient_pb.ListPatientsRequest(name_prefix=family, page_size=1), metadata=related
    )

    assert (list(nothing.patients), nothing.next_page_token) == ([], "")
    assert (names(one.patients), one.next_page_token) == ([made[1].name], "")
