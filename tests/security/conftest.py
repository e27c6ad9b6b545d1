"""Fixtures of the security tests: stubs of the session's servers and the records the matrix reads.

Everything runs through the session's real servers (patient, scheduling, iam, audit) with tokens of
the session's test issuer; the policy engine the servers share is compared with a fresh one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.lab.v1 import lab_service_pb2 as lab_pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime import server as runtime_server
from his.runtime.outbox import envelope
from his.runtime.policy import PolicyEngine
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.iam.helpers import make_department, make_staff
from tests.identity import ISSUER, channel_as, metadata
from tests.scheduling.helpers import generate_request, make_schedule, tomorrow
from tests.security import billing_records, orders_records, pharmacy_records
from tests.security.helpers import (
    ADMINISTRATOR,
    AUDITOR,
    DEPARTMENT_A,
    NOTE_AUTHOR,
    PRACTITIONER,
    Audit,
    Iam,
    Patients,
    Scheduling,
    World,
    audit_events,
)


@pytest.fixture(scope="session")
def policy() -> PolicyEngine:
    """An engine of the tests' own over the shipped policies: the expected decisions."""
    return PolicyEngine.load()


@pytest.fixture(scope="session")
def served_policy() -> PolicyEngine:
    """The engine every server of this process decides with (and caches in)."""
    return runtime_server._policy()


@pytest.fixture(scope="session")
async def auditor(audit_service: RunningService) -> AsyncIterator[Audit]:
    """The session's audit service as an auditor calls it (unless a call sets its own token)."""
    async with channel_as(audit_service.address, AUDITOR) as channel:
        yield audit_grpc.AuditServiceStub(channel)


@pytest.fixture(scope="session")
async def iam(iam_service: RunningService) -> AsyncIterator[Iam]:
    """The session's iam service as an administrator calls it (unless a call sets its own)."""
    async with channel_as(iam_service.address, ADMINISTRATOR) as channel:
        yield iam_grpc.IamServiceStub(channel)


@pytest.fixture(scope="session")
async def world(
    patients: Patients,
    scheduling: Scheduling,
    auditor: Audit,
    iam: Iam,
    emr: Any,
    orders: Any,
    pharmacy: Any,
    lab: Any,
    billing: Any,
    database_url: str,
) -> World:
    """The matrix's records, made once per session by a registrar and an administrator (and the
    emr's by a doctor of their department)."""
    made = World(
        patients,
        scheduling,
        auditor,
        iam,
        emr=emr,
        orders=orders,
        lab=lab,
        database_url=database_url,
    )
    made.patient = await made.fresh_patient()
    made.other_patient = await made.fresh_patient()
    made.consent = await made.fresh_consent()
    schedule = await scheduling.CreateSchedule(
        pb.CreateScheduleRequest(
            schedule=make_schedule(department_name=DEPARTMENT_A, practitioner_name=PRACTITIONER)
        )
    )
    made.schedule = schedule.name
    slots = await scheduling.GenerateSlots(
        generate_request(schedule.name, first=tomorrow(), opens=(7, 0), closes=(19, 0))
    )
    made.slot = slots.slots[0].name
    made.spare_slots = [slot.name for slot in slots.slots[1:]]
    booked = await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=made.patient, slot=made.slot)
    )
    made.appointment = booked.name
    made.audit_event = (await audit_events(auditor, patient=made.patient))[0].name
    department = await iam.CreateDepartment(
        iam_pb.CreateDepartmentRequest(department=make_department())
    )
    made.department = department.name
    staff = await iam.CreateStaffMember(iam_pb.CreateStaffMemberRequest(staff_member=make_staff()))
    made.staff = staff.name
    enrolment = await iam.CreateStaffEnrolment(
        iam_pb.CreateStaffEnrolmentRequest(parent=staff.name)
    )
    approval_code = ""
    if enrolment.approval_required:  # a doctor: a second administrator approves
        approved = await iam.ApproveStaffEnrolment(
            iam_pb.ApproveStaffEnrolmentRequest(name=enrolment.name),
            metadata=metadata(ISSUER.staff("ADMINISTRATOR")),
        )
        approval_code = approved.enrolment_code
    password = "the world's staff password"
    enrolled = await iam.CompleteStaffEnrolment(
        iam_pb.CompleteStaffEnrolmentRequest(
            username=staff.username,
            enrolment_code=enrolment.enrolment_code,
            approval_code=approval_code,
            password=password,
        )
    )
    made.staff_credential = (staff.username, password, enrolled.totp_secret)
    made.encounter = await made.fresh_encounter()
    made.note = await made.fresh_signed_note()
    added = await emr.AddDiagnosis(
        emr_pb.AddDiagnosisRequest(
            parent=made.encounter,
            diagnosis=emr_pb.Diagnosis(
                code=types_pb2.Coding(system="http://hl7.org/fhir/sid/icd-10", code="I10"),
                clinical_status=emr_pb.CONDITION_CLINICAL_STATUS_ACTIVE,
                verification_status=emr_pb.CONDITION_VERIFICATION_STATUS_CONFIRMED,
                rank=1,
            ),
        ),
        metadata=NOTE_AUTHOR.metadata,
    )
    made.diagnosis = added.name
    made.service_request = await orders_records.fresh_service_request(made)
    made.medication_request = await orders_records.fresh_medication_request(made)
    made.finished_encounter = await orders_records.finished_encounter(made)
    await pharmacy_records.build(made, pharmacy)
    await lab_records(made)
    await billing_records.build(made, billing)
    return made


async def lab_records(world: World) -> None:
    """The lab's records of the matrix: an order of the world's patient performed by
    DEPARTMENT_A and requested by PRACTITIONER (delivered as the orders relay does), its specimen
    and its released report with one critical result, made by a technician of DEPARTMENT_A."""
    lab = world.lab
    technician = metadata(ISSUER.staff("LAB_TECHNICIAN", departments=(DEPARTMENT_A,)))
    glucose = types_pb2.Coding(system="http://loinc.org", code="2345-7")
    order = orders_pb.ServiceRequest(
        name=f"serviceRequests/{uuid.uuid4()}",
        patient=world.patient,
        encounter=world.encounter,
        requester=PRACTITIONER,
        code=glucose,
        priority=orders_pb.REQUEST_PRIORITY_ROUTINE,
        status=orders_pb.SERVICE_REQUEST_STATUS_ACTIVE,
        performer=DEPARTMENT_A,
    )
    event = orders_pb.ServiceRequestChanged(service_request=order, revision=1)
    await lab.DeliverEvents(
        lab_pb.DeliverEventsRequest(events=[envelope(event, source="orders", trace_id="")]),
        metadata=metadata(ISSUER.service("orders")),
    )
    world.lab_order = order.name
    specimen = lab_pb.Specimen(
        service_requests=[order.name],
        specimen_type=types_pb2.Coding(system="http://snomed.info/sct", code="119297000"),
        accession_id=f"SEC-{uuid.uuid4().hex[:12]}",
        collector=PRACTITIONER,
    )
    specimen.collect_time.GetCurrentTime()
    specimen.collect_time.seconds -= 60
    made = await lab.CreateSpecimen(
        lab_pb.CreateSpecimenRequest(specimen=specimen), metadata=technician
    )
    world.specimen = made.name
    report = await lab.CreateDiagnosticReport(
        lab_pb.CreateDiagnosticReportRequest(
            diagnostic_report=lab_pb.DiagnosticReport(
                service_request=order.name, specimens=[made.name]
            )
        ),
        metadata=technician,
    )
    await lab.RecordObservations(
        lab_pb.RecordObservationsRequest(
            parent=report.name,
            observations=[
                lab_pb.Observation(
                    code=glucose,
                    value_quantity=types_pb2.Quantity(value=30, unit="mg/dL"),
                    status=lab_pb.OBSERVATION_STATUS_PRELIMINARY,
                )
            ],
        ),
        metadata=technician,
    )
    final = await lab.FinalizeReport(
        lab_pb.FinalizeReportRequest(name=report.name), metadata=technician
    )
    world.report = final.name
    world.critical = final.results[0].name
