"""Break-the-glass end to end: refused, granted, allowed and audited as an emergency, expired.

The doctor is a staff member of the session's iam (created by an administrator); their tokens
come from the session's test issuer with that staff id and the department claims each test
needs. Scheduling asks iam for a grant only when the answer would change with one, and trusts a
found grant until the earlier of its expiry and 30 s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.iam.helpers import make_staff
from tests.identity import ISSUER, REGISTRAR, metadata
from tests.patient.helpers import grant_request
from tests.scheduling.helpers import make_patient
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
    utc,
)

DENIED = grpc.StatusCode.PERMISSION_DENIED
REASON = "Unconscious on arrival; allergy history needed before treatment"
GET_APPOINTMENT = operation("scheduling", "GetAppointment")
CREATE_GRANT = operation("iam", "CreateEmergencyAccessGrant")


@dataclass(frozen=True)
class Doctor:
    """A doctor known to iam: their staff name and a token for some departments."""

    name: str

    def token(self, *departments: str) -> str:
        return ISSUER.staff(
            "DOCTOR", departments=departments, staff_id=self.name.removeprefix("staff/")
        )


@pytest.fixture
async def doctor(iam: Iam) -> Doctor:
    """A new active DOCTOR staff member of the session's iam."""
    member = await iam.CreateStaffMember(iam_pb.CreateStaffMemberRequest(staff_member=make_staff()))
    # Two-person rule: a second administrator approves the role.
    await iam.ApproveAccessChange(
        iam_pb.ApproveAccessChangeRequest(name=member.pending_access_change),
        metadata=metadata(ISSUER.staff("ADMINISTRATOR")),
    )
    read = await iam.GetStaffMember(iam_pb.GetStaffMemberRequest(name=member.name))
    assert list(read.roles) == [iam_pb.STAFF_ROLE_DOCTOR] and read.active
    return Doctor(member.name)


def _grant(
    patient: str, seconds: int, reason: str = REASON
) -> iam_pb.CreateEmergencyAccessGrantRequest:
    return iam_pb.CreateEmergencyAccessGrantRequest(
        emergency_access_grant=iam_pb.EmergencyAccessGrant(patient=patient, reason=reason),
        duration=Duration(seconds=seconds),
    )


async def test_a_grant_opens_another_departments_appointment_until_it_expires_and_is_disclosed(
    patients: Patients, scheduling: Scheduling, iam: Iam, auditor: Audit, doctor: Doctor
) -> None:
    patient, appointment = await booked_in(patients, scheduling, department())
    token = doctor.token(department())  # a doctor of another department
    get = pb.GetAppointmentRequest(name=appointment)

    refused = await outcome(scheduling.GetAppointment(get, metadata=metadata(token)))
    assert (refused.code, refused.reason) == (DENIED, "DEPARTMENT_MISMATCH"), refused

    grant = await iam.CreateEmergencyAccessGrant(_grant(patient, 3), metadata=metadata(token))
    assert (grant.staff, grant.patient) == (doctor.name, patient)

    read = await scheduling.GetAppointment(get, metadata=metadata(token))
    assert read.name == appointment
    listed = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=patient), metadata=metadata(token)
    )
    assert names(listed.appointments) == [appointment]
    still_valid = utc(grant.expire_time) - dt.datetime.now(dt.UTC)
    assert still_valid > dt.timedelta(0), "the machine was too slow to read within the grant"

    # The patient's accounting of disclosures: every access the grant allowed, and the grant.
    disclosed = await audit_events(auditor, patient=patient, emergency_only=True)
    assert all(e.emergency_access for e in disclosed), disclosed
    assert all(e.emergency_access_grant == grant.name for e in disclosed), disclosed
    assert all(e.agent.staff == doctor.name for e in disclosed), disclosed
    by_operation = {e.operation: e for e in disclosed}
    assert set(by_operation) == {
        CREATE_GRANT,
        GET_APPOINTMENT,
        operation("scheduling", "ListAppointments"),
    }, disclosed
    granted = by_operation[CREATE_GRANT]
    assert granted.action == audit_pb.AUDIT_EVENT_ACTION_EXECUTE
    assert granted.purpose_of_use == audit_pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT
    assert granted.entity.resource_name == grant.name
    access = by_operation[GET_APPOINTMENT]
    assert access.action == audit_pb.AUDIT_EVENT_ACTION_READ
    assert access.outcome == audit_pb.AUDIT_EVENT_OUTCOME_SUCCESS
    assert access.purpose_of_use == audit_pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT
    assert access.entity.resource_name == appointment
    # The grant happened first. (Chain order is arrival order: iam's and scheduling's relays
    # deliver independently, so the sequence numbers need not say so.)
    assert utc(granted.event_time) <= utc(access.event_time)
    # The refusal before the grant is in the trail too, but it disclosed nothing.
    everything = await audit_events(auditor, patient=patient, agent_staff=doctor.name)
    refusals = [e for e in everything if e.outcome != audit_pb.AUDIT_EVENT_OUTCOME_SUCCESS]
    assert [(e.operation, e.emergency_access) for e in refusals] == [(GET_APPOINTMENT, False)]
    assert "DEPARTMENT_MISMATCH" in refusals[0].outcome_description

    # Past its expiry the grant opens nothing (scheduling asks iam again).
    remaining = (utc(grant.expire_time) - dt.datetime.now(dt.UTC)).total_seconds()
    await asyncio.sleep(max(remaining, 0) + 0.3)
    refused = await outcome(scheduling.GetAppointment(get, metadata=metadata(token)))
    assert (refused.code, refused.reason) == (DENIED, "DEPARTMENT_MISMATCH"), refused
    listed = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=patient), metadata=metadata(token)
    )
    assert names(listed.appointments) == []


async def test_a_grant_opens_the_appointment_of_a_patient_who_revoked_consent(
    patients: Patients, scheduling: Scheduling, iam: Iam, auditor: Audit, doctor: Doctor
) -> None:
    ward = department()
    patient, appointment = await booked_in(patients, scheduling, ward)
    consent = await patients.GrantConsent(
        grant_request(patient, scope=patient_pb.CONSENT_SCOPE_PATIENT_PRIVACY)
    )
    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=consent.name))
    token = doctor.token(ward)  # a doctor of the appointment's own department
    get = pb.GetAppointmentRequest(name=appointment)

    refused = await outcome(scheduling.GetAppointment(get, metadata=metadata(token)))
    assert (refused.code, refused.reason) == (DENIED, "CONSENT_REVOKED"), refused
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient, 60), metadata=metadata(token))

    assert (await scheduling.GetAppointment(get, metadata=metadata(token))).name == appointment
    disclosed = await audit_events(auditor, patient=patient, emergency_only=True)
    reads = [e for e in disclosed if e.operation == GET_APPOINTMENT]
    assert [(e.agent.staff, e.emergency_access_grant) for e in reads] == [(doctor.name, grant.name)]
    # The registrar never needed a grant, and their reads are no emergency.
    assert (await scheduling.GetAppointment(get, metadata=metadata(REGISTRAR))).name == appointment
    assert len(await audit_events(auditor, patient=patient, emergency_only=True)) == len(disclosed)


async def test_a_registrar_may_not_break_the_glass(patients: Patients, iam: Iam) -> None:
    patient = (await patients.CreatePatient(_new_patient())).name

    refused = await outcome(
        iam.CreateEmergencyAccessGrant(_grant(patient, 60), metadata=metadata(REGISTRAR))
    )

    assert (refused.code, refused.reason) == (DENIED, "ROLE_NOT_PERMITTED"), refused


async def test_a_grant_needs_a_reason_an_auditor_can_understand(
    patients: Patients, iam: Iam, doctor: Doctor
) -> None:
    patient = (await patients.CreatePatient(_new_patient())).name

    refused = await outcome(
        iam.CreateEmergencyAccessGrant(
            _grant(patient, 60, reason="urgent"), metadata=metadata(doctor.token())
        )
    )

    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, refused
    assert refused.failure is not None
    assert refused.failure.fields == ["emergency_access_grant.reason"]


def _new_patient() -> patient_pb.CreatePatientRequest:
    return patient_pb.CreatePatientRequest(patient=make_patient())


async def test_reading_and_revoking_grants_are_in_the_patients_trail(
    patients: Patients, iam: Iam, auditor: Audit, doctor: Doctor
) -> None:
    """A grant names a patient and why their record was opened: an administrator reading the
    grants, and the revocation that ends one, are disclosures the patient's trail shows."""
    patient = (await patients.CreatePatient(_new_patient())).name
    token = doctor.token(department())
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient, 600), metadata=metadata(token))
    admin = metadata(ISSUER.staff("ADMINISTRATOR"))

    listed = await iam.ListEmergencyAccessGrants(
        iam_pb.ListEmergencyAccessGrantsRequest(patient=patient), metadata=admin
    )
    revoked = await iam.RevokeEmergencyAccessGrant(
        iam_pb.RevokeEmergencyAccessGrantRequest(name=grant.name), metadata=admin
    )

    assert names(listed.emergency_access_grants) == [grant.name] and revoked.revoked
    trail = [
        (e.operation, e.action, e.entity.resource_name)
        for e in await audit_events(auditor, patient=patient)
        if e.operation.startswith("his.iam.") and e.operation != CREATE_GRANT
    ]
    assert trail == [
        (
            operation("iam", "ListEmergencyAccessGrants"),
            audit_pb.AUDIT_EVENT_ACTION_READ,
            grant.name,
        ),
        (
            operation("iam", "RevokeEmergencyAccessGrant"),
            audit_pb.AUDIT_EVENT_ACTION_UPDATE,
            grant.name,
        ),
    ]
