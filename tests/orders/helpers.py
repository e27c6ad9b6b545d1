"""Factories of the orders tests: a hospital of real iam departments and staff, open encounters
in the session's emr, and well-formed orders."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from his.common.v1 import types_pb2
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.orders.v1 import orders_service_pb2 as pb
from tests.emr.helpers import Clinic, Clinician, new_patient, open_encounter
from tests.orders.formulary import TABLET

if TYPE_CHECKING:
    from his.emr.v1.emr_service_pb2_grpc import EmrServiceAsyncStub
    from his.orders.v1.orders_service_pb2_grpc import OrdersServiceAsyncStub
    from his.patient.v1.patient_service_pb2_grpc import PatientServiceAsyncStub

    Orders: TypeAlias = OrdersServiceAsyncStub
    Emr: TypeAlias = EmrServiceAsyncStub
    Patients: TypeAlias = PatientServiceAsyncStub
else:
    Orders = Emr = Patients = Any

DOMAIN = "orders.his"
LOINC = "http://loinc.org"
GLUCOSE = types_pb2.Coding(system=LOINC, code="2345-7", display="Glucose")
ORAL = types_pb2.Coding(system="http://snomed.info/sct", code="26643006", display="Oral route")
_counter = itertools.count(1)


def request_id() -> str:
    """A fresh idempotency key."""
    return f"orders-{next(_counter)}-{uuid.uuid4().hex}"


@dataclass
class Hospital(Clinic):
    """The emr tests' clinic, plus two laboratories with a technician each and a pharmacist."""

    lab: str = ""
    other_lab: str = ""
    pharmacy: str = ""
    lab_technician: Clinician | None = None
    other_lab_technician: Clinician | None = None
    pharmacist: Clinician | None = None

    async def build(self) -> Hospital:
        await super().build()
        self.lab = await self.department(iam_pb.DEPARTMENT_KIND_LAB)
        self.other_lab = await self.department(iam_pb.DEPARTMENT_KIND_LAB)
        self.lab_technician = await self.clinician("LAB_TECHNICIAN", self.lab)
        self.other_lab_technician = await self.clinician("LAB_TECHNICIAN", self.other_lab)
        self.pharmacy = await self.department(iam_pb.DEPARTMENT_KIND_PHARMACY)
        self.pharmacist = await self.clinician("PHARMACIST", self.pharmacy)
        return self


@dataclass(frozen=True)
class Visit:
    """A patient with an open (ARRIVED) encounter in the clinic, attended by the doctor."""

    patient: str
    encounter: str


async def visit(patients: Patients, emr: Emr, hospital: Hospital, **kw: Any) -> Visit:
    """A new patient and an ARRIVED encounter of theirs in the clinic, attended by the doctor."""
    assert hospital.doctor is not None
    patient = await new_patient(patients)
    department = kw.pop("department", hospital.clinic)
    by = kw.pop("by", hospital.doctor)
    made = await open_encounter(emr, by, patient, department, **kw)
    return Visit(patient, made.name)


def lab_order(at: Visit, performer: str, **kw: Any) -> pb.ServiceRequest:
    """A routine glucose test of the visit's patient, performed by `performer`."""
    values: dict[str, Any] = {
        "patient": at.patient,
        "encounter": at.encounter,
        "code": GLUCOSE,
        "priority": pb.REQUEST_PRIORITY_ROUTINE,
        "performer": performer,
        **kw,
    }
    return pb.ServiceRequest(**values)


def dosage(**kw: Any) -> pb.Dosage:
    """500 mg by mouth three times a day for five days."""
    values: dict[str, Any] = {
        "dose": types_pb2.Quantity(value=500, unit="mg"),
        "route": ORAL,
        "frequency_per_day": 3,
        "duration_days": 5,
        "instructions": "after meals",
        **kw,
    }
    return pb.Dosage(**values)


def prescription(at: Visit, medication: str, **kw: Any) -> pb.MedicationRequest:
    """15 tablets of `medication`, no refills, for the visit's patient."""
    values: dict[str, Any] = {
        "patient": at.patient,
        "encounter": at.encounter,
        "medication": medication,
        "dosage": dosage(),
        "dispense_quantity": types_pb2.Quantity(value=15, unit=TABLET),
        "refills": 0,
        **kw,
    }
    return pb.MedicationRequest(**values)


async def place_lab_order(
    orders: Orders, hospital: Hospital, at: Visit, **kw: Any
) -> pb.ServiceRequest:
    """A lab order placed by the clinic's doctor, performed by the hospital's laboratory."""
    assert hospital.doctor is not None
    by = kw.pop("by", hospital.doctor)
    return await orders.CreateServiceRequest(
        pb.CreateServiceRequestRequest(service_request=lab_order(at, hospital.lab, **kw)),
        metadata=by.md,
    )


async def prescribe(
    orders: Orders, hospital: Hospital, at: Visit, medication: str, **kw: Any
) -> pb.MedicationRequest:
    """A prescription written by the clinic's doctor."""
    assert hospital.doctor is not None
    by = kw.pop("by", hospital.doctor)
    return await orders.CreateMedicationRequest(
        pb.CreateMedicationRequestRequest(medication_request=prescription(at, medication, **kw)),
        metadata=by.md,
    )


async def changed_revisions(
    db: Any, event_type: str, name: str, destination: str | None = None
) -> list[int]:
    """Revisions of the Changed events of one order in orders' outbox for `destination` (by
    default the service that fulfils the order, which is told of every change), in the order
    stored."""
    from sqlalchemy import text  # noqa: PLC0415

    from his.events.v1.event_envelope_pb2 import EventEnvelope  # noqa: PLC0415

    service = "Service" in event_type
    message = pb.ServiceRequestChanged if service else pb.MedicationRequestChanged
    async with db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT envelope FROM orders.outbox WHERE event_type = :type "
                "AND destination = :destination ORDER BY id"
            ),
            {"type": event_type, "destination": destination or ("lab" if service else "pharmacy")},
        )
        raws = [row[0] for row in rows]
    revisions = []
    for raw in raws:
        event = message()
        EventEnvelope.FromString(raw).payload.Unpack(event)
        order = (
            event.service_request
            if isinstance(event, pb.ServiceRequestChanged)
            else (event.medication_request)
        )
        if order.name == name:
            revisions.append(event.revision)
    return revisions
