"""Validation of billing requests (bad fields named) and of the amounts they carry."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from typing import Any

from his.billing.mapping import PAYMENT_METHOD
from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.runtime.validation import Violations, reference

MAX_CODE = 200
MAX_DISPLAY = 200
MAX_UNIT = 20
MAX_SOURCE = 200
MAX_REASON = 500
MAX_REFERENCE = 100
MAX_QUANTITY = 1_000_000
MAX_INVOICE_LINES = 1000
# Amounts beyond these are typing errors, not prices (and keep price x quantity within int64).
MAX_PRICE_MINOR = 10**11
MAX_PAYMENT_MINOR = 10**15
# The longest period ReconcileCharges and a cross-invoice ListPayments cover.
MAX_PERIOD = dt.timedelta(days=31)
# A clock a little ahead of ours is not "the future".
CLOCK_SKEW = dt.timedelta(minutes=5)


def coding(v: Violations, field: str, coding: types_pb2.Coding) -> dict[str, Any]:
    """A billing code's columns: system and code 1 to 200 characters, an optional display."""
    return {
        "code_system": v.text(f"{field}.system", coding.system, max_len=MAX_CODE, required=True),
        "code": v.text(f"{field}.code", coding.code, max_len=MAX_CODE, required=True),
        "code_display": v.text(f"{field}.display", coding.display, max_len=MAX_DISPLAY) or "",
    }


def quantity(v: Violations, field: str, given: types_pb2.Quantity) -> dict[str, Any]:
    """A quantity above 0 and at most 1000000, with a UCUM unit of up to 20 characters."""
    value = given.value
    if not (math.isfinite(value) and 0 < value <= MAX_QUANTITY):
        v.add(f"{field}.value", f"must be greater than 0 and at most {MAX_QUANTITY}")
        value = 1.0
    unit = v.text(f"{field}.unit", given.unit, max_len=MAX_UNIT, required=True)
    if unit is not None and " " in unit:
        v.add(f"{field}.unit", "must be a UCUM unit without spaces, for example {tablet} or h")
    # The shortest decimal that is this float: what the caller wrote, not its binary neighbour.
    return {"quantity_value": decimal.Decimal(repr(value)), "quantity_unit": unit}


def amount(
    v: Violations, field: str, given: types_pb2.Money, currency: str, *, most: int, positive: bool
) -> int:
    """An amount in the billing currency: above 0 (`positive`) or at least 0, at most `most`."""
    if given.currency_code != currency:
        v.add(f"{field}.currency_code", f"must be {currency}, the billing currency")
    low = 1 if positive else 0
    if not low <= given.amount_minor <= most:
        v.add(f"{field}.amount_minor", f"must be {low} to {most}")
    return given.amount_minor


def past_instant(
    v: Violations, field: str, stamp: Any, present: bool, now: dt.datetime
) -> dt.datetime:
    """An optional time not in the future; unset means now."""
    if not present:
        return now
    value = v.instant(field, stamp)
    if value is None:
        return now
    if value > now + CLOCK_SKEW:
        v.add(field, "must not be in the future")
    return value


def new_charge(
    v: Violations, item: pb.ChargeItem, currency: str, now: dt.datetime
) -> dict[str, Any]:
    """The columns of CreateChargeItem's charge item (output-only fields ignored)."""
    field = "charge_item"
    values: dict[str, Any] = {
        "patient_id": v.resource_id(f"{field}.patient", item.patient, collection="patients"),
        "encounter_id": reference(v, f"{field}.encounter", item.encounter, "encounters"),
        "department_id": reference(v, f"{field}.department", item.department, "departments"),
        "source": v.text(f"{field}.source", item.source, max_len=MAX_SOURCE) or "",
        "occurrence_time": past_instant(
            v,
            f"{field}.occurrence_time",
            item.occurrence_time,
            item.HasField("occurrence_time"),
            now,
        ),
        "currency": currency,
    }
    values.update(coding(v, f"{field}.code", item.code))
    values.update(quantity(v, f"{field}.quantity", item.quantity))
    if not item.HasField("unit_price"):
        v.add(f"{field}.unit_price", "is required")
    price = amount(
        v, f"{field}.unit_price", item.unit_price, currency, most=MAX_PRICE_MINOR, positive=False
    )
    values["unit_price_minor"] = price
    return values


def new_tariff_item(v: Violations, item: pb.TariffItem, currency: str) -> dict[str, Any]:
    """The columns of CreateTariffItem's item."""
    field = "tariff_item"
    values = coding(v, f"{field}.code", item.code)
    if not item.HasField("unit_price"):
        v.add(f"{field}.unit_price", "is required")
    values["unit_price_minor"] = amount(
        v, f"{field}.unit_price", item.unit_price, currency, most=MAX_PRICE_MINOR, positive=False
    )
    values["currency"] = currency
    if not item.HasField("effective_time"):
        v.add(f"{field}.effective_time", "is required")
        values["effective_time"] = None
    else:
        values["effective_time"] = v.instant(f"{field}.effective_time", item.effective_time)
    return values


def invoice_lines(v: Violations, names: Any) -> list[uuid.UUID]:
    """The listed charge items of CreateInvoice: at most 1000, no duplicates."""
    if len(names) > MAX_INVOICE_LINES:
        v.add("invoice.charge_items", f"at most {MAX_INVOICE_LINES} charge items")
        return []
    ids: list[uuid.UUID] = []
    for index, name in enumerate(names):
        found = v.resource_id(f"invoice.charge_items[{index}]", name, collection="chargeItems")
        if found is None:
            continue
        if found in ids:
            v.add(f"invoice.charge_items[{index}]", "is listed twice")
            continue
        ids.append(found)
    return ids


def reason(v: Violations, field: str, value: str) -> str | None:
    """A required reason of 1 to 500 characters."""
    return v.text(field, value, max_len=MAX_REASON, required=True)


def new_payment(
    v: Violations, payment: pb.Payment, currency: str, now: dt.datetime
) -> dict[str, Any]:
    """The columns of RecordPayment's payment."""
    field = "payment"
    if not payment.HasField("amount"):
        v.add(f"{field}.amount", "is required")
    value = amount(
        v, f"{field}.amount", payment.amount, currency, most=MAX_PAYMENT_MINOR, positive=True
    )
    method = v.enum(f"{field}.method", payment.method, pb.PaymentMethod.DESCRIPTOR)
    cash = method == pb.PAYMENT_METHOD_CASH
    reference_text = v.text(
        f"{field}.external_reference",
        payment.external_reference,
        max_len=MAX_REFERENCE,
        required=method is not None and not cash,
    )
    return {
        "currency": currency,
        "amount_minor": value,
        "method": PAYMENT_METHOD.text(method) if method else None,
        "external_reference": reference_text or "",
        "received_time": past_instant(
            v,
            f"{field}.received_time",
            payment.received_time,
            payment.HasField("received_time"),
            now,
        ),
    }


def period(
    v: Violations, field: str, given: types_pb2.Period, present: bool, *, required: bool
) -> tuple[dt.datetime, dt.datetime] | None:
    """A period [start, end) with both ends, at most 31 days long (Violations.period); None when
    not required and neither end is set, or when it is bad (then `v` names why)."""
    if not required and not (
        present and (given.HasField("start_time") or given.HasField("end_time"))
    ):
        return None
    seen = len(v.items)
    start, end = v.period(field, given, max_span=MAX_PERIOD)
    if len(v.items) > seen or start is None or end is None:
        return None
    return start, end
