"""Validation of patient requests: proto messages in, plain column values out."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from his.patient.mapping import GENDER, PURPOSE, SCOPE
from his.patient.v1 import patient_service_pb2 as pb
from his.runtime.validation import Violations

EARLIEST_BIRTH = dt.date(1880, 1, 1)
MAX_NAME = 100
MAX_GIVEN_NAMES = 10
MAX_NOTE = 500
_PHONE = re.compile(r"\+?[0-9]{6,20}")
_COUNTRY = re.compile(r"[A-Z]{2}")

# Paths UpdatePatient accepts; everything else in Patient is output only.
UPDATABLE = frozenset(
    {"family_name", "given_names", "gender", "birth_date", "national_id", "phone", "address"}
)


def patient_fields(
    v: Violations, patient: pb.Patient, prefix: str, paths: frozenset[str]
) -> dict[str, Any]:
    """Column values for the given Patient fields; each problem is recorded under `prefix.field`."""
    values: dict[str, Any] = {}
    if "family_name" in paths:
        values["family_name"] = v.text(
            f"{prefix}.family_name", patient.family_name, max_len=MAX_NAME, required=True
        )
    if "given_names" in paths:
        values["given_names"] = _given_names(v, patient, prefix)
    if "gender" in paths:
        number = v.enum(f"{prefix}.gender", patient.gender, pb.AdministrativeGender.DESCRIPTOR)
        values["gender"] = GENDER.text(number) if number else None
    if "birth_date" in paths:
        values["birth_date"] = _birth_date(v, patient, prefix)
    if "national_id" in paths:
        values.update(_national_id(v, patient, prefix))
    if "phone" in paths:
        values["phone"] = phone(v, f"{prefix}.phone", patient.phone)
    if "address" in paths:
        values["address"] = _address(v, patient, prefix)
    return values


def _given_names(v: Violations, patient: pb.Patient, prefix: str) -> list[str]:
    field = f"{prefix}.given_names"
    if not patient.given_names:
        v.add(field, "needs at least one given name")
        return []
    if len(patient.given_names) > MAX_GIVEN_NAMES:
        v.add(field, f"must have at most {MAX_GIVEN_NAMES} names")
    names = [
        v.text(f"{field}[{i}]", name, max_len=MAX_NAME, required=True)
        for i, name in enumerate(patient.given_names)
    ]
    return [name for name in names if name]


def _birth_date(v: Violations, patient: pb.Patient, prefix: str) -> dt.date | None:
    field = f"{prefix}.birth_date"
    if not patient.HasField("birth_date"):
        v.add(field, "is required")
        return None
    date = patient.birth_date
    # Tomorrow in UTC is still "today" somewhere the hospital group may operate.
    latest = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    return v.date(field, date.year, date.month, date.day, earliest=EARLIEST_BIRTH, latest=latest)


def national_id(v: Violations, identifier: Any, field: str) -> tuple[str, str] | None:
    """(system, value) of an Identifier, None when both parts are empty."""
    if not identifier.system and not identifier.value:
        return None
    system = v.text(f"{field}.system", identifier.system, max_len=200, required=True)
    value = v.text(f"{field}.value", identifier.value, max_len=64, required=True)
    if system is None or value is None:
        return None
    return system, value


def _national_id(v: Violations, patient: pb.Patient, prefix: str) -> dict[str, Any]:
    pair = national_id(v, patient.national_id, f"{prefix}.national_id")
    return {
        "national_id_system": pair[0] if pair else None,
        "national_id_value": pair[1] if pair else None,
    }


def phone(v: Violations, field: str, value: str) -> str | None:
    """An optional phone number: `+` and 6 to 20 digits."""
    if not value:
        return None
    if not _PHONE.fullmatch(value):
        v.add(field, "must be an optional '+' followed by 6 to 20 digits")
        return None
    return value


def _address(v: Violations, patient: pb.Patient, prefix: str) -> dict[str, Any] | None:
    if not patient.HasField("address"):
        return None
    address = patient.address
    field = f"{prefix}.address"
    if len(address.lines) > 4:
        v.add(f"{field}.lines", "must have at most 4 lines")
    lines = [
        v.text(f"{field}.lines[{i}]", line, max_len=200) or ""
        for i, line in enumerate(address.lines)
    ]
    result: dict[str, Any] = {"lines": [line for line in lines if line]}
    for part, limit in (("city", 100), ("district", 100), ("state", 100), ("postal_code", 20)):
        text = v.text(f"{field}.{part}", getattr(address, part), max_len=limit)
        if text:
            result[part] = text
    if address.country:
        if not _COUNTRY.fullmatch(address.country):
            v.add(f"{field}.country", "must be an ISO 3166 alpha-2 code such as CN")
        else:
            result["country"] = address.country
    return result if any(result.values()) else None


def consent_fields(v: Violations, consent: pb.Consent, now: dt.datetime) -> dict[str, Any]:
    """Column values of a consent to grant."""
    scope = v.enum("consent.scope", consent.scope, pb.ConsentScope.DESCRIPTOR)
    purpose = v.enum("consent.purpose", consent.purpose, pb.PurposeOfUse.DESCRIPTOR)
    start = now
    end: dt.datetime | None = None
    if consent.HasField("period"):
        if consent.period.HasField("start_time"):
            start = v.instant("consent.period.start_time", consent.period.start_time) or now
        if consent.period.HasField("end_time"):
            end = v.instant("consent.period.end_time", consent.period.end_time)
    if end is not None and end <= start:
        v.add("consent.period.end_time", "must be after the start of the period")
    note = v.text("consent.note", consent.note, max_len=MAX_NOTE) or ""
    return {
        "scope": SCOPE.text(scope) if scope else None,
        "purpose": PURPOSE.text(purpose) if purpose else None,
        "period_start": start,
        "period_end": end,
        "note": note,
    }
