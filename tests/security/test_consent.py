"""A patient's privacy consent, read live by scheduling: revoked, it hides the patient's
appointments from the clinicians of their department; registration and billing go on."""

from __future__ import annotations

import datetime as dt

import grpc

from his.patient.v1 import patient_service_pb2 as patient_pb
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.identity import ISSUER, REGISTRAR, metadata
from tests.patient.helpers import grant_request
from tests.security.helpers import Patients, Scheduling, booked_in, department, names, outcome

DENIED = grpc.StatusCode.PERMISSION_DENIED


def _privacy(patient: str) -> patient_pb.GrantConsentRequest:
    return grant_request(patient, scope=patient_pb.CONSENT_SCOPE_PATIENT_PRIVACY)


async def test_a_revoked_privacy_consent_refuses_the_departments_clinicians_but_not_the_desk(
    patients: Patients, scheduling: Scheduling
) -> None:
    ward = department()
    patient, appointment = await booked_in(patients, scheduling, ward)
    doctor = ISSUER.staff("DOCTOR", departments=(ward,))
    nurse = ISSUER.staff("NURSE", departments=(ward,))
    billing = ISSUER.staff("BILLING_CLERK")
    get = pb.GetAppointmentRequest(name=appointment)
    listing = pb.ListAppointmentsRequest(patient=patient)
    consent = await patients.GrantConsent(_privacy(patient))

    # Consent in force: the department's clinicians read the appointment.
    for token in (doctor, nurse):
        assert (await scheduling.GetAppointment(get, metadata=metadata(token))).name == appointment

    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=consent.name))

    for token in (doctor, nurse):
        refused = await outcome(scheduling.GetAppointment(get, metadata=metadata(token)))
        assert (refused.code, refused.reason) == (DENIED, "CONSENT_REVOKED"), refused
        listed = await scheduling.ListAppointments(listing, metadata=metadata(token))
        assert names(listed.appointments) == []
    # Checking the patient in is refused for the same reason.
    check_in = pb.CheckInAppointmentRequest(name=appointment)
    refused = await outcome(scheduling.CheckInAppointment(check_in, metadata=metadata(nurse)))
    assert (refused.code, refused.reason) == (DENIED, "CONSENT_REVOKED"), refused
    # The registrar and billing are unaffected by the patient's privacy consent.
    for token in (REGISTRAR, billing):
        assert (await scheduling.GetAppointment(get, metadata=metadata(token))).name == appointment
        listed = await scheduling.ListAppointments(listing, metadata=metadata(token))
        assert names(listed.appointments) == [appointment]

    # Consent is asked for on every call: given again, it opens the record again at once.
    await patients.GrantConsent(_privacy(patient))
    assert (await scheduling.GetAppointment(get, metadata=metadata(doctor))).name == appointment


async def test_a_clinician_of_another_department_hears_of_the_department_not_the_consent(
    patients: Patients, scheduling: Scheduling
) -> None:
    patient, appointment = await booked_in(patients, scheduling, department())
    consent = await patients.GrantConsent(_privacy(patient))
    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=consent.name))
    stranger = ISSUER.staff("DOCTOR", departments=(department(),))

    refused = await outcome(
        scheduling.GetAppointment(
            pb.GetAppointmentRequest(name=appointment), metadata=metadata(stranger)
        )
    )

    assert (refused.code, refused.reason) == (DENIED, "DEPARTMENT_MISMATCH"), refused


async def test_a_privacy_consent_outside_its_period_does_not_outweigh_a_revocation(
    patients: Patients, scheduling: Scheduling
) -> None:
    ward = department()
    patient, appointment = await booked_in(patients, scheduling, ward)
    doctor = metadata(ISSUER.staff("DOCTOR", departments=(ward,)))
    revoked = await patients.GrantConsent(_privacy(patient))
    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=revoked.name))
    now = dt.datetime.now(dt.UTC)
    expired = await patients.GrantConsent(
        grant_request(
            patient,
            scope=patient_pb.CONSENT_SCOPE_PATIENT_PRIVACY,
            start=now - dt.timedelta(days=30),
            end=now - dt.timedelta(days=1),
        )
    )
    assert expired.status == patient_pb.CONSENT_STATUS_ACTIVE  # as stored; its period is over

    refused = await outcome(
        scheduling.GetAppointment(pb.GetAppointmentRequest(name=appointment), metadata=doctor)
    )

    assert (refused.code, refused.reason) == (DENIED, "CONSENT_REVOKED"), refused
