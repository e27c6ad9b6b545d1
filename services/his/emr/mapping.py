"""Database rows of the emr schema as proto messages (note text decrypted on the way out)."""

from __future__ import annotations

import uuid
from typing import Any

from his.emr.v1 import emr_service_pb2 as pb
from his.runtime import wire
from his.runtime.enums import EnumText

ENCOUNTER_CLASS = EnumText(pb.EncounterClass.DESCRIPTOR)
ENCOUNTER_STATUS = EnumText(pb.EncounterStatus.DESCRIPTOR)
NOTE_STATUS = EnumText(pb.NoteStatus.DESCRIPTOR)
CLINICAL_STATUS = EnumText(pb.ConditionClinicalStatus.DESCRIPTOR)
VERIFICATION_STATUS = EnumText(pb.ConditionVerificationStatus.DESCRIPTOR)

# The encounter classes as the policy names them (policy input `encounter_class`).
POLICY_CLASS = {
    "ambulatory": "outpatient",
    "virtual": "outpatient",
    "home_health": "outpatient",
    "emergency": "emergency",
    "inpatient": "inpatient",
    "short_stay": "inpatient",
}


def encounter_name(encounter_id: uuid.UUID) -> str:
    """`encounters/{id}`."""
    return f"encounters/{encounter_id}"


def note_name(encounter_id: uuid.UUID, note_id: uuid.UUID) -> str:
    """`encounters/{id}/notes/{id}`."""
    return f"encounters/{encounter_id}/notes/{note_id}"


def diagnosis_name(encounter_id: uuid.UUID, diagnosis_id: uuid.UUID) -> str:
    """`encounters/{id}/diagnoses/{id}`."""
    return f"encounters/{encounter_id}/diagnoses/{diagnosis_id}"


def _ref(collection: str, value: uuid.UUID | None) -> str:
    return f"{collection}/{value}" if value else ""


def encounter_to_proto(row: Any) -> pb.Encounter:
    """An `emr.encounters` row as an Encounter."""
    encounter = pb.Encounter(
        name=encounter_name(row.id),
        patient=f"patients/{row.patient_id}",
        encounter_class=ENCOUNTER_CLASS.number(row.encounter_class),  # type: ignore[arg-type]
        status=ENCOUNTER_STATUS.number(row.status),  # type: ignore[arg-type]
        department=f"departments/{row.department_id}",
        attending_practitioner=_ref("staff", row.practitioner_id),
        appointment=_ref("appointments", row.appointment_id),
        sensitive=row.sensitive,
        surgical=row.surgical,
        cancel_reason=row.cancel_reason or "",
        entered_in_error_reason=row.entered_in_error_reason or "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )
    if row.start_time is not None:
        encounter.period.start_time.FromDatetime(row.start_time)
    if row.end_time is not None:
        encounter.period.end_time.FromDatetime(row.end_time)
    return encounter


def note_to_proto(row: Any, text: str) -> pb.ClinicalNote:
    """An `emr.notes` row (with `superseded_by_id` joined) and its decrypted text as a note."""
    note = pb.ClinicalNote(
        name=note_name(row.encounter_id, row.id),
        note_type=wire.coding(row.type_system, row.type_code, row.type_display),
        author=f"staff/{row.author_id}",
        text=text,
        status=NOTE_STATUS.number(row.status),  # type: ignore[arg-type]
        sign_time=wire.timestamp(row.sign_time),
        amends=note_name(row.encounter_id, row.amends_id) if row.amends_id else "",
        superseded_by=(
            note_name(row.encounter_id, row.superseded_by_id) if row.superseded_by_id else ""
        ),
        amend_reason=row.amend_reason or "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )
    return note


def diagnosis_to_proto(row: Any) -> pb.Diagnosis:
    """An `emr.diagnoses` row as a Diagnosis."""
    diagnosis = pb.Diagnosis(
        name=diagnosis_name(row.encounter_id, row.id),
        code=wire.coding(row.code_system, row.code, row.code_display),
        clinical_status=CLINICAL_STATUS.number(row.clinical_status),  # type: ignore[arg-type]
        verification_status=VERIFICATION_STATUS.number(  # type: ignore[arg-type]
            row.verification_status
        ),
        rank=row.rank,
        recorder=f"staff/{row.recorder_id}",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )
    if row.onset_year is not None:
        diagnosis.onset_date.year = row.onset_year
        diagnosis.onset_date.month = row.onset_month or 0
        diagnosis.onset_date.day = row.onset_day or 0
    return diagnosis
