"""Who sees which orders: the doctors of the encounter's department and those caring for the
patient, its nurses, the technicians of the performing laboratory, pharmacists for
prescriptions; every read and write in the audit trail."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.duration_pb2 import Duration

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.orders.v1 import orders_service_pb2 as pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.server import RunningService
from tests.emr.helpers import open_encounter
from tests.identity import channel_as
from tests.orders.formulary import Formulary
from tests.orders.helpers import (
    Emr,
    Hospital,
    Orders,
    Patients,
    lab_order,
    place_lab_order,
    prescribe,
    visit,
)
from tests.patient.helpers import grant_request
from tests.security.helpers import AUDITOR
from tests.support import fails


async def _sees(orders: Orders, name: str, md: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    try:
        if name.startswith("serviceRequests/"):
            await orders.GetServiceRequest(pb.GetServiceRequestRequest(name=name), metadata=md)
        else:
            await orders.GetMedicationRequest(
                pb.GetMedicationRequestRequest(name=name), metadata=md
            )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_who_reads_a_lab_order(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at)
    ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
    expected = {
        "doctor": ok,
        "colleague": ok,  # the encounter's department
        "nurse": ok,
        "lab_technician": ok,  # the performing laboratory
        "other_lab_technician": denied,
        "other_doctor": denied,
        "pharmacist": denied,
    }
    seen = {who: await _sees(orders, made.name, getattr(hospital, who).md) for who in expected}
    assert seen == expected


async def test_lab_technicians_list_the_orders_of_their_laboratory(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.lab_technician is not None and hospital.other_lab_technician is not None
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at)
    mine = await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(performer=hospital.lab, patient=at.patient),
        metadata=hospital.lab_technician.md,
    )
    assert [o.name for o in mine.service_requests] == [made.name]
    theirs = await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(patient=at.patient),
        metadata=hospital.other_lab_technician.md,
    )
    assert list(theirs.service_requests) == []


async def test_who_reads_a_prescription(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    at = await visit(patients, emr, hospital)
    made = await prescribe(orders, hospital, at, formulary.active.name)
    ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
    expected = {
        "doctor": ok,
        "nurse": ok,
        "pharmacist": ok,
        "lab_technician": denied,
        "other_doctor": denied,
    }
    seen = {who: await _sees(orders, made.name, getattr(hospital, who).md) for who in expected}
    assert seen == expected
    assert hospital.pharmacist is not None
    listed = await orders.ListMedicationRequests(
        pb.ListMedicationRequestsRequest(patient=at.patient), metadata=hospital.pharmacist.md
    )
    assert [o.name for o in listed.medication_requests] == [made.name]


async def test_the_attending_practitioner_of_another_department_cares_for_the_patient(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.other_doctor is not None and hospital.doctor is not None
    # The other clinic's doctor attends the encounter in our clinic: care, not department.
    at = await visit(patients, emr, hospital, attending=hospital.other_doctor.name)
    made = await place_lab_order(orders, hospital, at, by=hospital.other_doctor)
    assert made.requester == hospital.other_doctor.name
    assert await _sees(orders, made.name, hospital.other_doctor.md) == grpc.StatusCode.OK
    revoked = await orders.RevokeServiceRequest(
        pb.RevokeServiceRequestRequest(name=made.name, reason="done elsewhere"),
        metadata=hospital.doctor.md,
    )
    assert revoked.status == pb.SERVICE_REQUEST_STATUS_REVOKED


async def test_nurses_read_but_never_order_or_change(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.nurse is not None
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at)
    failure = await fails(
        orders.HoldServiceRequest(
            pb.HoldServiceRequestRequest(name=made.name, reason="x"), metadata=hospital.nurse.md
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_PERMITTED",
    )


async def test_every_read_and_write_of_an_order_is_in_the_audit_trail(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    audit_service: RunningService,
) -> None:
    assert hospital.doctor is not None and hospital.nurse is not None
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at)
    await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.nurse.md
    )
    await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(patient=at.patient), metadata=hospital.doctor.md
    )
    await orders.HoldServiceRequest(
        pb.HoldServiceRequestRequest(name=made.name, reason="not fasting"),
        metadata=hospital.doctor.md,
    )
    want = [
        ("CreateServiceRequest", audit_pb.AUDIT_EVENT_ACTION_CREATE),
        ("GetServiceRequest", audit_pb.AUDIT_EVENT_ACTION_READ),
        ("ListServiceRequests", audit_pb.AUDIT_EVENT_ACTION_READ),
        ("HoldServiceRequest", audit_pb.AUDIT_EVENT_ACTION_UPDATE),
    ]
    async with channel_as(audit_service.address, AUDITOR) as channel:
        auditor = audit_grpc.AuditServiceStub(channel)
        # Orders' relay carries its trail to the audit service in the background.
        async with asyncio.timeout(20):
            while True:
                reply = await auditor.ListAuditEvents(
                    audit_pb.ListAuditEventsRequest(patient=at.patient, page_size=500)
                )
                ours = [
                    (e.operation.rsplit("/", 1)[1], e.action)
                    for e in reply.audit_events
                    if e.entity.resource_name == made.name
                ]
                if len(ours) >= len(want):
                    break
                await asyncio.sleep(0.1)
    assert sorted(ours) == sorted(want)


async def test_revoked_consent_hides_orders_from_clinicians_but_not_from_the_fulfillers(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
) -> None:
    assert hospital.colleague is not None and hospital.lab_technician is not None
    assert hospital.pharmacist is not None and hospital.other_doctor is not None
    at = await visit(patients, emr, hospital)
    lab_order = await place_lab_order(orders, hospital, at)
    made = await prescribe(orders, hospital, at, formulary.active.name)
    consent = await patients.GrantConsent(
        grant_request(at.patient, scope=patient_pb.CONSENT_SCOPE_PATIENT_PRIVACY)
    )
    assert await _sees(orders, lab_order.name, hospital.colleague.md) == grpc.StatusCode.OK
    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=consent.name))
    failure = await fails(
        orders.GetServiceRequest(
            pb.GetServiceRequestRequest(name=lab_order.name), metadata=hospital.colleague.md
        )
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CONSENT_REVOKED")
    listed = await orders.ListServiceRequests(
        pb.ListServiceRequestsRequest(patient=at.patient), metadata=hospital.colleague.md
    )
    assert list(listed.service_requests) == []
    # The laboratory and the pharmacy work on the order whatever the consent says.
    assert await _sees(orders, lab_order.name, hospital.lab_technician.md) == grpc.StatusCode.OK
    assert await _sees(orders, made.name, hospital.pharmacist.md) == grpc.StatusCode.OK
    # Break-the-glass opens it to a doctor with no relation, audited as an emergency.
    await hospital.iam.CreateEmergencyAccessGrant(
        iam_pb.CreateEmergencyAccessGrantRequest(
            emergency_access_grant=iam_pb.EmergencyAccessGrant(
                patient=at.patient, reason="Collapsed in the waiting room; results needed now"
            ),
            duration=Duration(seconds=600),
        ),
        metadata=hospital.other_doctor.md,
    )
    assert await _sees(orders, lab_order.name, hospital.other_doctor.md) == grpc.StatusCode.OK


async def test_reading_the_encounter_is_not_enough_to_order_in_it(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.other_doctor is not None
    at = await visit(patients, emr, hospital)
    # The other clinic's doctor follows the patient there: emr lets them read our encounter (a
    # care relationship), but they neither work in our clinic nor attend this encounter.
    await open_encounter(emr, hospital.other_doctor, at.patient, hospital.other_clinic)
    seen = await emr.GetEncounter(
        emr_pb.GetEncounterRequest(name=at.encounter), metadata=hospital.other_doctor.md
    )
    assert seen.name == at.encounter
    failure = await fails(
        orders.CreateServiceRequest(
            pb.CreateServiceRequestRequest(service_request=lab_order(at, hospital.lab)),
            metadata=hospital.other_doctor.md,
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "DEPARTMENT_MISMATCH",
    )
