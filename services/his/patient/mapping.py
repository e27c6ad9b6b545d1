"""Database rows of the patient schema as proto messages, and identifiers in and out of their
encrypted columns."""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
import uuid
from dataclasses import dataclass, fields
from typing import Any

from his.patient.v1 import patient_service_pb2 as pb
from his.runtime import wire
from his.runtime.enums import EnumText
from his.runtime.fieldcrypt import FieldCipher

STATE = EnumText(pb.PatientState.DESCRIPTOR)
GENDER = EnumText(pb.AdministrativeGender.DESCRIPTOR)
SCOPE = EnumText(pb.ConsentScope.DESCRIPTOR)
PURPOSE = EnumText(pb.PurposeOfUse.DESCRIPTOR)
CONSENT_STATUS = EnumText(pb.ConsentStatus.DESCRIPTOR)


def patient_name(patient_id: uuid.UUID) -> str:
    """`patients/{id}`."""
    return f"patients/{patient_id}"


def consent_name(patient_id: uuid.UUID, consent_id: uuid.UUID) -> str:
    """`patients/{id}/consents/{id}`."""
    return f"patients/{patient_id}/consents/{consent_id}"


def format_mrn(number: int) -> str:
    """The printed MRN: sequence number plus a Luhn check digit, so desk typos are caught."""
    digits = str(number)
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return f"{digits}{(10 - total % 10) % 10}"


# Plain values (what validation produces) → their encrypted column in `patients`. The request
# fingerprint is a digest of a request holding the identifiers, so it is sealed like them.
ENCRYPTED = {
    "national_id_system": "national_id_system_enc",
    "national_id_value": "national_id_value_enc",
    "phone": "phone_enc",
    "address": "address_enc",
    "create_request_fingerprint": "create_request_fingerprint_enc",
}
# Blind-index kinds; the cipher prefixes its schema, so they cannot match another service's.
NATIONAL_ID_INDEX = "national_id"
PHONE_INDEX = "phone"


@dataclass(frozen=True)
class PatientRecord:
    """A `patient.patients` row with its identifiers decrypted."""

    id: uuid.UUID
    mrn_number: int
    state: str
    family_name: str
    given_names: list[str]
    family_key: str
    given_key: str
    gender: str
    birth_date: dt.date
    national_id_system: str | None
    national_id_value: str | None
    phone: str | None
    address: dict[str, Any] | None
    merged_into: uuid.UUID | None
    create_request_id: str | None
    create_request_fingerprint: str | None
    version: int
    create_time: dt.datetime
    update_time: dt.datetime


_SEPARATORS = re.compile(r"[\s\-]+")
_PLAIN_COLUMNS = tuple(f.name for f in fields(PatientRecord) if f.name not in ENCRYPTED)


def canonical_national_id(system: str, value: str) -> tuple[str, str]:
    """One spelling per identifier, for the blind index: NFKC (full-width digits are digits),
    upper case (the check character of a resident id is written "x" or "X"), no spaces or
    hyphens. What is stored and shown stays as entered."""
    canonical = unicodedata.normalize("NFKC", value).upper()
    return unicodedata.normalize("NFKC", system).strip(), _SEPARATORS.sub("", canonical)


def national_id_index(cipher: FieldCipher, system: str, value: str) -> bytes:
    """The blind index of a national identifier: equal for every spelling of one identifier."""
    return cipher.blind_index(NATIONAL_ID_INDEX, *canonical_national_id(system, value))


def phone_index(cipher: FieldCipher, phone: str) -> bytes:
    """The blind index of a validated phone number (matched exactly)."""
    return cipher.blind_index(PHONE_INDEX, phone)


def encrypt_identifiers(cipher: FieldCipher, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with plain identifiers replaced by their encrypted and blind-index columns.

    The cipher must be ready (`await cipher.ready(session)`).
    """
    out = {name: value for name, value in values.items() if name not in ENCRYPTED}
    for name, column in ENCRYPTED.items():
        if name not in values:
            continue
        value = values[name]
        if value is not None and name == "address":
            value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        out[column] = None if value is None else cipher.encrypt(f"patients.{column}", value)
    if "national_id_value" in values:
        system, value = values.get("national_id_system"), values["national_id_value"]
        out["national_id_bidx"] = (
            None if system is None or value is None else national_id_index(cipher, system, value)
        )
    if "phone" in values:
        phone = values["phone"]
        out["phone_bidx"] = None if phone is None else phone_index(cipher, phone)
    return out


def encrypted_values(row: Any) -> list[bytes | None]:
    """The encrypted values of a `patients` row (to load their data keys before decrypting)."""
    return [getattr(row, column) for column in ENCRYPTED.values()]


def decrypt_patient(cipher: FieldCipher, row: Any) -> PatientRecord:
    """A `patients` row with its identifiers decrypted (their data keys must be loaded)."""

    def plain(name: str) -> str | None:
        column = ENCRYPTED[name]
        value = getattr(row, column)
        return None if value is None else cipher.decrypt(f"patients.{column}", value)

    address = plain("address")
    return PatientRecord(
        **{name: getattr(row, name) for name in _PLAIN_COLUMNS},
        national_id_system=plain("national_id_system"),
        national_id_value=plain("national_id_value"),
        phone=plain("phone"),
        address=None if address is None else json.loads(address),
        create_request_fingerprint=plain("create_request_fingerprint"),
    )


def patient_to_proto(row: PatientRecord) -> pb.Patient:
    """A decrypted `patient.patients` row as a Patient."""
    patient = pb.Patient(
        name=patient_name(row.id),
        mrn=format_mrn(row.mrn_number),
        state=STATE.number(row.state),  # type: ignore[arg-type]
        family_name=row.family_name,
        given_names=list(row.given_names),
        gender=GENDER.number(row.gender),  # type: ignore[arg-type]
        birth_date=wire.date(row.birth_date),
        phone=row.phone or "",
        merged_into=patient_name(row.merged_into) if row.merged_into else "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )
    if row.national_id_system is not None and row.national_id_value is not None:
        patient.national_id.system = row.national_id_system
        patient.national_id.value = row.national_id_value
    if row.address:
        patient.address.CopyFrom(pb.Address(**row.address))
    return patient


def consent_to_proto(row: Any) -> pb.Consent:
    """A `patient.consents` row as a Consent."""
    consent = pb.Consent(
        name=consent_name(row.patient_id, row.id),
        scope=SCOPE.number(row.scope),  # type: ignore[arg-type]
        purpose=PURPOSE.number(row.purpose),  # type: ignore[arg-type]
        status=CONSENT_STATUS.number(row.status),  # type: ignore[arg-type]
        note=row.note,
        create_time=wire.timestamp(row.create_time),
        revoke_time=wire.timestamp(row.revoke_time),
    )
    consent.period.start_time.FromDatetime(row.period_start)
    if row.period_end is not None:
        consent.period.end_time.FromDatetime(row.period_end)
    return consent
