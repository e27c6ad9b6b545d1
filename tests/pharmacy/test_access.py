"""Who sees and changes dispenses: pharmacists always, the prescribing doctor (care), others
only never (or under break-the-glass); refusals before existence; every access audited."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.runtime.server import RunningService
from tests.emr.helpers import Clinic, Emr, Patients, new_patient, open_encounter
from tests.identity import ISSUER, channel_as, metadata
from tests.patient.helpers import grant_request
from tests.pharmacy.helpers import (
    PHARMACIST,
    Pharmacy,
    create_medication,
    dispensing,
    missing,
    prescribe,
    receive,
)
from tests.security.helpers import Audit
from tests.support import fails

AUDITOR = ISSUER.staff("AUDITOR")


@pytest.fixture(scope="module")
async def auditor(audit_service: RunningService) -> AsyncIterator[Audit]:
    async with channel_as(audit_service.address, AUDITOR) as channel:
        yield audit_grpc.AuditServiceStub(channel)


async def _trail(auditor: Audit, patient: str, want: int) -> list[audit_pb.AuditEvent]:
    """The patient's audit events once at least `want` arrived (the relay delivers them
    shortly after the calls; bounded wait)."""
    for _ in range(200):
        reply = await auditor.ListAuditEvents(
            audit_pb.ListAuditEventsRequest(patient=patient, page_size=500)
        )
        if len(reply.audit_events) >= want:
            return list(reply.audit_events)
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {want} audit events arrived for the patient")


async def _dispensed(
    pharmacy: Pharmacy, location: str, prescriber: str, patient: str | None = None
) -> tuple[pb.MedicationDispense, str]:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, location, 10)
    order = await prescribe(pharmacy, medication.name, prescriber=prescriber, patient=patient)
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 2, stock_item=item.name), metadata=PHARMACIST
    )
    return dispense, order.name


async def test_the_prescribing_doctor_reads_the_dispenses_of_the_prescription(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    doctor_id = str(uuid.uuid4())
    dispense, order = await _dispensed(pharmacy, pharmacy_location, f"staff/{doctor_id}")
    doctor = metadata(ISSUER.staff("DOCTOR", staff_id=doctor_id))
    got = await pharmacy.GetMedicationDispense(
        pb.GetMedicationDispenseRequest(name=dispense.name), metadata=doctor
    )
    assert got.name == dispense.name
    listed = await pharmacy.ListMedicationDispenses(
        pb.ListMedicationDispensesRequest(medication_request=order), metadata=doctor
    )
    assert [d.name for d in listed.medication_dispenses] == [dispense.name]


async def test_clinicians_of_the_encounter_read_its_dispenses_and_others_do_not(
    pharmacy: Pharmacy,
    pharmacy_location: str,
    patients: Patients,
    emr: Emr,
    clinic: Clinic,
) -> None:
    assert clinic.doctor and clinic.nurse and clinic.colleague and clinic.other_doctor
    patient = await new_patient(patients)
    # Attended by a doctor of another clinic: care, not the department, relates them.
    visit = await open_encounter(
        emr, clinic.doctor, patient, clinic.clinic, attending=clinic.other_doctor.name
    )
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, pharmacy_location, 10)
    order = await prescribe(
        pharmacy,
        medication.name,
        patient=patient,
        encounter=visit.name,
        prescriber=clinic.doctor.name,
    )
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 1, stock_item=item.name), metadata=PHARMACIST
    )
    request = pb.GetMedicationDispenseRequest(name=dispense.name)
    # The department's nurse and another doctor of it, and the attending doctor of another one.
    for reader in (clinic.nurse, clinic.colleague, clinic.other_doctor):
        got = await pharmacy.GetMedicationDispense(request, metadata=reader.md)
        assert got.name == dispense.name
        listed = await pharmacy.ListMedicationDispenses(
            pb.ListMedicationDispensesRequest(patient=patient), metadata=reader.md
        )
        assert [d.name for d in listed.medication_dispenses] == [dispense.name]
    # A nurse of another clinic, no relation: refused, and an empty list.
    stranger = await clinic.clinician("NURSE", clinic.other_clinic)
    failure = await fails(pharmacy.GetMedicationDispense(request, metadata=stranger.md))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )
    listed = await pharmacy.ListMedicationDispenses(
        pb.ListMedicationDispensesRequest(patient=patient), metadata=stranger.md
    )
    assert list(listed.medication_dispenses) == []


async def test_the_prescriber_is_refused_once_the_patient_revoked_privacy_consent(
    pharmacy: Pharmacy, pharmacy_location: str, patients: Patients
) -> None:
    patient = await new_patient(patients)
    consent = await patients.GrantConsent(
        grant_request(patient, scope=patient_pb.CONSENT_SCOPE_PATIENT_PRIVACY)
    )
    doctor_id = str(uuid.uuid4())
    dispense, order = await _dispensed(
        pharmacy, pharmacy_location, f"staff/{doctor_id}", patient=patient
    )
    doctor = metadata(ISSUER.staff("DOCTOR", staff_id=doctor_id))
    request = pb.GetMedicationDispenseRequest(name=dispense.name)
    assert (await pharmacy.GetMedicationDispense(request, metadata=doctor)).name == dispense.name
    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=consent.name))
    failure = await fails(pharmacy.GetMedicationDispense(request, metadata=doctor))
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CONSENT_REVOKED")
    listed = await pharmacy.ListMedicationDispenses(
        pb.ListMedicationDispensesRequest(medication_request=order), metadata=doctor
    )
    assert list(listed.medication_dispenses) == []
    # The pharmacist reads it whatever the consent (pharmacy permissions are not care-bound).
    again = await pharmacy.GetMedicationDispense(request, metadata=PHARMACIST)
    assert again.name == dispense.name


async def test_clinicians_without_care_are_refused_and_see_an_empty_list(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    dispense, order = await _dispensed(pharmacy, pharmacy_location, f"staff/{uuid.uuid4()}")
    for role in ("DOCTOR", "NURSE"):
        caller = metadata(ISSUER.staff(role, departments=(f"departments/{uuid.uuid4()}",)))
        failure = await fails(
            pharmacy.GetMedicationDispense(
                pb.GetMedicationDispenseRequest(name=dispense.name), metadata=caller
            )
        )
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "DEPARTMENT_MISMATCH",
        )
        # The same answer for a dispense that does not exist: nothing tells which exist.
        nowhere = await fails(
            pharmacy.GetMedicationDispense(
                pb.GetMedicationDispenseRequest(name=missing("medicationDispenses")),
                metadata=caller,
            )
        )
        assert (nowhere.code, nowhere.reason) == (failure.code, failure.reason)
        listed = await pharmacy.ListMedicationDispenses(
            pb.ListMedicationDispensesRequest(medication_request=order), metadata=caller
        )
        assert list(listed.medication_dispenses) == []


async def test_only_pharmacists_dispense_hand_over_and_cancel(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    doctor_id = str(uuid.uuid4())
    dispense, order = await _dispensed(pharmacy, pharmacy_location, f"staff/{doctor_id}")
    prescriber = metadata(ISSUER.staff("DOCTOR", staff_id=doctor_id))
    for token in (
        prescriber,
        metadata(ISSUER.staff("NURSE")),
        metadata(ISSUER.staff("REGISTRAR")),
        metadata(ISSUER.service("orders")),
    ):
        for call in (
            pharmacy.DispenseMedication(
                dispensing(order, 1, location=pharmacy_location), metadata=token
            ),
            pharmacy.HandOverMedicationDispense(
                pb.HandOverMedicationDispenseRequest(name=dispense.name), metadata=token
            ),
            pharmacy.CancelMedicationDispense(
                pb.CancelMedicationDispenseRequest(name=dispense.name, reason="x"), metadata=token
            ),
        ):
            assert (await fails(call)).code == grpc.StatusCode.PERMISSION_DENIED
    for role in ("REGISTRAR", "BILLING_CLERK", "LAB_TECHNICIAN", "AUDITOR", "ADMINISTRATOR"):
        failure = await fails(
            pharmacy.GetMedicationDispense(
                pb.GetMedicationDispenseRequest(name=dispense.name),
                metadata=metadata(ISSUER.staff(role)),
            )
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, role


async def test_every_dispense_read_and_write_is_audited_with_its_patient(
    pharmacy: Pharmacy, pharmacy_location: str, auditor: Audit
) -> None:
    dispense, _ = await _dispensed(pharmacy, pharmacy_location, "")
    await pharmacy.GetMedicationDispense(
        pb.GetMedicationDispenseRequest(name=dispense.name), metadata=PHARMACIST
    )
    await pharmacy.HandOverMedicationDispense(
        pb.HandOverMedicationDispenseRequest(name=dispense.name), metadata=PHARMACIST
    )
    await pharmacy.ListMedicationDispenses(
        pb.ListMedicationDispensesRequest(patient=dispense.patient), metadata=PHARMACIST
    )
    trail = await _trail(auditor, dispense.patient, 4)
    operations = [e.operation.rsplit("/", 1)[1] for e in trail]
    assert operations == [
        "DispenseMedication",
        "GetMedicationDispense",
        "HandOverMedicationDispense",
        "ListMedicationDispenses",
    ]
    assert {e.entity.resource_name for e in trail} == {dispense.name}
    assert [e.action for e in trail] == [
        audit_pb.AUDIT_EVENT_ACTION_CREATE,
        audit_pb.AUDIT_EVENT_ACTION_READ,
        audit_pb.AUDIT_EVENT_ACTION_UPDATE,
        audit_pb.AUDIT_EVENT_ACTION_READ,
    ]
    assert {e.purpose_of_use for e in trail} == {audit_pb.PURPOSE_OF_USE_TREATMENT}


async def test_a_refused_dispense_records_no_dispense(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, pharmacy_location, 1)
    order = await prescribe(pharmacy, medication.name)
    failure = await fails(
        pharmacy.DispenseMedication(
            dispensing(order.name, 2, stock_item=item.name), metadata=PHARMACIST
        )
    )
    assert failure.reason == "OUT_OF_STOCK"
    listed = await pharmacy.ListMedicationDispenses(
        pb.ListMedicationDispensesRequest(medication_request=order.name), metadata=PHARMACIST
    )
    assert list(listed.medication_dispenses) == []
