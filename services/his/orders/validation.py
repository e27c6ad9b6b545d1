"""Validation of orders requests: every bad field named, values ready for the store."""

from __future__ import annotations

import math
import re
from typing import Any

from his.common.v1 import types_pb2
from his.orders.mapping import MEDICATION_REQUEST_STATUS, PRIORITY, SERVICE_REQUEST_STATUS
from his.orders.v1 import orders_service_pb2 as pb
from his.runtime.validation import Violations

MAX_REASON = 500
MAX_NOTE = 1000
MAX_INSTRUCTIONS = 500
MAX_SYSTEM = 200
MAX_CODE = 64
MAX_DISPLAY = 200
MAX_UNIT = 20
# Far above any real dose or pack; keeps floats sane (no inf, no overflow in sums).
MAX_AMOUNT = 1_000_000.0
LOINC = "http://loinc.org"
# LOINC codes: up to 7 digits, a hyphen and a check digit (for example 2345-7).
_LOINC_CODE = re.compile(r"[0-9]{1,7}-[0-9]")

MEDICATION_UPDATABLE = frozenset({"medication", "dosage", "dispense_quantity", "refills"})


def coding(v: Violations, field: str, value: types_pb2.Coding) -> dict[str, str | None]:
    """A coding whose system and code are required (display optional)."""
    return {
        "system": v.text(f"{field}.system", value.system, max_len=MAX_SYSTEM, required=True),
        "code": v.text(f"{field}.code", value.code, max_len=MAX_CODE, required=True),
        "display": v.text(f"{field}.display", value.display, max_len=MAX_DISPLAY) or "",
    }


def quantity(v: Violations, field: str, value: types_pb2.Quantity) -> tuple[float, str | None]:
    """A positive, finite amount with a UCUM unit of 1 to 20 characters."""
    if not (math.isfinite(value.value) and 0 < value.value <= MAX_AMOUNT):
        v.add(f"{field}.value", f"must be greater than 0 and at most {MAX_AMOUNT:g}")
    unit = v.text(f"{field}.unit", value.unit, max_len=MAX_UNIT, required=True)
    return value.value, unit


def reason(v: Violations, field: str, value: str) -> str | None:
    """A required reason of 1 to 500 characters."""
    return v.text(field, value, max_len=MAX_REASON, required=True)


def new_service_request(v: Violations, request: pb.ServiceRequest) -> dict[str, Any]:
    """The values of CreateServiceRequest's order (fields the service assigns are ignored)."""
    f = "service_request"
    code = coding(v, f"{f}.code", request.code)
    if code["system"] is not None and code["system"] != LOINC:
        v.add(f"{f}.code.system", f"must be {LOINC}")
    if code["code"] is not None and not _LOINC_CODE.fullmatch(code["code"]):
        v.add(f"{f}.code.code", "must be a LOINC code such as 2345-7")
    priority = v.enum(f"{f}.priority", request.priority, pb.RequestPriority.DESCRIPTOR)
    values: dict[str, Any] = {
        "patient_id": v.resource_id(f"{f}.patient", request.patient, collection="patients"),
        "encounter_id": v.resource_id(f"{f}.encounter", request.encounter, collection="encounters"),
        "performer_id": v.resource_id(
            f"{f}.performer", request.performer, collection="departments"
        ),
        "code_system": code["system"],
        "code": code["code"],
        "code_display": code["display"],
        "priority": PRIORITY.text(priority) if priority else None,
        "note": v.text(f"{f}.note", request.note, max_len=MAX_NOTE) or "",
    }
    if request.HasField("reason"):
        why = coding(v, f"{f}.reason", request.reason)
        values.update(
            reason_system=why["system"], reason_code=why["code"], reason_display=why["display"]
        )
    return values


def dosage(v: Violations, field: str, value: pb.Dosage) -> dict[str, Any]:
    """A dosage: dose, route, frequency, duration, instructions."""
    dose, dose_unit = quantity(v, f"{field}.dose", value.dose)
    route = coding(v, f"{field}.route", value.route)
    if not 1 <= value.frequency_per_day <= 24:
        v.add(f"{field}.frequency_per_day", "must be 1 to 24")
    if not 1 <= value.duration_days <= 365:
        v.add(f"{field}.duration_days", "must be 1 to 365")
    return {
        "dose_value": dose,
        "dose_unit": dose_unit,
        "route_system": route["system"],
        "route_code": route["code"],
        "route_display": route["display"],
        "frequency_per_day": value.frequency_per_day,
        "duration_days": value.duration_days,
        "instructions": v.text(
            f"{field}.instructions", value.instructions, max_len=MAX_INSTRUCTIONS
        )
        or "",
    }


def medication_fields(
    v: Violations, request: pb.MedicationRequest, paths: frozenset[str] | list[str]
) -> dict[str, Any]:
    """The values of the named prescription fields (`medication` as medication_id)."""
    f = "medication_request"
    values: dict[str, Any] = {}
    if "medication" in paths:
        values["medication_id"] = v.resource_id(
            f"{f}.medication", request.medication, collection="medications"
        )
    if "dosage" in paths:
        if not request.HasField("dosage"):
            v.add(f"{f}.dosage", "is required")
        values.update(dosage(v, f"{f}.dosage", request.dosage))
    if "dispense_quantity" in paths:
        amount, unit = quantity(v, f"{f}.dispense_quantity", request.dispense_quantity)
        if math.isfinite(amount) and amount > 0 and not amount.is_integer():
            # The pharmacy dispenses whole dispense units: 10.5 could never be completed.
            v.add(f"{f}.dispense_quantity.value", "must be a whole number of dispense units")
        values.update(dispense_value=amount, dispense_unit=unit)
    if "refills" in paths:
        if not 0 <= request.refills <= 12:
            v.add(f"{f}.refills", "must be 0 to 12")
        values["refills"] = request.refills
    return values


def new_medication_request(v: Violations, request: pb.MedicationRequest) -> dict[str, Any]:
    """The values of CreateMedicationRequest's prescription."""
    f = "medication_request"
    values = {
        "patient_id": v.resource_id(f"{f}.patient", request.patient, collection="patients"),
        "encounter_id": v.resource_id(f"{f}.encounter", request.encounter, collection="encounters"),
    }
    values.update(medication_fields(v, request, MEDICATION_UPDATABLE))
    return values


def service_request_statuses(v: Violations, field: str, numbers: Any) -> tuple[str, ...]:
    """A list filter's statuses as stored."""
    found = {v.enum(field, number, pb.ServiceRequestStatus.DESCRIPTOR) for number in numbers}
    return tuple(sorted(SERVICE_REQUEST_STATUS.text(n) for n in found if n))


def medication_request_statuses(v: Violations, field: str, numbers: Any) -> tuple[str, ...]:
    """A list filter's statuses as stored."""
    found = {v.enum(field, number, pb.MedicationRequestStatus.DESCRIPTOR) for number in numbers}
    return tuple(sorted(MEDICATION_REQUEST_STATUS.text(n) for n in found if n))
