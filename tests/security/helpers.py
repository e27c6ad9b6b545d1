"""Helpers of the security tests: who calls, what the policy says, what the call answered.

The callers are fixed for the whole session (tokens of the session's test issuer): every staff role
in a department that owns none of the test records, a service acting on its own, and clinicians
related to the records (of their department, or the practitioner of their slot).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.base.identity import STAFF_ROLES
from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.database import async_url
from his.runtime.policy import Decision, PolicyEngine, Request
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.iam.helpers import make_staff
from tests.identity import ISSUER, metadata
from tests.patient.helpers import grant_request
from tests.scheduling.helpers import active_patient, future_slots, make_patient, make_schedule
from tests.support import RpcFailure, delivered, failure_of

if TYPE_CHECKING:
    from his.audit.v1.audit_service_pb2_grpc import AuditServiceAsyncStub
    from his.iam.v1.iam_service_pb2_grpc import IamServiceAsyncStub
    from his.patient.v1.patient_service_pb2_grpc import PatientServiceAsyncStub
    from his.scheduling.v1.scheduling_service_pb2_grpc import SchedulingServiceAsyncStub

    # The async stubs exist only in the type stubs; at run time the fixtures' stubs are used.
    Patients: TypeAlias = PatientServiceAsyncStub
    Scheduling: TypeAlias = SchedulingServiceAsyncStub
    Audit: TypeAlias = AuditServiceAsyncStub
    Iam: TypeAlias = IamServiceAsyncStub
else:
    Patients = Scheduling = Audit = Iam = Any

# The department every test record of the matrix belongs to, and one none of them belongs to.
DEPARTMENT_A = f"departments/{uuid.uuid4()}"
DEPARTMENT_B = f"departments/{uuid.uuid4()}"
# The practitioner of every slot of the matrix's schedule.
PRACTITIONER_ID = str(uuid.uuid4())
PRACTITIONER = f"staff/{PRACTITIONER_ID}"

# An auditor and an administrator of the session (default callers of the audit and iam stubs).
AUDITOR = ISSUER.staff("AUDITOR")
ADMINISTRATOR = ISSUER.staff("ADMINISTRATOR")


@dataclass(frozen=True)
class Caller:
    """One caller of the matrix: its roles, who it is, its departments and its token."""

    label: str
    roles: tuple[str, ...]
    subject: str
    departments: tuple[str, ...]
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata that makes a call as this caller."""
        return metadata(self.token)


def _staff(label: str, role: str, departments: tuple[str, ...], staff_id: str = "") -> Caller:
    staff_id = staff_id or str(uuid.uuid4())
    token = ISSUER.staff(role, departments=departments, staff_id=staff_id)
    return Caller(label, (role,), f"staff/{staff_id}", departments, token)


def _callers() -> dict[str, Caller]:
    # A HIS service acting on its own, with no person behind the call.
    callers = {
        "SERVICE": Caller(
            "SERVICE", ("SERVICE",), "services/billing", (), ISSUER.service("billing")
        )
    }
    for role in STAFF_ROLES:
        # Every role works in a department that owns none of the matrix's records.
        callers[role] = _staff(role, role, (DEPARTMENT_B,))
    # A signed-in patient who is not the patient of any of the matrix's records: a patient sees
    # nothing of anyone else (their own records: tests/security/test_patient_access.py).
    stranger = f"patients/{uuid.uuid4()}"
    callers["PATIENT"] = Caller(
        "PATIENT", ("PATIENT",), stranger, (), ISSUER.token(stranger, ("PATIENT",))
    )
    for role in ("DOCTOR", "NURSE"):
        callers[f"{role}_OF_THE_DEPARTMENT"] = _staff(
            f"{role}_OF_THE_DEPARTMENT", role, (DEPARTMENT_B, DEPARTMENT_A)
        )
        # The practitioner of the slot, in no department at all: care alone relates them.
        callers[f"{role}_PRACTITIONER"] = _staff(
            f"{role}_PRACTITIONER", role, (), staff_id=PRACTITIONER_ID
        )
    return callers


CALLERS = _callers()
# The author of the world's notes: a doctor of the records' department who is none of CALLERS.
NOTE_AUTHOR = _staff("NOTE_AUTHOR", "DOCTOR", (DEPARTMENT_A,))
ROLE_CALLERS = ("SERVICE", *STAFF_ROLES, "PATIENT")
# Clinicians related to the matrix's appointments, for the rpcs that look at the record.
RELATED_CALLERS = (
    "DOCTOR_OF_THE_DEPARTMENT",
    "NURSE_OF_THE_DEPARTMENT",
    "DOCTOR_PRACTITIONER",
    "NURSE_PRACTITIONER",
)


def missing(collection: str) -> str:
    """A well-formed name of a resource that does not exist."""
    return f"{collection}/{uuid.uuid4()}"


@dataclass
class World:
    """The records the matrix asks about, made by a registrar and an administrator.

    The appointment's department is DEPARTMENT_A and its practitioner PRACTITIONER; its patient
    has no privacy consent recorded. Spare slots of the same schedule (same department, same
    practitioner) take the fresh appointments of callers allowed to change one.
    """

    patients: Patients
    scheduling: Scheduling
    audit: Audit
    iam: Iam
    patient: str = ""
    other_patient: str = ""
    consent: str = ""
    schedule: str = ""
    slot: str = ""
    appointment: str = ""
    audit_event: str = ""
    department: str = ""
    staff: str = ""
    # The world's staff member's enrolled credential: username, password, TOTP secret.
    staff_credential: tuple[str, str, str] = ("", "", "")
    spare_slots: list[str] = field(default_factory=list)
    grant: str = ""
    # The emr side: the stub, an encounter of the patient in DEPARTMENT_A attended by
    # PRACTITIONER, a signed note of it by NOTE_AUTHOR, a diagnosis of it.
    emr: Any = None
    database_url: str = ""
    encounter: str = ""
    note: str = ""
    diagnosis: str = ""
    # The orders side (tests/security/orders_records.py): the stub, a lab order and a
    # prescription in the world's encounter, and a finished encounter of the patient.
    orders: Any = None
    service_request: str = ""
    medication_request: str = ""
    finished_encounter: str = ""
    # The pharmacy side (tests/security/pharmacy_records.py): the stub, a formulary entry, a lot
    # of it in a pharmacy, the patient's prescription written by PRACTITIONER, a dispense of it.
    pharmacy: Any = None
    pharmacy_location: str = ""
    medication: str = ""
    stock_item: str = ""
    prescription: str = ""
    dispense: str = ""
    # The lab side: the stub, the laboratory's copy of an order of the patient performed by
    # DEPARTMENT_A and requested by PRACTITIONER, its specimen, its released report, and the
    # report's critical result.
    lab: Any = None
    lab_order: str = ""
    specimen: str = ""
    report: str = ""
    critical: str = ""
    # The billing side (tests/security/billing_records.py): the stub, a charge of the patient, an
    # issued invoice of another charge, and a payment of it.
    billing: Any = None
    charge_item: str = ""
    invoice: str = ""
    payment: str = ""

    def stub(self, service: str) -> object:
        """The stub of one of the session's services (by short name)."""
        stubs = {
            "patient": self.patients,
            "scheduling": self.scheduling,
            "audit": self.audit,
            "iam": self.iam,
            "emr": self.emr,
            "orders": self.orders,
            "pharmacy": self.pharmacy,
            "lab": self.lab,
            "billing": self.billing,
        }
        return stubs[service]

    async def fresh_encounter(self) -> str:
        """A new ARRIVED outpatient encounter of the world's patient in DEPARTMENT_A attended by
        PRACTITIONER. Written behind emr's back: CreateEncounter would ask iam about the
        department and practitioner, which exist only in the callers' tokens."""
        encounter_id = uuid.uuid4()
        engine = create_async_engine(async_url(self.database_url), poolclass=NullPool)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "INSERT INTO emr.encounters (id, patient_id, encounter_class, status, "
                        "department_id, practitioner_id) VALUES (:id, :patient, 'ambulatory', "
                        "'arrived', :department, :practitioner)"
                    ),
                    {
                        "id": encounter_id,
                        "patient": self.patient.removeprefix("patients/"),
                        "department": DEPARTMENT_A.removeprefix("departments/"),
                        "practitioner": PRACTITIONER_ID,
                    },
                )
        finally:
            await engine.dispose()
        return f"encounters/{encounter_id}"

    async def fresh_signed_note(self) -> str:
        """A new signed note of the world's encounter, written by NOTE_AUTHOR."""
        author = NOTE_AUTHOR.metadata
        draft = await self.emr.CreateNote(
            emr_pb.CreateNoteRequest(
                parent=self.encounter,
                note=emr_pb.ClinicalNote(
                    note_type=types_pb2.Coding(system="http://loinc.org", code="11506-3"),
                    text="Seen in clinic; stable.",
                ),
            ),
            metadata=author,
        )
        await self.emr.SignNote(emr_pb.SignNoteRequest(name=draft.name), metadata=author)
        return str(draft.name)

    def spare_slot(self) -> str:
        """A free slot of the world's schedule nobody else will use."""
        return self.spare_slots.pop()

    async def fresh_patient(self) -> str:
        """A new active patient."""
        created = await self.patients.CreatePatient(
            patient_pb.CreatePatientRequest(patient=make_patient())
        )
        return str(created.name)

    async def fresh_appointment(self) -> str:
        """A new booked appointment of the world's patient in a spare slot (same facts)."""
        booked = await self.scheduling.BookAppointment(
            pb.BookAppointmentRequest(patient=self.patient, slot=self.spare_slot())
        )
        return str(booked.name)

    async def fresh_consent(self) -> str:
        """A new active treatment consent of the world's patient."""
        granted = await self.patients.GrantConsent(grant_request(self.patient))
        return str(granted.name)

    async def fresh_staff(self) -> str:
        """A new active staff member of the session's iam (a doctor), made by an administrator."""
        made = await self.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(staff_member=make_staff())
        )
        return str(made.name)

    async def fresh_access_change(self) -> str:
        """A new pending access change (a new staff member's roles), proposed by the session's
        administrator, so any other administrator may decide it."""
        made = await self.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(staff_member=make_staff())
        )
        return str(made.pending_access_change)

    async def fresh_membership(self) -> str:
        """A new current membership of a new staff member in the world's department."""
        added = await self.iam.AddMembership(
            iam_pb.AddMembershipRequest(
                parent=await self.fresh_staff(),
                membership=iam_pb.DepartmentMembership(department=self.department),
            )
        )
        return str(added.name)

    async def enrolled(self, caller: Caller) -> Caller:
        """The same caller (roles, departments) as an active staff member of the session's iam,
        for rpcs that also ask whether the caller is one; a service caller stays as it is."""
        if not caller.subject.startswith("staff/"):
            return caller
        roles = [iam_pb.StaffRole.Value(f"STAFF_ROLE_{role}") for role in caller.roles]
        made = await self.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(staff_member=make_staff(*roles))
        )
        return _staff(
            caller.label,
            caller.roles[0],
            caller.departments,
            staff_id=made.name.removeprefix("staff/"),
        )

    async def fresh_grant(self) -> str:
        """A new active break-the-glass grant of a new doctor for a new patient."""
        doctor = await self.enrolled(CALLERS["DOCTOR"])
        made = await self.iam.CreateEmergencyAccessGrant(
            iam_pb.CreateEmergencyAccessGrantRequest(
                emergency_access_grant=iam_pb.EmergencyAccessGrant(
                    patient=await self.fresh_patient(),
                    reason="Unconscious on arrival; allergy history needed before treatment",
                ),
                duration=Duration(seconds=3600),
            ),
            metadata=doctor.metadata,
        )
        return str(made.name)

    async def held_grant(self) -> str:
        """The world's grant: an active grant none of the matrix's callers holds (made once)."""
        if not self.grant:
            self.grant = await self.fresh_grant()
        return self.grant

    async def merged_duplicate(self) -> str:
        """A duplicate patient merged into a new survivor."""
        duplicate, survivor = await self.fresh_patient(), await self.fresh_patient()
        await self.patients.MergePatients(
            patient_pb.MergePatientsRequest(
                name=duplicate, survivor=survivor, reason="registered twice at the front desk"
            )
        )
        return duplicate


# --- outcomes ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a call answered: the reply, or the failure."""

    reply: Any = None
    failure: RpcFailure | None = None

    @property
    def code(self) -> grpc.StatusCode:
        """OK, or the failure's code."""
        return grpc.StatusCode.OK if self.failure is None else self.failure.code

    @property
    def reason(self) -> str | None:
        """The ErrorInfo reason of a failure."""
        return None if self.failure is None else self.failure.reason

    def __str__(self) -> str:
        if self.failure is None:
            return "OK"
        return f"{self.failure.code.name} {self.failure.reason} ({self.failure.message})"


async def outcome(call: Awaitable[Any]) -> Outcome:
    """Await a call; its reply or its failure, whichever it was."""
    try:
        return Outcome(reply=await call)
    except grpc.aio.AioRpcError as error:
        return Outcome(failure=failure_of(error))


# --- the policy -------------------------------------------------------------------------------


def decided(policy: PolicyEngine, served: PolicyEngine, request: Request) -> Decision:
    """The policy's decision on `request`, checked to be the same cached and uncached.

    `policy` is an engine of the test's own; `served` the one the servers in this process share,
    whose cache the calls under test have filled.
    """
    evaluated = policy.evaluate(request)
    assert policy.decide(request) == evaluated, request
    assert policy.decide(request) == evaluated, request
    assert served.decide(request) == evaluated, request
    assert served.evaluate(request) == evaluated, request
    return evaluated


# --- audit ------------------------------------------------------------------------------------


async def audit_events(
    auditor: Audit, *, patient: str, agent_staff: str = "", emergency_only: bool = False
) -> list[audit_pb.AuditEvent]:
    """Every event of the session's trail about `patient` (and by `agent_staff`), oldest first,
    once the session's relays delivered what was recorded before."""
    await delivered()
    found: list[audit_pb.AuditEvent] = []
    token = ""
    while True:
        reply = await auditor.ListAuditEvents(
            audit_pb.ListAuditEventsRequest(
                patient=patient,
                agent_staff=agent_staff,
                emergency_access_only=emergency_only,
                page_size=500,
                page_token=token,
            )
        )
        found.extend(reply.audit_events)
        token = reply.next_page_token
        if not token:
            return found


def operation(service: str, method: str) -> str:
    """The full gRPC method name an audit event records as its operation."""
    return f"his.{service}.v1.{service.capitalize()}Service/{method}"


def names(messages: Iterable[Message]) -> list[str]:
    """The `name` of each message."""
    return [getattr(message, "name") for message in messages]  # noqa: B009


def utc(stamp: Any) -> dt.datetime:
    """An aware datetime of a protobuf Timestamp."""
    return stamp.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


# --- records ----------------------------------------------------------------------------------


async def booked_in(patients: Patients, scheduling: Scheduling, department: str) -> tuple[str, str]:
    """A new patient booked (by the session's registrar) into a new slot of `department`.

    Returns the patient's and the appointment's resource names.
    """
    made = await future_slots(scheduling, schedule=make_schedule(department_name=department))
    patient = await active_patient(patients)
    booked = await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=patient, slot=made.slot.name)
    )
    return patient, str(booked.name)


def department() -> str:
    """A department name no other test uses."""
    return missing("departments")
