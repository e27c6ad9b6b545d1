"""Database rows of the billing schema as proto messages, names of its resources, and the one
rounding rule of money."""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Sequence
from typing import Any

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.runtime import wire
from his.runtime.enums import EnumText

CHARGE_STATUS = EnumText(pb.ChargeItemStatus.DESCRIPTOR)
INVOICE_STATUS = EnumText(pb.InvoiceStatus.DESCRIPTOR)
PAYMENT_STATUS = EnumText(pb.PaymentStatus.DESCRIPTOR)
PAYMENT_METHOD = EnumText(pb.PaymentMethod.DESCRIPTOR)


def charge_item_name(charge_id: uuid.UUID) -> str:
    """`chargeItems/{id}`."""
    return f"chargeItems/{charge_id}"


def invoice_name(invoice_id: uuid.UUID) -> str:
    """`invoices/{id}`."""
    return f"invoices/{invoice_id}"


def payment_name(invoice_id: uuid.UUID, payment_id: uuid.UUID) -> str:
    """`invoices/{id}/payments/{id}`."""
    return f"invoices/{invoice_id}/payments/{payment_id}"


def tariff_item_name(item_id: uuid.UUID) -> str:
    """`tariffItems/{id}`."""
    return f"tariffItems/{item_id}"


def balance_name(patient_id: uuid.UUID) -> str:
    """`patients/{id}/billingBalance`."""
    return f"patients/{patient_id}/billingBalance"


def money(currency: str, amount_minor: int) -> types_pb2.Money:
    """A his.common.v1.Money."""
    return types_pb2.Money(currency_code=currency, amount_minor=amount_minor)


def total(unit_price_minor: int, quantity: decimal.Decimal) -> int:
    """The unit price times the quantity, rounded half away from zero to a whole minor unit (as
    PostgreSQL's round(numeric) does when a PLANNED charge is priced in SQL)."""
    exact = decimal.Decimal(unit_price_minor) * quantity
    return int(exact.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))


def _ref(collection: str, ident: uuid.UUID | None) -> str:
    return f"{collection}/{ident}" if ident is not None else ""


def charge_item_to_proto(row: Any) -> pb.ChargeItem:
    """A `billing.charge_items` row as a ChargeItem (a PLANNED one has no prices)."""
    item = pb.ChargeItem(
        name=charge_item_name(row.id),
        patient=f"patients/{row.patient_id}",
        encounter=_ref("encounters", row.encounter_id),
        code=wire.coding(row.code_system, row.code, row.code_display),
        quantity=types_pb2.Quantity(value=float(row.quantity_value), unit=row.quantity_unit),
        source=row.source,
        department=_ref("departments", row.department_id),
        occurrence_time=wire.timestamp(row.occurrence_time),
        status=CHARGE_STATUS.number(row.status),  # type: ignore[arg-type]
        cancel_reason=row.cancel_reason or "",
        invoice=_ref("invoices", row.invoice_id),
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
        reverses=_ref("chargeItems", row.reverses_id),
        source_event=str(row.source_event) if row.source_event else "",
    )
    if row.unit_price_minor is not None:
        item.unit_price.CopyFrom(money(row.currency, row.unit_price_minor))
        item.total_price.CopyFrom(money(row.currency, row.total_minor))
    return item


def invoice_to_proto(row: Any, lines: Sequence[uuid.UUID]) -> pb.Invoice:
    """A `billing.invoices` row and its lines' charge item ids as an Invoice."""
    due = max(row.total_minor - row.paid_minor, 0)
    if row.status == "cancelled":
        due = 0
    return pb.Invoice(
        name=invoice_name(row.id),
        patient=f"patients/{row.patient_id}",
        encounter=_ref("encounters", row.encounter_id),
        charge_items=[charge_item_name(line) for line in lines],
        total_net=money(row.currency, row.total_minor),
        total_gross=money(row.currency, row.total_minor),
        amount_paid=money(row.currency, row.paid_minor),
        balance_due=money(row.currency, due),
        status=INVOICE_STATUS.number(row.status),  # type: ignore[arg-type]
        cancel_reason=row.cancel_reason or "",
        issue_time=wire.timestamp(row.issue_time),
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )


def refund_to_proto(row: Any, currency: str) -> pb.Refund:
    """A `billing.refunds` row as a Refund."""
    return pb.Refund(
        amount=money(currency, row.amount_minor),
        reason=row.reason,
        refund_reference=row.refund_reference,
        refund_time=wire.timestamp(row.refund_time),
        cashier=_ref("staff", row.cashier_id),
    )


def payment_to_proto(row: Any, refunds: Sequence[Any]) -> pb.Payment:
    """A `billing.payments` row and its refunds (oldest first) as a Payment."""
    payment = pb.Payment(
        name=payment_name(row.invoice_id, row.id),
        amount=money(row.currency, row.amount_minor),
        method=PAYMENT_METHOD.number(row.method),  # type: ignore[arg-type]
        external_reference=row.external_reference,
        received_time=wire.timestamp(row.received_time),
        status=PAYMENT_STATUS.number(row.status),  # type: ignore[arg-type]
        cashier=_ref("staff", row.cashier_id),
        create_time=wire.timestamp(row.create_time),
        refunded_amount=money(row.currency, row.refunded_minor),
        refunds=[refund_to_proto(r, row.currency) for r in refunds],
    )
    if refunds:
        latest = refunds[-1]
        payment.refund_reason = latest.reason
        payment.refund_reference = latest.refund_reference
        payment.refund_time.FromDatetime(latest.refund_time)
    return payment


def tariff_item_to_proto(row: Any) -> pb.TariffItem:
    """A `billing.tariff_items` row (with `end_time`, the next item's effective time) as a
    TariffItem."""
    return pb.TariffItem(
        name=tariff_item_name(row.id),
        code=wire.coding(row.code_system, row.code, row.code_display),
        unit_price=money(row.currency, row.unit_price_minor),
        effective_time=wire.timestamp(row.effective_time),
        end_time=wire.timestamp(row.end_time),
        create_time=wire.timestamp(row.create_time),
    )
