"""Database rows of the patient schema as proto messages."""

from __future__ import annotations

import uuid
from typing import Any

from his.patient.v1 import patient_service_pb2 as pb
from his.runtime import wire
from his.runtime.enums import EnumText

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


def patient_to_proto(row: Any) -> pb.Patient:
    """A `patient.patients` row as a Patient."""
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
    if row.national_id_value is not None:
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
