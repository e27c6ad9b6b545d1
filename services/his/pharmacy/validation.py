"""Validation of pharmacy requests and of the prescriptions orders delivers (bad fields named)."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.mapping import ADJUSTMENT_REASON, ATC
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.runtime.enums import EnumText
from his.runtime.validation import LATEST_DATE, Violations

MAX_DISPLAY = 200
MAX_SYSTEM = 200
MAX_UNIT = 20
MAX_LOT = 50
MAX_NOTE = 500
MAX_RECEIVE = 1_000_000
MAX_ADJUST = 1_000_000
MAX_DISPENSE = 100_000
# Prices and strengths beyond these are typing errors, not products.
MAX_PRICE_MINOR = 10**12
MAX_STRENGTH = 1e9
MAX_PREFIX = 100

# A complete level-5 ATC code: letter, two digits, two letters, two digits (N02BE01).
_ATC_CODE = re.compile(r"[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}")
_ATC_PREFIX = re.compile(r"[A-Z]([0-9]([0-9]([A-Z]([A-Z]([0-9]([0-9])?)?)?)?)?)?")
_CURRENCY = re.compile(r"[A-Z]{3}")

MEDICATION_UPDATABLE = frozenset({"display_name", "form", "strength", "unit_price", "active"})

ORDER_STATUS = EnumText(orders_pb.MedicationRequestStatus.DESCRIPTOR)
# A status orders added after this build: kept as not dispensable until this build knows it.
UNKNOWN_STATUS = "unknown"


def _unit(v: Violations, field: str, value: str) -> str | None:
    """A UCUM unit or annotation of 1 to 20 characters without spaces."""
    unit = v.text(field, value, max_len=MAX_UNIT, required=True)
    if unit is not None and " " in unit:
        v.add(field, "must be a UCUM unit without spaces, for example mg or {tablet}")
    return unit


def _coding(v: Violations, field: str, coding: types_pb2.Coding) -> dict[str, Any]:
    return {
        "system": v.text(f"{field}.system", coding.system, max_len=MAX_SYSTEM, required=True),
        "code": v.text(f"{field}.code", coding.code, max_len=MAX_SYSTEM, required=True),
        "display": v.text(f"{field}.display", coding.display, max_len=MAX_DISPLAY) or "",
    }


def display_name(v: Violations, field: str, value: str) -> str | None:
    """A required product name of 1 to 200 characters."""
    return v.text(field, value, max_len=MAX_DISPLAY, required=True)


def form(v: Violations, field: str, coding: types_pb2.Coding) -> dict[str, Any]:
    """The dose form's columns."""
    found = _coding(v, field, coding)
    return {
        "form_system": found["system"],
        "form_code": found["code"],
        "form_display": found["display"],
    }


def strength(v: Violations, field: str, quantity: types_pb2.Quantity) -> dict[str, Any]:
    """The strength's columns: a finite value above 0 and a unit."""
    if not (math.isfinite(quantity.value) and 0 < quantity.value <= MAX_STRENGTH):
        v.add(f"{field}.value", f"must be greater than 0 and at most {MAX_STRENGTH:g}")
    return {
        "strength_value": quantity.value,
        "strength_unit": _unit(v, f"{field}.unit", quantity.unit),
    }


def price(v: Violations, field: str, money: types_pb2.Money) -> dict[str, Any]:
    """A unit price: a 3-letter currency and zero or more minor units."""
    if not _CURRENCY.fullmatch(money.currency_code):
        v.add(f"{field}.currency_code", "must be a 3-letter ISO 4217 code such as CNY")
    if not 0 <= money.amount_minor <= MAX_PRICE_MINOR:
        v.add(f"{field}.amount_minor", f"must be 0 to {MAX_PRICE_MINOR}")
    return {"currency": money.currency_code, "unit_price_minor": money.amount_minor}


def new_medication(v: Violations, medication: pb.Medication) -> dict[str, Any]:
    """The columns of CreateMedication's medication (output-only fields ignored)."""
    code = medication.code
    if code.system != ATC:
        v.add("medication.code.system", f"must be {ATC}")
    if not _ATC_CODE.fullmatch(code.code):
        v.add("medication.code.code", "must be a level-5 ATC code of 7 characters such as N02BE01")
    values: dict[str, Any] = {
        "atc_code": code.code,
        "atc_display": v.text("medication.code.display", code.display, max_len=MAX_DISPLAY) or "",
        "display_name": display_name(v, "medication.display_name", medication.display_name),
        "dispense_unit": _unit(v, "medication.dispense_unit", medication.dispense_unit),
    }
    values.update(form(v, "medication.form", medication.form))
    values.update(strength(v, "medication.strength", medication.strength))
    values.update(price(v, "medication.unit_price", medication.unit_price))
    return values


def medication_changes(
    v: Violations, medication: pb.Medication, paths: list[str]
) -> dict[str, Any]:
    """The new values of UpdateMedication's mask paths."""
    values: dict[str, Any] = {}
    if "display_name" in paths:
        values["display_name"] = display_name(v, "medication.display_name", medication.display_name)
    if "form" in paths:
        values.update(form(v, "medication.form", medication.form))
    if "strength" in paths:
        values.update(strength(v, "medication.strength", medication.strength))
    if "unit_price" in paths:
        values.update(price(v, "medication.unit_price", medication.unit_price))
    if "active" in paths:
        values["active"] = medication.active
    return values


def lot_number(v: Violations, field: str, value: str) -> str | None:
    """A lot number of 1 to 50 characters."""
    return v.text(field, value, max_len=MAX_LOT, required=True)


def expiry(v: Violations, field: str, date: types_pb2.Date, present: bool, today: dt.date) -> Any:
    """A full expiry date after today."""
    if not present:
        v.add(field, "is required")
        return None
    value = v.date(field, date.year, date.month, date.day, latest=LATEST_DATE)
    if value is not None and value <= today:
        v.add(field, "must be after today")
        return None
    return value


def quantity(v: Violations, field: str, value: int, most: int) -> int:
    """A whole quantity from 1 to `most`."""
    if not 1 <= value <= most:
        v.add(field, f"must be 1 to {most}")
    return value


def adjustment(v: Violations, request: pb.AdjustStockRequest) -> dict[str, Any]:
    """AdjustStock's change, reason and note."""
    if request.quantity_change == 0 or abs(request.quantity_change) > MAX_ADJUST:
        v.add("quantity_change", f"must not be zero and at most {MAX_ADJUST} either way")
    number = v.enum("reason", request.reason, pb.StockAdjustmentReason.DESCRIPTOR)
    required = number == pb.STOCK_ADJUSTMENT_REASON_OTHER
    note = v.text("note", request.note, max_len=MAX_NOTE, required=required)
    if not request.etag:
        v.add("etag", "is required (the stock item's etag as last read)")
    return {
        "quantity_change": request.quantity_change,
        "reason": ADJUSTMENT_REASON.text(number) if number else None,
        "note": note or "",
    }


def atc_prefix(v: Violations, field: str, value: str) -> str | None:
    """An optional ATC code prefix of 1 to 7 characters."""
    if not value:
        return None
    if not _ATC_PREFIX.fullmatch(value):
        v.add(field, "must be the start of an ATC code, 1 to 7 characters such as C09")
        return None
    return value


def name_prefix(v: Violations, field: str, value: str) -> str | None:
    """An optional display-name prefix of 1 to 100 characters."""
    return v.text(field, value, max_len=MAX_PREFIX) if value else None


# --- prescriptions as orders delivers them ----------------------------------------------------


def prescription(request: orders_pb.MedicationRequest) -> dict[str, Any]:
    """The columns of the pharmacy's copy of a delivered medication request; INVALID_ARGUMENT
    naming the bad field (orders' relay then keeps the event as a dead letter)."""
    v = Violations()
    field = "medication_request"
    # Only ACTIVE is dispensable; any other status is kept as orders names it.
    status = None
    if request.status == 0:
        v.add(f"{field}.status", "is required")
    elif request.status in orders_pb.MedicationRequestStatus.DESCRIPTOR.values_by_number:
        status = ORDER_STATUS.text(request.status)
    else:
        status = UNKNOWN_STATUS
    amount = request.dispense_quantity.value
    if not (math.isfinite(amount) and 1 <= amount <= MAX_DISPENSE * 100):
        v.add(f"{field}.dispense_quantity.value", "must be at least one whole dispense unit")
        amount = 0
    if not 0 <= request.refills <= 12:
        v.add(f"{field}.refills", "must be 0 to 12")
    dose = request.dosage.dose.value
    values = {
        "id": v.resource_id(f"{field}.name", request.name, collection="medicationRequests"),
        "patient_id": v.resource_id(f"{field}.patient", request.patient, collection="patients"),
        "encounter_id": v.resource_id(
            f"{field}.encounter", request.encounter, collection="encounters"
        ),
        "prescriber_id": (
            v.resource_id(f"{field}.prescriber", request.prescriber, collection="staff")
            if request.prescriber
            else None
        ),
        "medication_id": v.resource_id(
            f"{field}.medication", request.medication, collection="medications"
        ),
        "status": status,
        "dose_value": dose if math.isfinite(dose) else 0.0,
        "dose_unit": request.dosage.dose.unit[:MAX_UNIT],
        # Whole dispense units: a fraction left over cannot be dispensed (never more than written).
        "dispense_quantity": int(amount),
        "refills": request.refills,
        "total_quantity": int(amount) * (1 + request.refills),
        "currency": request.unit_price.currency_code,
        "unit_price_minor": request.unit_price.amount_minor,
    }
    v.raise_if_any()
    return values
