"""Factories of the emr tests: a clinic of real iam departments and staff, with their tokens.

CreateEncounter asks iam whether the department and the attending practitioner exist, so the
clinic's departments and clinicians are created in the session's iam; each clinician's token names
their real staff id and departments.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from tests.iam.helpers import make_department, make_staff
from tests.identity import ISSUER, metadata
from tests.scheduling.helpers import make_patient

if TYPE_CHECKING:
    from his.emr.v1.emr_service_pb2_grpc import EmrServiceAsyncStub
    from his.iam.v1.iam_service_pb2_grpc import IamServiceAsyncStub
    from his.patient.v1.patient_service_pb2_grpc import PatientServiceAsyncStub

    Emr: TypeAlias = EmrServiceAsyncStub
    Iam: TypeAlias = IamServiceAsyncStub
    Patients: TypeAlias = PatientServiceAsyncStub
else:
    Emr = Iam = Patients = Any

DOMAIN = "emr.his"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
PROGRESS_NOTE = types_pb2.Coding(system=LOINC, code="11506-3", display="Progress note")
ADMINISTRATOR = ISSUER.staff("ADMINISTRATOR")
_counter = itertools.count(1)


def request_id() -> str:
    """A fresh idempotency key."""
    return f"emr-{next(_counter)}-{uuid.uuid4().hex}"


def missing(collection: str) -> str:
    """A well-formed name of a resource that does not exist."""
    return f"{collection}/{uuid.uuid4()}"


@dataclass(frozen=True)
class Clinician:
    """A staff member of the session's iam and the token they call with."""

    name: str
    token: str
    departments: tuple[str, ...]

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        """Call metadata that makes a call as this clinician."""
        return metadata(self.token)


@dataclass
class Clinic:
    """Two outpatient clinics, a surgical ward, and clinicians of each."""

    iam: Iam
    clinic: str = ""
    other_clinic: str = ""
    surgical_ward: str = ""
    doctor: Clinician | None = None
    colleague: Clinician | None = None
    nurse: Clinician | None = None
    other_doctor: Clinician | None = None
    ward_doctor: Clinician | None = None

    async def department(self, kind: int = iam_pb.DEPARTMENT_KIND_OUTPATIENT) -> str:
        """A new department of the session's iam."""
        made = await self.iam.CreateDepartment(
            iam_pb.CreateDepartmentRequest(department=make_department(kind))  # type: ignore[arg-type]
        )
        return str(made.name)

    async def clinician(self, role: str, *departments: str) -> Clinician:
        """A new active staff member with `role`, working in `departments`."""
        made = await self.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(
                staff_member=make_staff(iam_pb.StaffRole.Value(f"STAFF_ROLE_{role}"))
            )
        )
        token = ISSUER.staff(
            role, departments=departments, staff_id=made.name.removeprefix("staff/")
        )
        return Clinician(made.name, token, departments)

    async def build(self) -> Clinic:
        """Create the departments and clinicians."""
        self.clinic = await self.department()
        self.other_clinic = await self.department()
        self.surgical_ward = await self.department(iam_pb.DEPARTMENT_KIND_SURGERY)
        self.doctor = await self.clinician("DOCTOR", self.clinic)
        self.colleague = await self.clinician("DOCTOR", self.clinic)
        self.nurse = await self.clinician("NURSE", self.clinic)
        self.other_doctor = await self.clinician("DOCTOR", self.other_clinic)
        self.ward_doctor = await self.clinician("DOCTOR", self.surgical_ward)
        return self


async def new_patient(patients: Patients) -> str:
    """A new active patient (made by the session's registrar)."""
    made = await patients.CreatePatient(patient_pb.CreatePatientRequest(patient=make_patient()))
    return str(made.name)


def encounter(
    patient: str,
    department: str,
    attending: str = "",
    *,
    encounter_class: int = pb.ENCOUNTER_CLASS_AMBULATORY,
    status: int = pb.ENCOUNTER_STATUS_ARRIVED,
    sensitive: bool = False,
    surgical: bool = False,
    appointment: str = "",
) -> pb.Encounter:
    """An Encounter for CreateEncounter."""
    return pb.Encounter(
        patient=patient,
        department=department,
        attending_practitioner=attending,
        encounter_class=encounter_class,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        sensitive=sensitive,
        surgical=surgical,
        appointment=appointment,
    )


def note(text: str, code: types_pb2.Coding = PROGRESS_NOTE) -> pb.ClinicalNote:
    """A ClinicalNote for CreateNote."""
    return pb.ClinicalNote(note_type=code, text=text)


def diagnosis(
    code: str,
    *,
    rank: int = 2,
    clinical: int = pb.CONDITION_CLINICAL_STATUS_ACTIVE,
    verification: int = pb.CONDITION_VERIFICATION_STATUS_CONFIRMED,
    system: str = ICD10,
) -> pb.Diagnosis:
    """A Diagnosis for AddDiagnosis."""
    return pb.Diagnosis(
        code=types_pb2.Coding(system=system, code=code),
        clinical_status=clinical,  # type: ignore[arg-type]
        verification_status=verification,  # type: ignore[arg-type]
        rank=rank,
    )


async def open_encounter(
    emr: Emr, by: Clinician, patient: str, department: str, **kw: Any
) -> pb.Encounter:
    """A new encounter opened by `by` (the attending practitioner unless `attending` is given)."""
    attending = kw.pop("attending", by.name)
    return await emr.CreateEncounter(
        pb.CreateEncounterRequest(encounter=encounter(patient, department, attending, **kw)),
        metadata=by.md,
    )
