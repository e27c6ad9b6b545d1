"""Validation of emr requests: encounters, notes and diagnoses, every bad field named."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from his.common.v1 import types_pb2
from his.emr.mapping import CLINICAL_STATUS, ENCOUNTER_CLASS, ENCOUNTER_STATUS, VERIFICATION_STATUS
from his.emr.v1 import emr_service_pb2 as pb
from his.runtime.validation import EARLIEST_DATE, LATEST_DATE, Violations, reference

MAX_REASON = 500
MAX_TEXT = 100_000
MAX_DISPLAY = 200
MAX_SYSTEM = 200
MAX_CODE = 20

LOINC = "http://loinc.org"
# LOINC codes: up to 7 digits, a hyphen and a check digit (for example 11506-3).
_LOINC_CODE = re.compile(r"[0-9]{1,7}-[0-9]")
# ICD-10 code systems: the WHO edition and the national clinical modifications built on it.
ICD10_SYSTEMS = frozenset(
    {
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-10-gm",
        "urn:oid:2.16.156.10011.2.3.3.11",  # the Chinese national edition (GB/T 14396)
    }
)
# A category (letter, two characters), optionally a dot and up to four more (E11, E11.9, S72.001A).
_ICD10_CODE = re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")

ENCOUNTER_UPDATABLE = frozenset(
    {"encounter_class", "department", "attending_practitioner", "sensitive"}
)
NOTE_UPDATABLE = frozenset({"note_type", "text"})
DIAGNOSIS_UPDATABLE = frozenset({"clinical_status", "verification_status", "rank", "onset_date"})


def encounter_class(v: Violations, field: str, value: int) -> str | None:
    """The stored code of a required encounter class."""
    number = v.enum(field, value, pb.EncounterClass.DESCRIPTOR)
    return ENCOUNTER_CLASS.text(number) if number else None


def new_encounter(v: Violations, encounter: pb.Encounter) -> dict[str, Any]:
    """The values of CreateEncounter's encounter (fields the service assigns are ignored)."""
    values: dict[str, Any] = {
        "patient_id": v.resource_id("encounter.patient", encounter.patient, collection="patients"),
        "encounter_class": encounter_class(
            v, "encounter.encounter_class", encounter.encounter_class
        ),
        "department_id": v.resource_id(
            "encounter.department", encounter.department, collection="departments"
        ),
        "practitioner_id": reference(
            v, "encounter.attending_practitioner", encounter.attending_practitioner, "staff"
        ),
        "appointment_id": reference(
            v, "encounter.appointment", encounter.appointment, "appointments"
        ),
        "sensitive": encounter.sensitive,
        "surgical": encounter.surgical,
    }
    status = encounter.status
    if status not in (pb.ENCOUNTER_STATUS_PLANNED, pb.ENCOUNTER_STATUS_ARRIVED):
        v.add("encounter.status", "must be ENCOUNTER_STATUS_PLANNED or ENCOUNTER_STATUS_ARRIVED")
    else:
        values["status"] = ENCOUNTER_STATUS.text(status)
    return values


def encounter_changes(v: Violations, encounter: pb.Encounter, paths: list[str]) -> dict[str, Any]:
    """The new values of the update mask's paths (attending practitioner None = clear it)."""
    values: dict[str, Any] = {}
    if "encounter_class" in paths:
        values["encounter_class"] = encounter_class(
            v, "encounter.encounter_class", encounter.encounter_class
        )
    if "department" in paths:
        values["department_id"] = v.resource_id(
            "encounter.department", encounter.department, collection="departments"
        )
    if "attending_practitioner" in paths:
        values["practitioner_id"] = reference(
            v, "encounter.attending_practitioner", encounter.attending_practitioner, "staff"
        )
    if "sensitive" in paths:
        values["sensitive"] = encounter.sensitive
    return values


def reason(v: Violations, field: str, value: str) -> str | None:
    """A required reason of 1 to 500 characters."""
    return v.text(field, value, max_len=MAX_REASON, required=True)


def note_text(v: Violations, field: str, value: str) -> str | None:
    """A note's text: 1 to 100000 characters, kept as written (line breaks allowed)."""
    if not value.strip():
        v.add(field, "is required")
        return None
    if len(value) > MAX_TEXT:
        v.add(field, f"must be at most {MAX_TEXT} characters")
        return None
    if "\0" in value:
        v.add(field, "must not contain NUL characters")
        return None
    return value


def note_type(v: Violations, field: str, coding: types_pb2.Coding) -> dict[str, Any]:
    """A LOINC document type."""
    system = v.text(f"{field}.system", coding.system, max_len=MAX_SYSTEM, required=True)
    if system is not None and system != LOINC:
        v.add(f"{field}.system", f"must be {LOINC}")
    code = v.text(f"{field}.code", coding.code, max_len=MAX_CODE, required=True)
    if code is not None and not _LOINC_CODE.fullmatch(code):
        v.add(f"{field}.code", "must be a LOINC code such as 11506-3")
    display = v.text(f"{field}.display", coding.display, max_len=MAX_DISPLAY)
    return {"type_system": system, "type_code": code, "type_display": display or ""}


def diagnosis_code(v: Violations, field: str, coding: types_pb2.Coding) -> dict[str, Any]:
    """An ICD-10 code with its code system URI."""
    system = v.text(f"{field}.system", coding.system, max_len=MAX_SYSTEM, required=True)
    if system is not None and system not in ICD10_SYSTEMS:
        v.add(
            f"{field}.system", f"must be an ICD-10 code system ({', '.join(sorted(ICD10_SYSTEMS))})"
        )
    code = v.text(f"{field}.code", coding.code, max_len=MAX_CODE, required=True)
    if code is not None and not _ICD10_CODE.fullmatch(code):
        v.add(f"{field}.code", "must be an ICD-10 code such as E11.9 (upper-case, with its dot)")
    display = v.text(f"{field}.display", coding.display, max_len=MAX_DISPLAY)
    return {"code_system": system, "code": code, "code_display": display or ""}


def diagnosis_fields(
    v: Violations, diagnosis: pb.Diagnosis, paths: frozenset[str] | list[str], today: dt.date
) -> dict[str, Any]:
    """The values of the named diagnosis fields."""
    values: dict[str, Any] = {}
    if "clinical_status" in paths:
        number = v.enum(
            "diagnosis.clinical_status",
            diagnosis.clinical_status,
            pb.ConditionClinicalStatus.DESCRIPTOR,
        )
        values["clinical_status"] = CLINICAL_STATUS.text(number) if number else None
    if "verification_status" in paths:
        number = v.enum(
            "diagnosis.verification_status",
            diagnosis.verification_status,
            pb.ConditionVerificationStatus.DESCRIPTOR,
        )
        values["verification_status"] = VERIFICATION_STATUS.text(number) if number else None
    if "rank" in paths:
        if not 1 <= diagnosis.rank <= 99:
            v.add("diagnosis.rank", "must be 1 to 99 (1 is the principal diagnosis)")
        values["rank"] = diagnosis.rank
    if "onset_date" in paths:
        values.update(onset(v, diagnosis, today))
    return values


def onset(v: Violations, diagnosis: pb.Diagnosis, today: dt.date) -> dict[str, Any]:
    """An optional, possibly partial onset date (month or day 0 = unknown), not in the future."""
    none = {"onset_year": None, "onset_month": None, "onset_day": None}
    if not diagnosis.HasField("onset_date"):
        return none
    d = diagnosis.onset_date
    field = "diagnosis.onset_date"
    if d.month == 0 and d.day != 0:
        v.add(field, "a day needs a month")
        return none
    checked = v.date(
        field, d.year, d.month or 1, d.day or 1, earliest=EARLIEST_DATE, latest=LATEST_DATE
    )
    if checked is None:
        return none
    if checked > today:
        v.add(field, "must not be in the future")
        return none
    return {"onset_year": d.year, "onset_month": d.month, "onset_day": d.day}
