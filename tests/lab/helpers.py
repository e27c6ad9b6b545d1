"""Factories of the lab tests: laboratories and clinicians of the session's iam, lab orders
delivered as the orders service delivers them, specimens and reports.

The lab knows orders only from ServiceRequestChanged events: the tests deliver them through
DeliverEvents with the orders service's own identity, exactly as the orders relay does.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp

from his.common.v1 import types_pb2
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.outbox import envelope
from tests.iam.helpers import SECOND_ADMINISTRATOR, make_department, make_staff
from tests.identity import ISSUER, metadata
from tests.patient.helpers import make_patient

if TYPE_CHECKING:
    from his.iam.v1.iam_service_pb2_grpc import IamServiceAsyncStub
    from his.lab.v1.lab_service_pb2_grpc import LabServiceAsyncStub
    from his.patient.v1.patient_service_pb2_grpc import PatientServiceAsyncStub

    Iam: TypeAlias = IamServiceAsyncStub
    Lab: TypeAlias = LabServiceAsyncStub
    Patients: TypeAlias = PatientServiceAsyncStub
else:
    Iam = Lab = Patients = Any

DOMAIN = "lab.his"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
BLOOD = types_pb2.Coding(system=SNOMED, code="119297000", display="Blood specimen")
CBC = types_pb2.Coding(system=LOINC, code="58410-2", display="CBC panel")
BMP = types_pb2.Coding(system=LOINC, code="51990-0", display="Basic metabolic panel")
GLUCOSE = types_pb2.Coding(system=LOINC, code="2345-7", display="Glucose")
POTASSIUM = types_pb2.Coding(system=LOINC, code="2823-3", display="Potassium")
HEMOGLOBIN = types_pb2.Coding(system=LOINC, code="718-7", display="Hemoglobin")
ADMINISTRATOR = ISSUER.staff("ADMINISTRATOR")
ORDERS = ISSUER.service("orders")
ORDERS_MD = metadata(ORDERS)
_counter = itertools.count(1)


def request_id() -> str:
    """A fresh idempotency key."""
    return f"lab-{next(_counter)}-{uuid.uuid4().hex}"


def accession() -> str:
    """A fresh accession id."""
    return f"ACC-{next(_counter)}-{uuid.uuid4().hex[:12]}"


def missing(collection: str) -> str:
    """A well-formed name of a resource that does not exist."""
    return f"{collection}/{uuid.uuid4()}"


@dataclass(frozen=True)
class Person:
    """A staff member of the session's iam and the token they call with."""

    name: str
    token: str
    departments: tuple[str, ...]

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        """Call metadata that makes a call as this person."""
        return metadata(self.token)


@dataclass
class Hospital:
    """Two laboratories, a clinic and another clinic, and the people of each."""

    iam: Iam
    laboratory: str = ""
    other_laboratory: str = ""
    clinic: str = ""
    other_clinic: str = ""
    people: dict[str, Person] = field(default_factory=dict)

    async def department(self, kind: int) -> str:
        made = await self.iam.CreateDepartment(
            iam_pb.CreateDepartmentRequest(department=make_department(kind)),  # type: ignore[arg-type]
            metadata=metadata(ADMINISTRATOR),
        )
        return str(made.name)

    async def person(self, role: str, *departments: str) -> Person:
        """A new staff member with `role`, a member of `departments` (in iam and their token)."""
        made = await self.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(
                staff_member=make_staff(iam_pb.StaffRole.Value(f"STAFF_ROLE_{role}"))
            ),
            metadata=metadata(ADMINISTRATOR),
        )
        changes = [made.pending_access_change]
        for department in departments:
            added = await self.iam.AddMembership(
                iam_pb.AddMembershipRequest(
                    parent=made.name,
                    membership=iam_pb.DepartmentMembership(department=department),
                ),
                metadata=metadata(ADMINISTRATOR),
            )
            changes.append(added.access_change)
        # Two-person rule: a second administrator approves the role and the memberships.
        for change in changes:
            await self.iam.ApproveAccessChange(
                iam_pb.ApproveAccessChangeRequest(name=change),
                metadata=metadata(SECOND_ADMINISTRATOR),
            )
        token = ISSUER.staff(role, departments=departments, staff_id=made.name.split("/")[1])
        return Person(made.name, token, departments)

    async def build(self) -> Hospital:
        self.laboratory = await self.department(iam_pb.DEPARTMENT_KIND_LAB)
        self.other_laboratory = await self.department(iam_pb.DEPARTMENT_KIND_LAB)
        self.clinic = await self.department(iam_pb.DEPARTMENT_KIND_OUTPATIENT)
        self.other_clinic = await self.department(iam_pb.DEPARTMENT_KIND_OUTPATIENT)
        for key, role, where in (
            ("tech", "LAB_TECHNICIAN", self.laboratory),
            ("other_tech", "LAB_TECHNICIAN", self.other_laboratory),
            ("doctor", "DOCTOR", self.clinic),
            ("colleague", "DOCTOR", self.clinic),
            ("nurse", "NURSE", self.clinic),
            ("stranger", "DOCTOR", self.other_clinic),
        ):
            self.people[key] = await self.person(role, where)
        return self

    def __getattr__(self, key: str) -> Person:
        people = self.__dict__.get("people", {})
        if key in people:
            return people[key]  # type: ignore[no-any-return]
        raise AttributeError(key)


async def new_patient(
    patients: Patients,
    *,
    gender: int = patient_pb.ADMINISTRATIVE_GENDER_FEMALE,
    birth_date: tuple[int, int, int] = (1980, 5, 17),
) -> str:
    """A new active patient (made by the session's registrar)."""
    made = await patients.CreatePatient(
        patient_pb.CreatePatientRequest(
            patient=make_patient(gender=gender, birth_date=birth_date)  # type: ignore[arg-type]
        )
    )
    return str(made.name)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def order(
    patient: str,
    laboratory: str,
    requester: str,
    *,
    code: types_pb2.Coding = CBC,
    priority: int = orders_pb.REQUEST_PRIORITY_ROUTINE,
    status: int = orders_pb.SERVICE_REQUEST_STATUS_ACTIVE,
    name: str | None = None,
) -> orders_pb.ServiceRequest:
    """A ServiceRequest as the orders service has it."""
    return orders_pb.ServiceRequest(
        name=name or missing("serviceRequests"),
        patient=patient,
        encounter=missing("encounters"),
        requester=requester,
        code=code,
        priority=priority,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        performer=laboratory,
        create_time=_now(),
        update_time=_now(),
    )


def changed(request: orders_pb.ServiceRequest, revision: int, event_id: str | None = None) -> Any:
    """The ServiceRequestChanged envelope of one revision of an order."""
    return envelope(
        orders_pb.ServiceRequestChanged(service_request=request, revision=revision),
        source="orders",
        event_id=event_id,
        subject=request.name,
        patient=request.patient,
        trace_id="",
    )


async def deliver(lab: Lab, *events: Any) -> pb.DeliverEventsResponse:
    """Deliver events as the orders service's relay does."""
    return await lab.DeliverEvents(pb.DeliverEventsRequest(events=events), metadata=ORDERS_MD)


def specimen(orders: list[str], collector: str, **overrides: Any) -> pb.Specimen:
    """A Specimen for CreateSpecimen, collected a minute ago."""
    collected = Timestamp()
    collected.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    values: dict[str, Any] = {
        "service_requests": orders,
        "specimen_type": BLOOD,
        "accession_id": accession(),
        "collect_time": collected,
        "collector": collector,
    }
    values.update(overrides)
    return pb.Specimen(**values)


def loinc(code: str) -> types_pb2.Coding:
    """A LOINC coding."""
    return types_pb2.Coding(system=LOINC, code=code)


def quantity(code: types_pb2.Coding, value: float, unit: str) -> pb.Observation:
    """A PRELIMINARY numeric result."""
    return pb.Observation(
        code=code,
        value_quantity=types_pb2.Quantity(value=value, unit=unit),
        status=pb.OBSERVATION_STATUS_PRELIMINARY,
    )


@dataclass
class Work:
    """One order of a patient delivered to the laboratory, with a specimen and a report."""

    patient: str
    order: orders_pb.ServiceRequest
    specimen: pb.Specimen | None = None
    report: pb.DiagnosticReport | None = None


async def ordered(
    lab: Lab,
    patients: Patients,
    hospital: Hospital,
    *,
    code: types_pb2.Coding = CBC,
    gender: int = patient_pb.ADMINISTRATIVE_GENDER_FEMALE,
    birth_date: tuple[int, int, int] = (1980, 5, 17),
    priority: int = orders_pb.REQUEST_PRIORITY_ROUTINE,
) -> Work:
    """A new patient's order delivered to the laboratory (by the clinic's doctor)."""
    patient = await new_patient(patients, gender=gender, birth_date=birth_date)
    request = order(
        patient, hospital.laboratory, hospital.doctor.name, code=code, priority=priority
    )
    await deliver(lab, changed(request, 1))
    return Work(patient, request)


async def collected(lab: Lab, hospital: Hospital, work: Work) -> Work:
    """Its specimen, collected by the laboratory's technician."""
    work.specimen = await lab.CreateSpecimen(
        pb.CreateSpecimenRequest(specimen=specimen([work.order.name], hospital.tech.name)),
        metadata=hospital.tech.md,
    )
    return work


async def reported(lab: Lab, patients: Patients, hospital: Hospital, **kwargs: Any) -> Work:
    """An order with a specimen and an open (REGISTERED) report."""
    work = await collected(lab, hospital, await ordered(lab, patients, hospital, **kwargs))
    assert work.specimen is not None
    work.report = await lab.CreateDiagnosticReport(
        pb.CreateDiagnosticReportRequest(
            diagnostic_report=pb.DiagnosticReport(
                service_request=work.order.name, specimens=[work.specimen.name]
            )
        ),
        metadata=hospital.tech.md,
    )
    return work
