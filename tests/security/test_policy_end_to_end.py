"""The policy decides every rpc of the running services, for every role, before existence.

For each rpc of every implemented service (his.base.catalog.implemented(); a guard fails when
one is missing) and each caller (every role, a service acting on its own, and clinicians related
to the appointment by department or as its practitioner), the test computes what the policy says
for exactly the attributes the servicer asks about (role, action, resource class, department
match, care, consent, own, fields) and calls the real server with that caller's token:

- allowed: the call does not fail with PERMISSION_DENIED; it succeeds, or fails for the one
  non-authorization reason expected of the request (an illegal transition, say);
- denied: PERMISSION_DENIED with the policy's reason in ErrorInfo;
- a record that does not exist is decided with the least favourable facts: the same refusal as for
  an existing record when that denies (no existence leak), NOT_FOUND when it allows;
- lists leave out the records the caller may not see instead of refusing;
- an rpc the servicer does not implement fails its every case (UNIMPLEMENTED is never expected).

The public rpcs (iam's IssueToken, GetJwks and patient sign-in, the identity provider's doors) are
never asked of the policy: anyone, with any token or none, gets their answer.

Every decision is also checked to be the same cached (`decide`, twice, on the tests' engine and on
the servers' shared one) and uncached (`evaluate`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pyotp
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.base.catalog import BY_NAME, ServiceEntry, implemented
from his.billing.v1 import billing_service_pb2 as billing_pb
from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.lab.v1 import lab_service_pb2 as lab_pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.authn import PUBLIC_METHODS
from his.runtime.outbox import envelope
from his.runtime.policy import PolicyEngine, Request
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.audit.helpers import make_event
from tests.iam.helpers import make_department, make_staff
from tests.identity import ISSUER, metadata
from tests.lab.helpers import changed as lab_changed
from tests.lab.helpers import order as lab_order
from tests.patient.helpers import grant_request, unique_phone
from tests.patient.helpers import make_patient as make_full_patient
from tests.scheduling.helpers import generate_request, make_schedule
from tests.security import billing_records, orders_records, pharmacy_records
from tests.security.helpers import (
    CALLERS,
    DEPARTMENT_A,
    PRACTITIONER,
    RELATED_CALLERS,
    ROLE_CALLERS,
    Caller,
    World,
    decided,
    missing,
    names,
    outcome,
)

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
# A caller of the public rpcs with no token at all.
ANONYMOUS = "ANONYMOUS"

# Builds the request of one call: on the world's records, or (allowed=True) on fresh ones when
# the call would change what other cases read.
Build = Callable[[World, bool], Awaitable[Message]]
# Builds the request of one call naming a record that does not exist.
Missing = Callable[[World], Message]


@dataclass(frozen=True)
class Rpc:
    """One rpc, the policy question its servicer asks, and how to call it."""

    service: str
    method: str
    action: str
    resource: str
    build: Build
    missing: Missing | None = None
    fields: tuple[str, ...] = ()
    # Decided from the appointment's (or its slot's) facts rather than from the caller alone.
    by_record: bool = False
    # Filters what the caller may not see out of the page instead of refusing.
    listed: bool = False
    # When set, only callers with one of these roles get the filtered page; the others are
    # refused as for a single record (patients: only clinicians list by care relationship).
    list_roles: tuple[str, ...] = ()
    # What an allowed caller gets on the existing record.
    allowed: grpc.StatusCode = OK
    # The servicer refuses anyone but a HIS service before it asks the policy.
    services_only: bool = False
    # What the servicer tells the policy about ownership (the caller's own grant, say).
    own: bool = False
    # The servicer also asks iam whether the caller is an active staff member: each staff caller
    # is made one first (same roles and departments), so only the policy can refuse them.
    enrolled: bool = False
    # What an allowed caller gets when it depends on who calls (overrides `allowed`).
    expect: Callable[[Caller], grpc.StatusCode] | None = None
    # For a listed rpc: the reply's repeated field and the world's record it must show.
    items: str = "appointments"
    shows: Callable[[World], str] | None = None

    @property
    def id(self) -> str:
        return f"{self.service}.{self.method}"


def _const(message: Message) -> Build:
    """The same request whoever calls."""
    return _on(lambda world: message)


def _on(make: Missing) -> Build:
    """A request on the world's records whoever calls (for calls that change nothing)."""

    async def build(world: World, allowed: bool) -> Message:
        return make(world)

    return build


# --- patient ----------------------------------------------------------------------------------


async def _get_patient(world: World, allowed: bool) -> Message:
    return patient_pb.GetPatientRequest(name=world.patient)


async def _list_patients(world: World, allowed: bool) -> Message:
    # The world's patient by family name (looked up by the registrar), so the page holds them.
    found = await world.patients.GetPatient(patient_pb.GetPatientRequest(name=world.patient))
    return patient_pb.ListPatientsRequest(name_prefix=found.family_name, page_size=500)


async def _create_patient(world: World, allowed: bool) -> Message:
    return patient_pb.CreatePatientRequest(patient=make_full_patient())


async def _update_patient(world: World, allowed: bool) -> Message:
    return patient_pb.UpdatePatientRequest(
        patient=patient_pb.Patient(name=world.patient, phone=unique_phone()),
        update_mask=FieldMask(paths=["phone"]),
    )


def _update_missing(world: World) -> Message:
    return patient_pb.UpdatePatientRequest(
        patient=patient_pb.Patient(name=missing("patients"), phone=unique_phone()),
        update_mask=FieldMask(paths=["phone"]),
    )


async def _deactivate(world: World, allowed: bool) -> Message:
    name = await world.fresh_patient() if allowed else world.patient
    return patient_pb.DeactivatePatientRequest(name=name)


async def _reactivate(world: World, allowed: bool) -> Message:
    # The world's patient is active: reactivating it succeeds and changes nothing.
    return patient_pb.ReactivatePatientRequest(name=world.patient)


async def _merge(world: World, allowed: bool) -> Message:
    if allowed:
        duplicate, survivor = await world.fresh_patient(), await world.fresh_patient()
    else:
        duplicate, survivor = world.other_patient, world.patient
    return patient_pb.MergePatientsRequest(
        name=duplicate, survivor=survivor, reason="registered twice at the front desk"
    )


def _merge_missing(world: World) -> Message:
    return patient_pb.MergePatientsRequest(
        name=missing("patients"), survivor=missing("patients"), reason="registered twice"
    )


async def _unmerge(world: World, allowed: bool) -> Message:
    name = await world.merged_duplicate() if allowed else world.patient
    return patient_pb.UnmergePatientRequest(name=name, reason="not the same person after all")


async def _grant_consent(world: World, allowed: bool) -> Message:
    return grant_request(world.patient)


async def _revoke_consent(world: World, allowed: bool) -> Message:
    name = await world.fresh_consent() if allowed else world.consent
    return patient_pb.RevokeConsentRequest(name=name)


def _consent_missing(world: World) -> str:
    return f"{missing('patients')}/{missing('consents')}"


PATIENT_RPCS = (
    # Demographics: the registration desk reads anyone; a clinician needs a care relationship
    # (the world's appointment, in DEPARTMENT_A with PRACTITIONER, as scheduling's events told
    # the patient service) and lists only the related patients.
    Rpc(
        "patient",
        "GetPatient",
        "read",
        "patient.demographics",
        _get_patient,
        lambda w: patient_pb.GetPatientRequest(name=missing("patients")),
        by_record=True,
    ),
    Rpc(
        "patient",
        "ListPatients",
        "read",
        "patient.demographics",
        _list_patients,
        by_record=True,
        listed=True,
        list_roles=("DOCTOR", "NURSE"),
        items="patients",
        shows=lambda w: w.patient,
    ),
    Rpc("patient", "CreatePatient", "create", "patient.demographics", _create_patient),
    Rpc(
        "patient",
        "UpdatePatient",
        "update",
        "patient.demographics",
        _update_patient,
        _update_missing,
        fields=("phone",),
    ),
    Rpc(
        "patient",
        "DeactivatePatient",
        "update",
        "patient.demographics",
        _deactivate,
        lambda w: patient_pb.DeactivatePatientRequest(name=missing("patients")),
        fields=("state",),
    ),
    Rpc(
        "patient",
        "ReactivatePatient",
        "update",
        "patient.demographics",
        _reactivate,
        lambda w: patient_pb.ReactivatePatientRequest(name=missing("patients")),
        fields=("state",),
    ),
    Rpc("patient", "MergePatients", "merge", "patient.demographics", _merge, _merge_missing),
    Rpc(
        "patient",
        "UnmergePatient",
        "merge",
        "patient.demographics",
        _unmerge,
        lambda w: patient_pb.UnmergePatientRequest(name=missing("patients"), reason="mistake"),
    ),
    Rpc(
        "patient",
        "GrantConsent",
        "create",
        "patient.consent",
        _grant_consent,
        lambda w: grant_request(missing("patients")),
    ),
    Rpc(
        "patient",
        "RevokeConsent",
        "update",
        "patient.consent",
        _revoke_consent,
        lambda w: patient_pb.RevokeConsentRequest(name=_consent_missing(w)),
        fields=("status",),
    ),
    Rpc(
        "patient",
        "GetConsent",
        "read",
        "patient.consent",
        _on(lambda w: patient_pb.GetConsentRequest(name=w.consent)),
        lambda w: patient_pb.GetConsentRequest(name=_consent_missing(w)),
    ),
    Rpc(
        "patient",
        "ListConsents",
        "read",
        "patient.consent",
        _on(lambda w: patient_pb.ListConsentsRequest(parent=w.patient)),
        lambda w: patient_pb.ListConsentsRequest(parent=missing("patients")),
    ),
    Rpc(
        "patient",
        "ListResearchPatients",
        "execute",
        "research.export",
        _const(patient_pb.ListResearchPatientsRequest(page_size=1)),
    ),
)


# --- scheduling -------------------------------------------------------------------------------


async def _generate(world: World, allowed: bool) -> Message:
    parent = world.schedule
    if allowed:
        made = await world.scheduling.CreateSchedule(
            pb.CreateScheduleRequest(schedule=make_schedule())
        )
        parent = made.name
    return generate_request(parent)


async def _block(world: World, allowed: bool) -> Message:
    name = world.spare_slot() if allowed else world.slot
    return pb.BlockSlotRequest(name=name, reason="practitioner on leave")


async def _unblock(world: World, allowed: bool) -> Message:
    name = world.spare_slot() if allowed else world.slot
    return pb.UnblockSlotRequest(name=name)


async def _book(world: World, allowed: bool) -> Message:
    return pb.BookAppointmentRequest(patient=world.patient, slot=world.spare_slot())


async def _appointment(world: World, allowed: bool) -> str:
    return await world.fresh_appointment() if allowed else world.appointment


async def _cancel(world: World, allowed: bool) -> Message:
    return pb.CancelAppointmentRequest(name=await _appointment(world, allowed), reason="unwell")


async def _check_in(world: World, allowed: bool) -> Message:
    return pb.CheckInAppointmentRequest(name=await _appointment(world, allowed))


async def _no_show(world: World, allowed: bool) -> Message:
    return pb.MarkNoShowRequest(name=await _appointment(world, allowed))


async def _complete(world: World, allowed: bool) -> Message:
    return pb.CompleteAppointmentRequest(name=await _appointment(world, allowed))


def _transition(
    method: str,
    build: Build,
    missing_request: Missing,
    allowed: grpc.StatusCode,
    fields: tuple[str, ...] = ("status",),
) -> Rpc:
    return Rpc(
        "scheduling",
        method,
        "update",
        "scheduling.appointment",
        build,
        missing_request,
        fields=fields,
        by_record=True,
        allowed=allowed,
    )


SCHEDULING_RPCS = (
    Rpc(
        "scheduling",
        "CreateSchedule",
        "create",
        "scheduling.schedule",
        _on(lambda w: pb.CreateScheduleRequest(schedule=make_schedule())),
    ),
    Rpc(
        "scheduling",
        "GetSchedule",
        "read",
        "scheduling.schedule",
        _on(lambda w: pb.GetScheduleRequest(name=w.schedule)),
        lambda w: pb.GetScheduleRequest(name=missing("schedules")),
    ),
    Rpc(
        "scheduling",
        "ListSchedules",
        "read",
        "scheduling.schedule",
        _on(lambda w: pb.ListSchedulesRequest(department=DEPARTMENT_A)),
    ),
    Rpc(
        "scheduling",
        "GenerateSlots",
        "create",
        "scheduling.slot",
        _generate,
        lambda w: generate_request(missing("schedules")),
    ),
    Rpc(
        "scheduling",
        "GetSlot",
        "read",
        "scheduling.slot",
        _on(lambda w: pb.GetSlotRequest(name=w.slot)),
        lambda w: pb.GetSlotRequest(name=missing("slots")),
    ),
    Rpc(
        "scheduling",
        "ListSlots",
        "read",
        "scheduling.slot",
        _on(lambda w: pb.ListSlotsRequest(schedule=w.schedule, page_size=1)),
    ),
    Rpc(
        "scheduling",
        "BlockSlot",
        "update",
        "scheduling.slot",
        _block,
        lambda w: pb.BlockSlotRequest(name=missing("slots"), reason="practitioner on leave"),
        fields=("block_reason",),
    ),
    Rpc(
        "scheduling",
        "UnblockSlot",
        "update",
        "scheduling.slot",
        _unblock,
        lambda w: pb.UnblockSlotRequest(name=missing("slots")),
        fields=("block_reason",),
    ),
    Rpc(
        "scheduling",
        "BookAppointment",
        "create",
        "scheduling.appointment",
        _book,
        lambda w: pb.BookAppointmentRequest(patient=w.patient, slot=missing("slots")),
        by_record=True,
    ),
    Rpc(
        "scheduling",
        "GetAppointment",
        "read",
        "scheduling.appointment",
        _on(lambda w: pb.GetAppointmentRequest(name=w.appointment)),
        lambda w: pb.GetAppointmentRequest(name=missing("appointments")),
        by_record=True,
    ),
    Rpc(
        "scheduling",
        "ListAppointments",
        "read",
        "scheduling.appointment",
        _on(lambda w: pb.ListAppointmentsRequest(patient=w.patient, page_size=500)),
        by_record=True,
        listed=True,
    ),
    _transition(
        "CancelAppointment",
        _cancel,
        lambda w: pb.CancelAppointmentRequest(name=missing("appointments"), reason="unwell"),
        OK,
        # A cancellation also sets its reason: what tells it from the desk's other transitions.
        fields=("status", "cancel_reason"),
    ),
    _transition(
        "CheckInAppointment",
        _check_in,
        lambda w: pb.CheckInAppointmentRequest(name=missing("appointments")),
        OK,
    ),
    # The slot is tomorrow: an allowed caller hears SLOT_NOT_STARTED.
    _transition(
        "MarkNoShow",
        _no_show,
        lambda w: pb.MarkNoShowRequest(name=missing("appointments")),
        FAILED_PRECONDITION,
    ),
    # A booked appointment must arrive first: an allowed caller hears ILLEGAL_TRANSITION.
    _transition(
        "CompleteAppointment",
        _complete,
        lambda w: pb.CompleteAppointmentRequest(name=missing("appointments")),
        FAILED_PRECONDITION,
    ),
    Rpc(
        "scheduling",
        "ListResearchAppointments",
        "execute",
        "research.export",
        _const(pb.ListResearchAppointmentsRequest(page_size=1)),
    ),
)


# --- emr ------------------------------------------------------------------------------------
_ICD10 = "http://hl7.org/fhir/sid/icd-10"
_codes = iter(f"Z{a}{b}.{c}" for a in range(10) for b in range(10) for c in range(10))


def _new_encounter(world: World) -> emr_pb.Encounter:
    return emr_pb.Encounter(
        patient=world.patient,
        department=DEPARTMENT_A,
        attending_practitioner=PRACTITIONER,
        encounter_class=emr_pb.ENCOUNTER_CLASS_AMBULATORY,
        status=emr_pb.ENCOUNTER_STATUS_ARRIVED,
    )


async def _encounter(world: World, allowed: bool) -> str:
    return await world.fresh_encounter() if allowed else world.encounter


def _emr_transition(method: str, make: Callable[[str], Message], allowed: grpc.StatusCode) -> Rpc:
    async def build(world: World, fresh: bool) -> Message:
        return make(await _encounter(world, fresh))

    return Rpc(
        "emr",
        method,
        "update",
        "emr.encounter",
        build,
        lambda w: make(missing("encounters")),
        fields=("status",),
        by_record=True,
        allowed=allowed,
    )


def _diagnosis(code: str) -> emr_pb.Diagnosis:
    return emr_pb.Diagnosis(
        code=types_pb2.Coding(system=_ICD10, code=code),
        clinical_status=emr_pb.CONDITION_CLINICAL_STATUS_ACTIVE,
        verification_status=emr_pb.CONDITION_VERIFICATION_STATUS_CONFIRMED,
        rank=2,
    )


def _note_text(parent: str) -> emr_pb.CreateNoteRequest:
    return emr_pb.CreateNoteRequest(
        parent=parent,
        note=emr_pb.ClinicalNote(
            note_type=types_pb2.Coding(system="http://loinc.org", code="11506-3"), text="Seen."
        ),
    )


async def _amend(world: World, allowed: bool) -> Message:
    name = await world.fresh_signed_note() if allowed else world.note
    return emr_pb.AmendNoteRequest(name=name, text="Seen; stable.", reason="wording")


def _missing_note() -> str:
    return f"{missing('encounters')}/notes/{uuid.uuid4()}"


def _missing_diagnosis() -> str:
    return f"{missing('encounters')}/diagnoses/{uuid.uuid4()}"


EMR_RPCS = (
    # A service other than scheduling is refused by the servicer; the department and practitioner
    # of the matrix exist only in tokens, so an allowed clinician hears DEPARTMENT_NOT_FOUND.
    Rpc(
        "emr",
        "CreateEncounter",
        "create",
        "emr.encounter",
        _on(lambda w: emr_pb.CreateEncounterRequest(encounter=_new_encounter(w))),
        by_record=True,
        expect=lambda c: DENIED if c.roles == ("SERVICE",) else FAILED_PRECONDITION,
    ),
    Rpc(
        "emr",
        "GetEncounter",
        "read",
        "emr.encounter",
        _on(lambda w: emr_pb.GetEncounterRequest(name=w.encounter)),
        lambda w: emr_pb.GetEncounterRequest(name=missing("encounters")),
        by_record=True,
    ),
    Rpc(
        "emr",
        "ListEncounters",
        "read",
        "emr.encounter",
        _on(lambda w: emr_pb.ListEncountersRequest(patient=w.patient, page_size=500)),
        by_record=True,
        listed=True,
        items="encounters",
        shows=lambda w: w.encounter,
    ),
    Rpc(
        "emr",
        "UpdateEncounter",
        "update",
        "emr.encounter",
        _on(
            lambda w: emr_pb.UpdateEncounterRequest(
                encounter=emr_pb.Encounter(name=w.encounter, sensitive=False),
                update_mask=FieldMask(paths=["sensitive"]),
            )
        ),
        lambda w: emr_pb.UpdateEncounterRequest(
            encounter=emr_pb.Encounter(name=missing("encounters")),
            update_mask=FieldMask(paths=["sensitive"]),
        ),
        fields=("sensitive",),
        by_record=True,
    ),
    _emr_transition("StartEncounter", lambda n: emr_pb.StartEncounterRequest(name=n), OK),
    # A fresh encounter has not started: an allowed caller hears ILLEGAL_TRANSITION.
    _emr_transition(
        "FinishEncounter", lambda n: emr_pb.FinishEncounterRequest(name=n), FAILED_PRECONDITION
    ),
    _emr_transition(
        "CancelEncounter",
        lambda n: emr_pb.CancelEncounterRequest(name=n, reason="left before seen"),
        OK,
    ),
    _emr_transition(
        "MarkEncounterEnteredInError",
        lambda n: emr_pb.MarkEncounterEnteredInErrorRequest(name=n, reason="wrong patient"),
        OK,
    ),
    Rpc(
        "emr",
        "CreateNote",
        "create",
        "emr.note",
        _on(lambda w: _note_text(w.encounter)),
        lambda w: _note_text(missing("encounters")),
        by_record=True,
    ),
    Rpc(
        "emr",
        "GetNote",
        "read",
        "emr.note",
        _on(lambda w: emr_pb.GetNoteRequest(name=w.note)),
        lambda w: emr_pb.GetNoteRequest(name=_missing_note()),
        by_record=True,
    ),
    Rpc(
        "emr",
        "ListNotes",
        "read",
        "emr.note",
        _on(lambda w: emr_pb.ListNotesRequest(parent=w.encounter)),
        lambda w: emr_pb.ListNotesRequest(parent=missing("encounters")),
        by_record=True,
    ),
    Rpc(
        "emr",
        "ListNoteVersions",
        "read",
        "emr.note",
        _on(lambda w: emr_pb.ListNoteVersionsRequest(name=w.note)),
        lambda w: emr_pb.ListNoteVersionsRequest(name=_missing_note()),
        by_record=True,
    ),
    # Only a note's author changes or signs it, and NOTE_AUTHOR is none of the matrix's callers:
    # a caller the policy allows hears NOT_AUTHOR from the servicer.
    Rpc(
        "emr",
        "UpdateNote",
        "update",
        "emr.note",
        _on(
            lambda w: emr_pb.UpdateNoteRequest(
                note=emr_pb.ClinicalNote(name=w.note, text="rewritten"),
                update_mask=FieldMask(paths=["text"]),
            )
        ),
        lambda w: emr_pb.UpdateNoteRequest(
            note=emr_pb.ClinicalNote(name=_missing_note(), text="rewritten"),
            update_mask=FieldMask(paths=["text"]),
        ),
        fields=("text",),
        by_record=True,
        allowed=DENIED,
    ),
    Rpc(
        "emr",
        "SignNote",
        "update",
        "emr.note",
        _on(lambda w: emr_pb.SignNoteRequest(name=w.note)),
        lambda w: emr_pb.SignNoteRequest(name=_missing_note()),
        fields=("status",),
        by_record=True,
        allowed=DENIED,
    ),
    # The original's author or the encounter's attending practitioner (PRACTITIONER) amends.
    Rpc(
        "emr",
        "AmendNote",
        "create",
        "emr.note",
        _amend,
        lambda w: emr_pb.AmendNoteRequest(name=_missing_note(), text="x", reason="y"),
        by_record=True,
        expect=lambda c: OK if c.subject == PRACTITIONER else DENIED,
    ),
    Rpc(
        "emr",
        "AddDiagnosis",
        "create",
        "emr.diagnosis",
        _on(
            lambda w: emr_pb.AddDiagnosisRequest(
                parent=w.encounter, diagnosis=_diagnosis(next(_codes))
            )
        ),
        lambda w: emr_pb.AddDiagnosisRequest(
            parent=missing("encounters"), diagnosis=_diagnosis("Z00.0")
        ),
        by_record=True,
    ),
    Rpc(
        "emr",
        "GetDiagnosis",
        "read",
        "emr.diagnosis",
        _on(lambda w: emr_pb.GetDiagnosisRequest(name=w.diagnosis)),
        lambda w: emr_pb.GetDiagnosisRequest(name=_missing_diagnosis()),
        by_record=True,
    ),
    Rpc(
        "emr",
        "ListDiagnoses",
        "read",
        "emr.diagnosis",
        _on(lambda w: emr_pb.ListDiagnosesRequest(parent=w.encounter)),
        lambda w: emr_pb.ListDiagnosesRequest(parent=missing("encounters")),
        by_record=True,
    ),
    Rpc(
        "emr",
        "UpdateDiagnosis",
        "update",
        "emr.diagnosis",
        _on(
            lambda w: emr_pb.UpdateDiagnosisRequest(
                diagnosis=emr_pb.Diagnosis(
                    name=w.diagnosis, clinical_status=emr_pb.CONDITION_CLINICAL_STATUS_ACTIVE
                ),
                update_mask=FieldMask(paths=["clinical_status"]),
            )
        ),
        lambda w: emr_pb.UpdateDiagnosisRequest(
            diagnosis=emr_pb.Diagnosis(
                name=_missing_diagnosis(), clinical_status=emr_pb.CONDITION_CLINICAL_STATUS_ACTIVE
            ),
            update_mask=FieldMask(paths=["clinical_status"]),
        ),
        fields=("clinical_status",),
        by_record=True,
    ),
)


# --- orders ---------------------------------------------------------------------------------

_GLUCOSE = types_pb2.Coding(system="http://loinc.org", code="2345-7")


def _lab_order(world: World) -> orders_pb.ServiceRequest:
    return orders_pb.ServiceRequest(
        patient=world.patient,
        encounter=world.encounter,
        code=_GLUCOSE,
        priority=orders_pb.REQUEST_PRIORITY_ROUTINE,
        performer=DEPARTMENT_A,
    )


def _prescription(world: World) -> orders_pb.MedicationRequest:
    return orders_pb.MedicationRequest(
        patient=world.patient,
        encounter=world.finished_encounter,
        medication=missing("medications"),
        dosage=orders_pb.Dosage(
            dose=types_pb2.Quantity(value=500, unit="mg"),
            route=types_pb2.Coding(system="http://snomed.info/sct", code="26643006"),
            frequency_per_day=3,
            duration_days=5,
        ),
        dispense_quantity=types_pb2.Quantity(value=15, unit="{tablet}"),
    )


def _order_change(
    method: str,
    resource: str,
    make: Callable[[str], Message],
    *,
    allowed: grpc.StatusCode = OK,
    fields: tuple[str, ...] = ("status",),
) -> Rpc:
    """A change of one order, decided on its facts; allowed callers change a fresh order."""
    lab = resource == "orders.lab_order"
    collection = "serviceRequests" if lab else "medicationRequests"

    async def build(world: World, fresh: bool) -> Message:
        if not fresh:
            return make(world.service_request if lab else world.medication_request)
        if lab:
            return make(await orders_records.fresh_service_request(world))
        return make(await orders_records.fresh_medication_request(world))

    return Rpc(
        "orders",
        method,
        "update",
        resource,
        build,
        lambda w: make(missing(collection)),
        fields=fields,
        by_record=True,
        allowed=allowed,
    )


_LAB_ORDER = "orders.lab_order"
_PRESCRIPTION = "orders.medication_order"

ORDERS_RPCS = (
    # The department in the order's performer exists only in tokens: an allowed doctor hears
    # PERFORMER_NOT_FOUND. Others are refused on the encounter's facts (emr decides the same).
    Rpc(
        "orders",
        "CreateServiceRequest",
        "create",
        _LAB_ORDER,
        _on(lambda w: orders_pb.CreateServiceRequestRequest(service_request=_lab_order(w))),
        by_record=True,
        allowed=FAILED_PRECONDITION,
    ),
    Rpc(
        "orders",
        "GetServiceRequest",
        "read",
        _LAB_ORDER,
        _on(lambda w: orders_pb.GetServiceRequestRequest(name=w.service_request)),
        lambda w: orders_pb.GetServiceRequestRequest(name=missing("serviceRequests")),
        by_record=True,
    ),
    Rpc(
        "orders",
        "ListServiceRequests",
        "read",
        _LAB_ORDER,
        _on(lambda w: orders_pb.ListServiceRequestsRequest(patient=w.patient, page_size=500)),
        by_record=True,
        listed=True,
        items="service_requests",
        shows=lambda w: w.service_request,
    ),
    _order_change(
        "RevokeServiceRequest",
        _LAB_ORDER,
        lambda n: orders_pb.RevokeServiceRequestRequest(name=n, reason="ordered twice"),
    ),
    _order_change(
        "HoldServiceRequest",
        _LAB_ORDER,
        lambda n: orders_pb.HoldServiceRequestRequest(name=n, reason="patient not fasting"),
    ),
    # A fresh order is ACTIVE: resuming it succeeds and changes nothing.
    _order_change(
        "ResumeServiceRequest", _LAB_ORDER, lambda n: orders_pb.ResumeServiceRequestRequest(name=n)
    ),
    _order_change(
        "MarkServiceRequestEnteredInError",
        _LAB_ORDER,
        lambda n: orders_pb.MarkServiceRequestEnteredInErrorRequest(name=n, reason="wrong patient"),
    ),
    # Completion is the lab's (its events): a person the policy allows is refused all the same.
    _order_change(
        "CompleteServiceRequest",
        _LAB_ORDER,
        lambda n: orders_pb.CompleteServiceRequestRequest(name=n),
        allowed=DENIED,
    ),
    # In a finished encounter: an allowed doctor hears ENCOUNTER_NOT_OPEN, the pharmacy unasked.
    Rpc(
        "orders",
        "CreateMedicationRequest",
        "create",
        _PRESCRIPTION,
        _on(
            lambda w: orders_pb.CreateMedicationRequestRequest(medication_request=_prescription(w))
        ),
        by_record=True,
        allowed=FAILED_PRECONDITION,
    ),
    Rpc(
        "orders",
        "GetMedicationRequest",
        "read",
        _PRESCRIPTION,
        _on(lambda w: orders_pb.GetMedicationRequestRequest(name=w.medication_request)),
        lambda w: orders_pb.GetMedicationRequestRequest(name=missing("medicationRequests")),
        by_record=True,
    ),
    Rpc(
        "orders",
        "ListMedicationRequests",
        "read",
        _PRESCRIPTION,
        _on(lambda w: orders_pb.ListMedicationRequestsRequest(patient=w.patient, page_size=500)),
        by_record=True,
        listed=True,
        items="medication_requests",
        shows=lambda w: w.medication_request,
    ),
    # Only the prescriber (NOTE_AUTHOR, none of the callers) changes a prescription: a caller
    # the policy allows hears NOT_PRESCRIBER.
    _order_change(
        "UpdateMedicationRequest",
        _PRESCRIPTION,
        lambda n: orders_pb.UpdateMedicationRequestRequest(
            medication_request=orders_pb.MedicationRequest(name=n, refills=1),
            update_mask=FieldMask(paths=["refills"]),
        ),
        allowed=DENIED,
        fields=("refills",),
    ),
    _order_change(
        "CancelMedicationRequest",
        _PRESCRIPTION,
        lambda n: orders_pb.CancelMedicationRequestRequest(name=n, reason="allergy found"),
    ),
    _order_change(
        "HoldMedicationRequest",
        _PRESCRIPTION,
        lambda n: orders_pb.HoldMedicationRequestRequest(name=n, reason="awaiting lab result"),
    ),
    _order_change(
        "ResumeMedicationRequest",
        _PRESCRIPTION,
        lambda n: orders_pb.ResumeMedicationRequestRequest(name=n),
    ),
    _order_change(
        "MarkMedicationRequestEnteredInError",
        _PRESCRIPTION,
        lambda n: orders_pb.MarkMedicationRequestEnteredInErrorRequest(name=n, reason="wrong drug"),
    ),
    _order_change(
        "CompleteMedicationRequest",
        _PRESCRIPTION,
        lambda n: orders_pb.CompleteMedicationRequestRequest(name=n),
        allowed=DENIED,
    ),
)


def _report_issued() -> orders_pb.DeliverEventsRequest:
    """A lab report of an order orders does not know: applied (recorded), changing nothing."""
    report = lab_pb.DiagnosticReport(
        name=missing("diagnosticReports"), service_request=missing("serviceRequests")
    )
    event = lab_pb.DiagnosticReportIssued(diagnostic_report=report, revision=1)
    return orders_pb.DeliverEventsRequest(events=[envelope(event, source="lab")])


def _lab_order_changed() -> lab_pb.DeliverEventsRequest:
    """A lab order the laboratory does not know yet: its copy is made."""
    made = lab_order(missing("patients"), missing("departments"), missing("staff"))
    return lab_pb.DeliverEventsRequest(events=[lab_changed(made, revision=1)])


def _appointment_changed() -> patient_pb.DeliverEventsRequest:
    """An appointment of a patient the patient service does not know: the relationship is kept."""
    appointment = pb.Appointment(
        name=missing("appointments"),
        patient=missing("patients"),
        department=missing("departments"),
        status=pb.APPOINTMENT_STATUS_BOOKED,
    )
    appointment.start_time.GetCurrentTime()
    appointment.end_time.GetCurrentTime()
    event = pb.AppointmentChanged(appointment=appointment, revision=1)
    return patient_pb.DeliverEventsRequest(events=[envelope(event, source="scheduling")])


def _patient_state_changed() -> pb.DeliverEventsRequest:
    """The state of a patient scheduling has no copy of: the copy is made."""
    patient = missing("patients")
    event = patient_pb.PatientStateChanged(
        patient=patient, state=patient_pb.PATIENT_STATE_ACTIVE, revision=1
    )
    return pb.DeliverEventsRequest(events=[envelope(event, source="patient")])


# Rpcs decided by the caller's service identity, not by the policy: only the service an event
# comes from delivers it (his.runtime.inbox; the mesh says the same). Each: (the request, the one
# service that may call it).
IDENTITY_RPCS: dict[str, tuple[Callable[[], Message], str]] = {
    "orders.DeliverEvents": (_report_issued, "lab"),
    "lab.DeliverEvents": (_lab_order_changed, "orders"),
    "pharmacy.DeliverEvents": (pharmacy_records.prescription_changed, "orders"),
    "scheduling.DeliverEvents": (_patient_state_changed, "patient"),
    "patient.DeliverEvents": (_appointment_changed, "scheduling"),
    "billing.DeliverEvents": (billing_records.order_completed, "orders"),
}


# --- pharmacy ---------------------------------------------------------------------------------


def _missing_stock_item() -> str:
    return f"{missing('medications')}/stockItems/{uuid.uuid4()}"


async def _new_medication(world: World, allowed: bool) -> Message:
    return pharmacy_pb.CreateMedicationRequest(medication=pharmacy_records.medication())


async def _adjust(world: World, allowed: bool) -> Message:
    etag = await pharmacy_records.etag_of(world) if allowed else "1"
    return pharmacy_pb.AdjustStockRequest(
        name=world.stock_item,
        quantity_change=1,
        reason=pharmacy_pb.STOCK_ADJUSTMENT_REASON_COUNT_CORRECTION,
        etag=etag,
    )


async def _dispense(world: World, allowed: bool) -> str:
    # A fresh dispense for a caller allowed to change one, so the world's stays prepared.
    return await pharmacy_records.fresh_dispense(world) if allowed else world.dispense


async def _hand_over(world: World, allowed: bool) -> Message:
    return pharmacy_pb.HandOverMedicationDispenseRequest(name=await _dispense(world, allowed))


async def _cancel_dispense(world: World, allowed: bool) -> Message:
    return pharmacy_pb.CancelMedicationDispenseRequest(
        name=await _dispense(world, allowed), reason="not collected"
    )


# The formulary, stock and dispensing are decided from the caller alone; a dispense on its facts:
# the world's prescription is PRACTITIONER's, written in the world's encounter (DEPARTMENT_A,
# attended by PRACTITIONER), which emr shows to the related clinicians.
PHARMACY_RPCS = (
    Rpc("pharmacy", "CreateMedication", "create", "pharmacy.medication", _new_medication),
    Rpc(
        "pharmacy",
        "GetMedication",
        "read",
        "pharmacy.medication",
        _on(lambda w: pharmacy_pb.GetMedicationRequest(name=w.medication)),
        lambda w: pharmacy_pb.GetMedicationRequest(name=missing("medications")),
    ),
    Rpc(
        "pharmacy",
        "ListMedications",
        "read",
        "pharmacy.medication",
        _const(pharmacy_pb.ListMedicationsRequest(page_size=1)),
    ),
    Rpc(
        "pharmacy",
        "UpdateMedication",
        "update",
        "pharmacy.medication",
        _on(
            lambda w: pharmacy_pb.UpdateMedicationRequest(
                medication=pharmacy_pb.Medication(name=w.medication, display_name="Paracetamol"),
                update_mask=FieldMask(paths=["display_name"]),
            )
        ),
        lambda w: pharmacy_pb.UpdateMedicationRequest(
            medication=pharmacy_pb.Medication(name=missing("medications"), display_name="x"),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        fields=("display_name",),
    ),
    Rpc(
        "pharmacy",
        "ReceiveStock",
        "create",
        "pharmacy.stock",
        _on(pharmacy_records.receipt),
    ),
    Rpc(
        "pharmacy",
        "ListStockItems",
        "read",
        "pharmacy.stock",
        _on(lambda w: pharmacy_pb.ListStockItemsRequest(parent=w.medication)),
        lambda w: pharmacy_pb.ListStockItemsRequest(parent=missing("medications")),
    ),
    Rpc(
        "pharmacy",
        "GetStockItem",
        "read",
        "pharmacy.stock",
        _on(lambda w: pharmacy_pb.GetStockItemRequest(name=w.stock_item)),
        lambda w: pharmacy_pb.GetStockItemRequest(name=_missing_stock_item()),
    ),
    Rpc(
        "pharmacy",
        "AdjustStock",
        "update",
        "pharmacy.stock",
        _adjust,
        lambda w: pharmacy_pb.AdjustStockRequest(
            name=_missing_stock_item(),
            quantity_change=1,
            reason=pharmacy_pb.STOCK_ADJUSTMENT_REASON_COUNT_CORRECTION,
            etag="1",
        ),
    ),
    Rpc(
        "pharmacy",
        "DispenseMedication",
        "create",
        "pharmacy.dispense",
        _on(pharmacy_records.dispensing),
    ),
    Rpc(
        "pharmacy",
        "HandOverMedicationDispense",
        "update",
        "pharmacy.dispense",
        _hand_over,
        lambda w: pharmacy_pb.HandOverMedicationDispenseRequest(
            name=missing("medicationDispenses")
        ),
        by_record=True,
    ),
    Rpc(
        "pharmacy",
        "GetMedicationDispense",
        "read",
        "pharmacy.dispense",
        _on(lambda w: pharmacy_pb.GetMedicationDispenseRequest(name=w.dispense)),
        lambda w: pharmacy_pb.GetMedicationDispenseRequest(name=missing("medicationDispenses")),
        by_record=True,
    ),
    Rpc(
        "pharmacy",
        "ListMedicationDispenses",
        "read",
        "pharmacy.dispense",
        _on(
            lambda w: pharmacy_pb.ListMedicationDispensesRequest(
                medication_request=w.prescription, page_size=500
            )
        ),
        by_record=True,
        listed=True,
        items="medication_dispenses",
        shows=lambda w: w.dispense,
    ),
    Rpc(
        "pharmacy",
        "CancelMedicationDispense",
        "update",
        "pharmacy.dispense",
        _cancel_dispense,
        lambda w: pharmacy_pb.CancelMedicationDispenseRequest(
            name=missing("medicationDispenses"), reason="x"
        ),
        by_record=True,
    ),
)


# --- audit and iam ----------------------------------------------------------------------------


AUDIT_RPCS = (
    Rpc(
        "audit",
        "WriteAuditEvents",
        "create",
        "audit.event",
        _on(lambda w: audit_pb.WriteAuditEventsRequest(audit_events=[make_event()])),
        services_only=True,
    ),
    Rpc(
        "audit",
        "GetAuditEvent",
        "read",
        "audit.event",
        _on(lambda w: audit_pb.GetAuditEventRequest(name=w.audit_event)),
        lambda w: audit_pb.GetAuditEventRequest(name=missing("auditEvents")),
    ),
    Rpc(
        "audit",
        "ListAuditEvents",
        "read",
        "audit.event",
        _on(lambda w: audit_pb.ListAuditEventsRequest(patient=w.patient, page_size=1)),
    ),
    Rpc(
        "audit",
        "VerifyChain",
        "read",
        "audit.event",
        _const(audit_pb.VerifyChainRequest(start_sequence_number=1, end_sequence_number=1)),
    ),
    Rpc(
        "audit",
        "CreateChainCheckpoint",
        "create",
        "audit.checkpoint",
        _const(audit_pb.CreateChainCheckpointRequest()),
    ),
    Rpc(
        "audit",
        "ListChainCheckpoints",
        "read",
        "audit.checkpoint",
        _const(audit_pb.ListChainCheckpointsRequest(page_size=1)),
    ),
)


async def _update_staff(world: World, allowed: bool) -> Message:
    return iam_pb.UpdateStaffMemberRequest(
        staff_member=iam_pb.StaffMember(name=world.staff, display_name="Dr. Renamed"),
        update_mask=FieldMask(paths=["display_name"]),
    )


async def _deactivate_staff(world: World, allowed: bool) -> Message:
    name = await world.fresh_staff() if allowed else world.staff
    return iam_pb.DeactivateStaffMemberRequest(name=name)


async def _add_membership(world: World, allowed: bool) -> Message:
    parent = await world.fresh_staff() if allowed else world.staff
    return iam_pb.AddMembershipRequest(
        parent=parent, membership=iam_pb.DepartmentMembership(department=world.department)
    )


async def _remove_membership(world: World, allowed: bool) -> Message:
    return iam_pb.RemoveMembershipRequest(name=await world.fresh_membership())


async def _decide_change(world: World, allowed: bool) -> Message:
    return iam_pb.ApproveAccessChangeRequest(name=await world.fresh_access_change())


async def _reject_change(world: World, allowed: bool) -> Message:
    return iam_pb.RejectAccessChangeRequest(name=await world.fresh_access_change())


async def _get_change(world: World, allowed: bool) -> Message:
    return iam_pb.GetAccessChangeRequest(name=await world.fresh_access_change())


async def _create_grant(world: World, allowed: bool) -> Message:
    return iam_pb.CreateEmergencyAccessGrantRequest(
        emergency_access_grant=iam_pb.EmergencyAccessGrant(
            patient=await world.fresh_patient() if allowed else world.patient,
            reason="Unconscious on arrival; allergy history needed before treatment",
        )
    )


async def _revoke_grant(world: World, allowed: bool) -> Message:
    name = await world.fresh_grant() if allowed else await world.held_grant()
    return iam_pb.RevokeEmergencyAccessGrantRequest(name=name)


async def _review_grant(world: World, allowed: bool) -> Message:
    name = await world.fresh_grant() if allowed else await world.held_grant()
    return iam_pb.ReviewEmergencyAccessGrantRequest(
        name=name, outcome=iam_pb.EMERGENCY_ACCESS_REVIEW_STATE_JUSTIFIED
    )


async def _login(world: World, allowed: bool) -> Message:
    username, password, totp_secret = world.staff_credential
    return iam_pb.IssueTokenRequest(
        username=username, credential=password, totp_code=pyotp.TOTP(totp_secret).now()
    )


async def _enrol(world: World, allowed: bool) -> Message:
    return iam_pb.CreateStaffEnrolmentRequest(parent=await world.fresh_staff())


async def _approve_enrolment(world: World, allowed: bool) -> Message:
    # A re-enrolment of the world's enrolled staff member, by the session's administrator: it
    # waits for a second administrator (retiring the previous case's).
    enrolment = await world.iam.CreateStaffEnrolment(
        iam_pb.CreateStaffEnrolmentRequest(parent=world.staff)
    )
    assert enrolment.approval_required
    return iam_pb.ApproveStaffEnrolmentRequest(name=enrolment.name)


IAM_RPCS = (
    Rpc(
        "iam",
        "CreateDepartment",
        "create",
        "iam.department",
        _on(lambda w: iam_pb.CreateDepartmentRequest(department=make_department())),
    ),
    Rpc(
        "iam",
        "GetDepartment",
        "read",
        "iam.department",
        _on(lambda w: iam_pb.GetDepartmentRequest(name=w.department)),
        lambda w: iam_pb.GetDepartmentRequest(name=missing("departments")),
    ),
    Rpc(
        "iam", "ListDepartments", "read", "iam.department", _const(iam_pb.ListDepartmentsRequest())
    ),
    Rpc(
        "iam",
        "GetStaffMember",
        "read",
        "iam.staff",
        _on(lambda w: iam_pb.GetStaffMemberRequest(name=w.staff)),
        lambda w: iam_pb.GetStaffMemberRequest(name=missing("staff")),
    ),
    Rpc(
        "iam",
        "ListStaffMembers",
        "read",
        "iam.staff",
        _const(iam_pb.ListStaffMembersRequest(page_size=1)),
    ),
    Rpc(
        "iam",
        "ListMemberships",
        "read",
        "iam.membership",
        _on(lambda w: iam_pb.ListMembershipsRequest(parent=w.staff)),
        lambda w: iam_pb.ListMembershipsRequest(parent=missing("staff")),
    ),
    # Someone else's grants: only those who may read every grant (own=False).
    Rpc(
        "iam",
        "ListEmergencyAccessGrants",
        "read",
        "iam.emergency_access",
        _on(lambda w: iam_pb.ListEmergencyAccessGrantsRequest(staff=w.staff)),
    ),
    Rpc(
        "iam",
        "CreateStaffMember",
        "create",
        "iam.staff",
        _on(lambda w: iam_pb.CreateStaffMemberRequest(staff_member=make_staff())),
    ),
    # Someone else's record (own=False): the callers are never the world's staff member.
    Rpc(
        "iam",
        "UpdateStaffMember",
        "update",
        "iam.staff",
        _update_staff,
        lambda w: iam_pb.UpdateStaffMemberRequest(
            staff_member=iam_pb.StaffMember(name=missing("staff"), display_name="Dr. Nobody"),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        fields=("display_name",),
    ),
    Rpc(
        "iam",
        "CreateStaffEnrolment",
        "update",
        "iam.staff",
        _enrol,
        lambda w: iam_pb.CreateStaffEnrolmentRequest(parent=missing("staff")),
    ),
    Rpc(
        "iam",
        "ApproveStaffEnrolment",
        "update",
        "iam.staff",
        _approve_enrolment,
        lambda w: iam_pb.ApproveStaffEnrolmentRequest(
            name=f"{missing('staff')}/enrolments/{uuid.uuid4()}"
        ),
    ),
    Rpc(
        "iam",
        "DeactivateStaffMember",
        "update",
        "iam.staff",
        _deactivate_staff,
        lambda w: iam_pb.DeactivateStaffMemberRequest(name=missing("staff")),
        fields=("active",),
    ),
    Rpc(
        "iam",
        "AddMembership",
        "create",
        "iam.membership",
        _add_membership,
        lambda w: iam_pb.AddMembershipRequest(
            parent=missing("staff"),
            membership=iam_pb.DepartmentMembership(department=w.department),
        ),
    ),
    Rpc(
        "iam",
        "RemoveMembership",
        "delete",
        "iam.membership",
        _remove_membership,
        lambda w: iam_pb.RemoveMembershipRequest(
            name=f"{missing('staff')}/{missing('memberships')}"
        ),
    ),
    # The two-person rule's access changes: read like staff members; decided by administrators
    # (each caller decides a fresh change another administrator proposed).
    Rpc(
        "iam",
        "GetAccessChange",
        "read",
        "iam.staff",
        _get_change,
        lambda w: iam_pb.GetAccessChangeRequest(name=missing("accessChanges")),
    ),
    Rpc(
        "iam",
        "ListAccessChanges",
        "read",
        "iam.staff",
        _const(iam_pb.ListAccessChangesRequest(page_size=1)),
    ),
    Rpc(
        "iam",
        "ApproveAccessChange",
        "update",
        "iam.staff",
        _decide_change,
        lambda w: iam_pb.ApproveAccessChangeRequest(name=missing("accessChanges")),
        fields=("roles",),
    ),
    Rpc(
        "iam",
        "RejectAccessChange",
        "update",
        "iam.staff",
        _reject_change,
        lambda w: iam_pb.RejectAccessChangeRequest(name=missing("accessChanges")),
        fields=("roles",),
    ),
    # Clinicians break the glass for themselves (own=True); iam refuses anyone else before the
    # policy, for the same reason. The patient is an input, not the record: no missing case.
    Rpc(
        "iam",
        "CreateEmergencyAccessGrant",
        "create",
        "iam.emergency_access",
        _create_grant,
        own=True,
        enrolled=True,
    ),
    # Someone else's grant (own=False): those who may revoke any grant, not its holder's peers.
    # A missing grant is judged as someone else's.
    Rpc(
        "iam",
        "RevokeEmergencyAccessGrant",
        "update",
        "iam.emergency_access",
        _revoke_grant,
        lambda w: iam_pb.RevokeEmergencyAccessGrantRequest(name=missing("emergencyAccessGrants")),
    ),
    # The privacy officer's review of someone else's grant (execute); the reviewer is recorded,
    # so each staff caller is an iam staff member first.
    Rpc(
        "iam",
        "ReviewEmergencyAccessGrant",
        "execute",
        "iam.emergency_access",
        _review_grant,
        lambda w: iam_pb.ReviewEmergencyAccessGrantRequest(
            name=missing("emergencyAccessGrants"),
            outcome=iam_pb.EMERGENCY_ACCESS_REVIEW_STATE_JUSTIFIED,
        ),
        enrolled=True,
    ),
)

# --- lab ------------------------------------------------------------------------------------
# The world's order is performed by DEPARTMENT_A (the laboratory whose members its technicians
# are) and requested by PRACTITIONER (the ordering doctor, who has the patient in care). No caller
# of the matrix is a technician of DEPARTMENT_A, so every change is refused; clinicians of
# DEPARTMENT_A or the practitioner read. Creating for an order the lab has not received is
# FAILED_PRECONDITION (ORDER_NOT_KNOWN), as the contract says: no missing-record case there.
_GLUCOSE = types_pb2.Coding(system="http://loinc.org", code="2345-7")


def _glucose(value: float) -> lab_pb.Observation:
    return lab_pb.Observation(
        code=_GLUCOSE,
        value_quantity=types_pb2.Quantity(value=value, unit="mg/dL"),
        status=lab_pb.OBSERVATION_STATUS_PRELIMINARY,
    )


def _new_specimen(world: World) -> lab_pb.CreateSpecimenRequest:
    specimen = lab_pb.Specimen(
        service_requests=[world.lab_order],
        specimen_type=types_pb2.Coding(system="http://snomed.info/sct", code="119297000"),
        accession_id=f"SEC-{uuid.uuid4().hex[:12]}",
        collector=PRACTITIONER,
    )
    specimen.collect_time.GetCurrentTime()
    specimen.collect_time.seconds -= 60
    return lab_pb.CreateSpecimenRequest(specimen=specimen)


def _lab(
    method: str,
    action: str,
    resource: str,
    make: Callable[[World, str], Message],
    collection: str,
    record: Callable[[World], str],
    **options: object,
) -> Rpc:
    """A lab rpc about one of the world's records (`record`), or a missing one."""
    return Rpc(
        "lab",
        method,
        action,
        resource,
        _on(lambda w: make(w, record(w))),
        lambda w: make(w, missing(collection) if "/" not in collection else collection),
        by_record=True,
        **options,  # type: ignore[arg-type]
    )


def _missing_observation() -> str:
    return f"{missing('diagnosticReports')}/observations/{uuid.uuid4()}"


LAB_RPCS = (
    Rpc(
        "lab",
        "CreateSpecimen",
        "create",
        "lab.specimen",
        _on(_new_specimen),
        by_record=True,
    ),
    _lab(
        "GetSpecimen",
        "read",
        "lab.specimen",
        lambda w, n: lab_pb.GetSpecimenRequest(name=n),
        "specimens",
        lambda w: w.specimen,
    ),
    Rpc(
        "lab",
        "ListSpecimens",
        "read",
        "lab.specimen",
        _on(lambda w: lab_pb.ListSpecimensRequest(patient=w.patient)),
        listed=True,
        items="specimens",
        shows=lambda w: w.specimen,
    ),
    _lab(
        "RejectSpecimen",
        "update",
        "lab.specimen",
        lambda w, n: lab_pb.RejectSpecimenRequest(name=n, reason="haemolysed"),
        "specimens",
        lambda w: w.specimen,
    ),
    _lab(
        "MarkSpecimenEnteredInError",
        "update",
        "lab.specimen",
        lambda w, n: lab_pb.MarkSpecimenEnteredInErrorRequest(name=n, reason="wrong patient"),
        "specimens",
        lambda w: w.specimen,
    ),
    Rpc(
        "lab",
        "CreateDiagnosticReport",
        "create",
        "lab.result",
        _on(
            lambda w: lab_pb.CreateDiagnosticReportRequest(
                diagnostic_report=lab_pb.DiagnosticReport(
                    service_request=w.lab_order, specimens=[w.specimen]
                )
            )
        ),
        by_record=True,
    ),
    _lab(
        "GetDiagnosticReport",
        "read",
        "lab.result",
        lambda w, n: lab_pb.GetDiagnosticReportRequest(name=n),
        "diagnosticReports",
        lambda w: w.report,
    ),
    Rpc(
        "lab",
        "ListDiagnosticReports",
        "read",
        "lab.result",
        _on(lambda w: lab_pb.ListDiagnosticReportsRequest(patient=w.patient)),
        listed=True,
        items="diagnostic_reports",
        shows=lambda w: w.report,
    ),
    _lab(
        "ListDiagnosticReportVersions",
        "read",
        "lab.result",
        lambda w, n: lab_pb.ListDiagnosticReportVersionsRequest(name=n),
        "diagnosticReports",
        lambda w: w.report,
    ),
    _lab(
        "RecordObservations",
        "update",
        "lab.result",
        lambda w, n: lab_pb.RecordObservationsRequest(parent=n, observations=[_glucose(90)]),
        "diagnosticReports",
        lambda w: w.report,
    ),
    _lab(
        "FinalizeReport",
        "update",
        "lab.result",
        lambda w, n: lab_pb.FinalizeReportRequest(name=n),
        "diagnosticReports",
        lambda w: w.report,
    ),
    _lab(
        "AmendReport",
        "update",
        "lab.result",
        lambda w, n: lab_pb.AmendReportRequest(name=n, reason="recheck", conclusion="x"),
        "diagnosticReports",
        lambda w: w.report,
    ),
    Rpc(
        "lab",
        "ListLabOrders",
        "read",
        "lab.order",
        _on(lambda w: lab_pb.ListLabOrdersRequest(patient=w.patient)),
        listed=True,
        items="service_requests",
        shows=lambda w: w.lab_order,
    ),
    Rpc(
        "lab",
        "ListCriticalResults",
        "execute",
        "lab.result",
        _const(lab_pb.ListCriticalResultsRequest()),
        listed=True,
        items="critical_results",
        shows=lambda w: w.critical,
    ),
    # The ordering team is the ordering doctor's departments in iam: the world's practitioner is
    # in none, so DEPARTMENT_A (the laboratory) does not make a doctor of it one of the team.
    _lab(
        "AcknowledgeCriticalResult",
        "execute",
        "lab.result",
        lambda w, n: lab_pb.AcknowledgeCriticalResultRequest(name=n),
        _missing_observation(),
        lambda w: w.critical,
        expect=lambda c: DENIED if c.label == "DOCTOR_OF_THE_DEPARTMENT" else OK,
    ),
)


# --- billing ----------------------------------------------------------------------------------


async def _fresh_or_world(world: World, allowed: bool, fresh: Any, kept: str) -> str:
    """A fresh record for a caller allowed to change one, so the world's stay as they are."""
    return str(await fresh(world)) if allowed else kept


async def _new_invoice(world: World, allowed: bool) -> Message:
    charge = await _fresh_or_world(world, allowed, billing_records.fresh_charge, world.charge_item)
    return billing_pb.CreateInvoiceRequest(
        invoice=billing_pb.Invoice(patient=world.patient, charge_items=[charge])
    )


async def _cancel_charge(world: World, allowed: bool) -> Message:
    name = await _fresh_or_world(world, allowed, billing_records.fresh_charge, world.charge_item)
    return billing_pb.CancelChargeItemRequest(name=name, reason="entered twice")


async def _cancel_invoice(world: World, allowed: bool) -> Message:
    async def draft(w: World) -> str:
        return await billing_records.fresh_invoice(w, issue=False)

    name = await _fresh_or_world(world, allowed, draft, world.invoice)
    return billing_pb.CancelInvoiceRequest(name=name, reason="wrong patient")


async def _record_payment(world: World, allowed: bool) -> Message:
    async def issued(w: World) -> str:
        return await billing_records.fresh_invoice(w, issue=True)

    parent = await _fresh_or_world(world, allowed, issued, world.invoice)
    return billing_pb.RecordPaymentRequest(
        parent=parent,
        payment=billing_pb.Payment(
            amount=types_pb2.Money(currency_code="CNY", amount_minor=1),
            method=billing_pb.PAYMENT_METHOD_CASH,
        ),
    )


async def _refund(world: World, allowed: bool) -> Message:
    name = await _fresh_or_world(world, allowed, billing_records.fresh_payment, world.payment)
    return billing_pb.RefundPaymentRequest(name=name, reason="returned")


# Billing is decided from the caller alone: billing clerks do everything, nobody else anything.
BILLING_RPCS = (
    Rpc("billing", "CreateChargeItem", "create", "billing.charge", billing_records.charge_request),
    Rpc(
        "billing",
        "GetChargeItem",
        "read",
        "billing.charge",
        _on(lambda w: billing_pb.GetChargeItemRequest(name=w.charge_item)),
        lambda w: billing_pb.GetChargeItemRequest(name=missing("chargeItems")),
    ),
    Rpc(
        "billing",
        "ListChargeItems",
        "read",
        "billing.charge",
        _on(lambda w: billing_pb.ListChargeItemsRequest(patient=w.patient, page_size=1)),
    ),
    Rpc(
        "billing",
        "CancelChargeItem",
        "update",
        "billing.charge",
        _cancel_charge,
        lambda w: billing_pb.CancelChargeItemRequest(name=missing("chargeItems"), reason="x"),
    ),
    Rpc("billing", "CreateInvoice", "create", "billing.invoice", _new_invoice),
    Rpc(
        "billing",
        "GetInvoice",
        "read",
        "billing.invoice",
        _on(lambda w: billing_pb.GetInvoiceRequest(name=w.invoice)),
        lambda w: billing_pb.GetInvoiceRequest(name=missing("invoices")),
    ),
    Rpc(
        "billing",
        "ListInvoices",
        "read",
        "billing.invoice",
        _on(lambda w: billing_pb.ListInvoicesRequest(patient=w.patient, page_size=1)),
    ),
    Rpc(
        "billing",
        "IssueInvoice",
        "update",
        "billing.invoice",
        # The world's invoice is issued: issuing it again succeeds and changes nothing.
        _on(lambda w: billing_pb.IssueInvoiceRequest(name=w.invoice)),
        lambda w: billing_pb.IssueInvoiceRequest(name=missing("invoices")),
    ),
    Rpc(
        "billing",
        "CancelInvoice",
        "update",
        "billing.invoice",
        _cancel_invoice,
        lambda w: billing_pb.CancelInvoiceRequest(name=missing("invoices"), reason="x"),
    ),
    Rpc(
        "billing",
        "RecordPayment",
        "create",
        "billing.payment",
        _record_payment,
        lambda w: billing_pb.RecordPaymentRequest(
            parent=missing("invoices"),
            payment=billing_pb.Payment(
                amount=types_pb2.Money(currency_code="CNY", amount_minor=1),
                method=billing_pb.PAYMENT_METHOD_CASH,
            ),
        ),
    ),
    Rpc(
        "billing",
        "ListPayments",
        "read",
        "billing.payment",
        _on(lambda w: billing_pb.ListPaymentsRequest(parent=w.invoice)),
        lambda w: billing_pb.ListPaymentsRequest(parent=missing("invoices")),
    ),
    Rpc(
        "billing",
        "RefundPayment",
        "update",
        "billing.payment",
        _refund,
        lambda w: billing_pb.RefundPaymentRequest(
            name=billing_records.missing_payment(), reason="x"
        ),
    ),
    Rpc(
        "billing",
        "CreateTariffItem",
        "create",
        "billing.charge",
        _on(lambda w: billing_records.tariff_item()),
    ),
    Rpc(
        "billing",
        "ListTariffItems",
        "read",
        "billing.charge",
        _const(billing_pb.ListTariffItemsRequest(page_size=1)),
    ),
    Rpc(
        "billing",
        "GetPatientBalance",
        "read",
        "billing.invoice",
        _on(lambda w: billing_pb.GetPatientBalanceRequest(name=f"{w.patient}/billingBalance")),
    ),
    Rpc(
        "billing",
        "ReconcileCharges",
        "read",
        "billing.charge",
        _on(lambda w: billing_pb.ReconcileChargesRequest(period=billing_records.period())),
    ),
)


# Rpcs anyone may call, with a token or without (the local identity provider's own door): never
# asked of the policy, so never PERMISSION_DENIED; each answers its request as it would anyone's.
PUBLIC_RPCS = {
    "iam.GetJwks": _const(iam_pb.GetJwksRequest()),
    "iam.IssueToken": _login,
    # A number nobody has: the same answer as for a registered one, and no code is sent.
    "iam.StartPatientSignIn": _on(lambda w: iam_pb.StartPatientSignInRequest(phone=unique_phone())),
    # An enrolment code nobody was given (a username of its own, so no lockout comes near):
    # refused for its code (UNAUTHENTICATED, below), never for a token.
    "iam.CompleteStaffEnrolment": _on(
        lambda w: iam_pb.CompleteStaffEnrolmentRequest(
            username=f"t.{uuid.uuid4().hex[:12]}",
            enrolment_code="A" * 16,
            password="a long enough password",
        )
    ),
    # A sign-in nobody started: refused for its code (UNAUTHENTICATED, below), never for a token.
    "iam.CompletePatientSignIn": _const(
        iam_pb.CompletePatientSignInRequest(sign_in=f"patientSignIns/{uuid.uuid4()}", code="000000")
    ),
}

RPCS = {
    rpc.id: rpc
    for rpc in (
        *PATIENT_RPCS,
        *SCHEDULING_RPCS,
        *EMR_RPCS,
        *ORDERS_RPCS,
        *LAB_RPCS,
        *PHARMACY_RPCS,
        *BILLING_RPCS,
        *AUDIT_RPCS,
        *IAM_RPCS,
    )
}


def _cases() -> list[object]:
    cases: list[object] = []
    for rpc in RPCS.values():
        callers = ROLE_CALLERS + (RELATED_CALLERS if rpc.by_record else ())
        cases.extend(pytest.param(rpc.id, label, id=f"{rpc.id}-{label}") for label in callers)
    return cases


def policy_request(rpc: Rpc, caller: Caller, *, exists: bool) -> Request:
    """The question the servicer asks about the call (see the module docstring)."""
    if not rpc.by_record:
        return Request(caller.roles, rpc.action, rpc.resource, own=rpc.own, fields=rpc.fields)
    if not exists:
        # The least favourable facts: no department, no care, consent revoked, no emergency.
        return Request(caller.roles, rpc.action, rpc.resource, consent="revoked", fields=rpc.fields)
    return Request(
        caller.roles,
        rpc.action,
        rpc.resource,
        department_match=DEPARTMENT_A in caller.departments,
        under_care=caller.subject == PRACTITIONER,
        # The world's patient has no privacy consent on record.
        consent="none",
        fields=rpc.fields,
    )


def _rpc_ids(entry: ServiceEntry) -> set[str]:
    return {f"{entry.name}.{method.name}" for method in entry.descriptor().methods}


def test_the_matrix_covers_every_rpc_of_every_implemented_service_and_nothing_else() -> None:
    every = set().union(*(_rpc_ids(entry) for entry in implemented()))
    decided_or_public = set(RPCS) | set(PUBLIC_RPCS) | set(IDENTITY_RPCS)
    assert not set(RPCS) & set(PUBLIC_RPCS)
    assert not (set(RPCS) | set(PUBLIC_RPCS)) & set(IDENTITY_RPCS)
    assert every - decided_or_public == set(), "rpcs not in the matrix"
    # Nothing of a contract-only service (it has no server to call), and no misspelt rpc.
    assert decided_or_public - every == set(), "not an rpc of an implemented service"


def test_the_public_rpcs_are_exactly_those_the_servers_let_in_without_a_token() -> None:
    ours = {f"/{entry.grpc_service}/" for entry in implemented()}
    let_in = {path for path in PUBLIC_METHODS if path.startswith(tuple(ours))}
    paths = {
        f"/{BY_NAME[service].grpc_service}/{method}"
        for service, method in (rpc_id.split(".") for rpc_id in PUBLIC_RPCS)
    }
    assert paths == let_in


@pytest.mark.parametrize(("rpc_id", "label"), _cases())
async def test_every_caller_gets_what_the_policy_decides_before_existence(
    world: World, policy: PolicyEngine, served_policy: PolicyEngine, rpc_id: str, label: str
) -> None:
    rpc, caller = RPCS[rpc_id], CALLERS[label]
    if rpc.enrolled:
        caller = await world.enrolled(caller)
    method = getattr(world.stub(rpc.service), rpc.method)
    decision = decided(policy, served_policy, policy_request(rpc, caller, exists=True))
    service_refused = rpc.services_only and not caller.subject.startswith("services/")
    allowed = decision.allow and not service_refused
    request = await rpc.build(world, allowed)
    result = await outcome(method(request, metadata=caller.metadata))
    assert result.code != UNIMPLEMENTED, f"the {rpc.service} servicer has no {rpc.method}"

    if rpc.id == "scheduling.ListAppointments" and caller.subject.startswith("patients/"):
        # A patient lists appointments only by naming themselves; another's list is refused
        # outright (other lists leave everything out for a patient, as for any caller who may
        # never see their records).
        assert (result.code, result.reason) == (DENIED, "NOT_OWN"), result
    elif rpc.listed and (not rpc.list_roles or set(caller.roles) & set(rpc.list_roles)):
        # Never refused: the page holds the record exactly when the caller may see it.
        assert result.code == OK, result
        shown = names(getattr(result.reply, rpc.items))
        record = rpc.shows(world) if rpc.shows else world.appointment
        if decision.allow:
            assert record in shown, shown
        else:
            assert shown == [], shown
    elif service_refused:
        # Staff never write the audit trail: the servicer refuses them before the policy, which
        # refuses them too.
        assert not decision.allow
        assert (result.code, result.reason) == (DENIED, "NOT_A_SERVICE"), result
    elif allowed:
        want = rpc.expect(caller) if rpc.expect else rpc.allowed
        assert result.code == want, f"{decision}: {result}"
    else:
        assert (result.code, result.reason) == (DENIED, decision.reason), result

    if rpc.missing is None:
        return
    nowhere = decided(policy, served_policy, policy_request(rpc, caller, exists=False))
    result = await outcome(method(rpc.missing(world), metadata=caller.metadata))
    assert result.code != UNIMPLEMENTED, f"the {rpc.service} servicer has no {rpc.method}"
    if nowhere.allow:
        assert result.code == NOT_FOUND, f"{nowhere}: {result}"
    else:
        # The same refusal as for a record that exists (for a record decided by its facts: the
        # refusal of the least favourable ones); nothing tells whether the record exists.
        assert (result.code, result.reason) == (DENIED, nowhere.reason), result
        if not rpc.by_record:
            assert nowhere == decision


@pytest.mark.parametrize("label", ROLE_CALLERS)
@pytest.mark.parametrize("rpc_id", sorted(IDENTITY_RPCS))
async def test_identity_rpcs_answer_only_their_source_service(
    world: World, rpc_id: str, label: str
) -> None:
    service, method_name = rpc_id.split(".")
    make, source = IDENTITY_RPCS[rpc_id]
    method = getattr(world.stub(service), method_name)
    refused = await outcome(method(make(), metadata=CALLERS[label].metadata))
    assert (refused.code, refused.reason) == (DENIED, "SERVICE_NOT_PERMITTED"), refused
    allowed = await outcome(method(make(), metadata=metadata(ISSUER.service(source))))
    assert allowed.code == OK, allowed


async def test_clinicians_see_appointments_of_their_department_and_of_their_own_slots(
    world: World,
) -> None:
    request = pb.GetAppointmentRequest(name=world.appointment)
    for label in RELATED_CALLERS:
        reply = await world.scheduling.GetAppointment(request, metadata=CALLERS[label].metadata)
        assert reply.name == world.appointment, label
    for label in ("DOCTOR", "NURSE"):
        result = await outcome(
            world.scheduling.GetAppointment(request, metadata=CALLERS[label].metadata)
        )
        assert (result.code, result.reason) == (DENIED, "DEPARTMENT_MISMATCH"), label


@pytest.mark.parametrize("label", (*ROLE_CALLERS, ANONYMOUS))
@pytest.mark.parametrize("rpc_id", sorted(PUBLIC_RPCS))
async def test_public_rpcs_answer_anyone_without_asking_the_policy(
    world: World, iam_service: RunningService, rpc_id: str, label: str
) -> None:
    service, name = rpc_id.split(".")
    assert service == iam_service.spec.name
    request = await PUBLIC_RPCS[rpc_id](world, True)
    # No token at all, or any caller's: the answer is the same.
    call_metadata = None if label == ANONYMOUS else CALLERS[label].metadata
    async with grpc.aio.insecure_channel(iam_service.address) as channel:
        method = getattr(iam_grpc.IamServiceStub(channel), name)
        result = await outcome(method(request, metadata=call_metadata))
    if name == "CompletePatientSignIn":
        assert (result.code, result.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "SIGN_IN_CODE_INVALID",
        ), result
    elif name == "CompleteStaffEnrolment":
        assert (result.code, result.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "ENROLMENT_CODE_INVALID",
        ), result
    else:
        assert result.code == OK, result
