"""Database rows of the pharmacy schema as proto messages, and names of its resources."""

from __future__ import annotations

import uuid
from typing import Any

from his.common.v1 import types_pb2
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.runtime import wire
from his.runtime.enums import EnumText

DISPENSE_STATUS = EnumText(pb.MedicationDispenseStatus.DESCRIPTOR)
ADJUSTMENT_REASON = EnumText(pb.StockAdjustmentReason.DESCRIPTOR)

ATC = "http://www.whocc.no/atc"


def medication_name(medication_id: uuid.UUID) -> str:
    """`medications/{id}`."""
    return f"medications/{medication_id}"


def stock_item_name(medication_id: uuid.UUID, stock_item_id: uuid.UUID) -> str:
    """`medications/{id}/stockItems/{id}`."""
    return f"medications/{medication_id}/stockItems/{stock_item_id}"


def dispense_name(dispense_id: uuid.UUID) -> str:
    """`medicationDispenses/{id}`."""
    return f"medicationDispenses/{dispense_id}"


def prescription_name(prescription_id: uuid.UUID) -> str:
    """`medicationRequests/{id}`: a prescription is named as orders names it."""
    return f"medicationRequests/{prescription_id}"


def money(currency: str, amount_minor: int) -> types_pb2.Money:
    """A his.common.v1.Money."""
    return types_pb2.Money(currency_code=currency, amount_minor=amount_minor)


def medication_to_proto(row: Any) -> pb.Medication:
    """A `pharmacy.medications` row as a Medication."""
    return pb.Medication(
        name=medication_name(row.id),
        code=wire.coding(ATC, row.atc_code, row.atc_display),
        display_name=row.display_name,
        form=wire.coding(row.form_system, row.form_code, row.form_display),
        strength=types_pb2.Quantity(value=row.strength_value, unit=row.strength_unit),
        dispense_unit=row.dispense_unit,
        unit_price=money(row.currency, row.unit_price_minor),
        active=row.active,
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )


def stock_item_to_proto(row: Any) -> pb.StockItem:
    """A `pharmacy.stock_items` row as a StockItem."""
    return pb.StockItem(
        name=stock_item_name(row.medication_id, row.id),
        lot_number=row.lot_number,
        expiry_date=wire.date(row.expiry_date),
        location=f"departments/{row.location_id}",
        quantity_on_hand=row.on_hand,
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.version),
    )


def dispense_to_proto(row: Any, remaining: int | None = None) -> pb.MedicationDispense:
    """A `pharmacy.dispenses` row as a MedicationDispense; `remaining` is the prescription's
    remaining quantity (read with the row, or known to the caller)."""
    return pb.MedicationDispense(
        name=dispense_name(row.id),
        medication_request=prescription_name(row.prescription_id),
        patient=f"patients/{row.patient_id}",
        encounter=f"encounters/{row.encounter_id}",
        medication=medication_name(row.medication_id),
        stock_item=stock_item_name(row.medication_id, row.stock_item_id),
        location=f"departments/{row.location_id}",
        lot_number=row.lot_number,
        quantity=row.quantity,
        unit_price=money(row.currency, row.unit_price_minor),
        status=DISPENSE_STATUS.number(row.status),  # type: ignore[arg-type]
        cancel_reason=row.cancel_reason or "",
        dispenser=f"staff/{row.dispenser_id}" if row.dispenser_id else "",
        handed_over_time=wire.timestamp(row.handed_over_time),
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.revision),
        prescription_remaining_quantity=row.remaining if remaining is None else remaining,
    )
