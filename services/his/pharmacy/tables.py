"""The pharmacy schema: the formulary, stock by lot and location, the pharmacy's copy of the
prescriptions (from orders' MedicationRequestChanged events) and the dispenses made against them.

Invariants live here where the database can hold them: stock is never below zero and a copy's
dispensed quantity never below zero (CHECKs, behind the conditional UPDATEs of store.py), one
stock item per medication, location and lot, one formulary entry per drug, form and strength, and
a dispense's status agrees with its hand-over time and cancel reason.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from his.runtime.inbox import declare as declare_inbox
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "pharmacy"
metadata = MetaData(schema=SCHEMA)

DISPENSE_STATUSES = ("in_progress", "completed", "cancelled")
# orders' MedicationRequestStatus as text; only "active" is dispensable ("unknown": a status
# orders added that this build does not know yet).
PRESCRIPTION_STATUSES = (
    "active",
    "cancelled",
    "completed",
    "on_hold",
    "entered_in_error",
    "unknown",
)
ADJUSTMENT_REASONS = (
    "count_correction",
    "damaged",
    "expired",
    "recalled",
    "returned_to_supplier",
    "other",
)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _times() -> tuple[Column[object], Column[object]]:
    return (
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


medications = Table(
    "medications",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("atc_code", Text, nullable=False),
    Column("atc_display", Text, nullable=False, server_default=""),
    Column("display_name", Text, nullable=False),
    Column("form_system", Text, nullable=False),
    Column("form_code", Text, nullable=False),
    Column("form_display", Text, nullable=False, server_default=""),
    Column("strength_value", Float, nullable=False),
    Column("strength_unit", Text, nullable=False),
    Column("dispense_unit", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("unit_price_minor", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    *_times(),
    CheckConstraint("unit_price_minor >= 0", name="price_not_negative"),
    CheckConstraint("strength_value > 0", name="strength_positive"),
    # One formulary entry per drug, form and strength (CreateMedication's ALREADY_EXISTS).
    UniqueConstraint(
        "atc_code",
        "form_system",
        "form_code",
        "strength_value",
        "strength_unit",
        name="medications_one_per_product",
    ),
)
Index("medications_by_display_name", medications.c.display_name, medications.c.id)

stock_items = Table(
    "stock_items",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("medication_id", UUID(as_uuid=True), ForeignKey("medications.id"), nullable=False),
    Column("location_id", UUID(as_uuid=True), nullable=False),
    Column("lot_number", Text, nullable=False),
    Column("expiry_date", Date, nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("version", Integer, nullable=False, server_default="1"),
    *_times(),
    # The last guard of "stock never goes below zero": every taking UPDATE also says
    # `on_hand >= $quantity`, so a refusal is a clean OUT_OF_STOCK, not this violation.
    CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
    UniqueConstraint("medication_id", "location_id", "lot_number", name="stock_items_one_per_lot"),
)
# First expiry, first out: the lots of a medication at a location in expiry order.
Index(
    "stock_items_by_expiry",
    stock_items.c.medication_id,
    stock_items.c.location_id,
    stock_items.c.expiry_date,
    stock_items.c.lot_number,
)
Index("stock_items_by_all_expiry", stock_items.c.expiry_date, stock_items.c.lot_number)

# ReceiveStock's request ids: a replay returns the stock item and adds nothing.
stock_receipts = Table(
    "stock_receipts",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("request_fingerprint", Text, nullable=False),
    Column("stock_item_id", UUID(as_uuid=True), ForeignKey("stock_items.id"), nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("staff_id", UUID(as_uuid=True)),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Every AdjustStock, for the stock's own history (who, why, how much).
stock_adjustments = Table(
    "stock_adjustments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("stock_item_id", UUID(as_uuid=True), ForeignKey("stock_items.id"), nullable=False),
    Column("quantity_change", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    Column("staff_id", UUID(as_uuid=True)),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(_one_of("reason", ADJUSTMENT_REASONS), name="adjustment_reason_known"),
    CheckConstraint("quantity_change <> 0", name="adjustment_not_zero"),
)
Index(
    "stock_adjustments_by_item", stock_adjustments.c.stock_item_id, stock_adjustments.c.create_time
)

# The pharmacy's own copy of orders' medication requests, kept by DeliverEvents (newest revision
# wins). `dispensed` is the pharmacy's own: the sum of the non-cancelled dispenses against it,
# changed only by dispensing and cancelling, never by an event.
prescriptions = Table(
    "prescriptions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True), nullable=False),
    Column("prescriber_id", UUID(as_uuid=True)),
    Column("medication_id", UUID(as_uuid=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("dose_value", Float, nullable=False),
    Column("dose_unit", Text, nullable=False),
    # Whole dispense units per dispensing (the prescribed quantity, rounded down).
    Column("dispense_quantity", BigInteger, nullable=False),
    Column("refills", Integer, nullable=False),
    # dispense_quantity x (1 + refills): what may be dispensed in all.
    Column("total_quantity", BigInteger, nullable=False),
    Column("dispensed", BigInteger, nullable=False, server_default="0"),
    Column("currency", Text, nullable=False),
    Column("unit_price_minor", BigInteger, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(_one_of("status", PRESCRIPTION_STATUSES), name="prescription_status_known"),
    CheckConstraint("dispensed >= 0", name="dispensed_not_negative"),
)
Index("prescriptions_by_patient", prescriptions.c.patient_id, prescriptions.c.id)

dispenses = Table(
    "dispenses",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("prescription_id", UUID(as_uuid=True), ForeignKey("prescriptions.id"), nullable=False),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True), nullable=False),
    Column("prescriber_id", UUID(as_uuid=True)),
    Column("medication_id", UUID(as_uuid=True), ForeignKey("medications.id"), nullable=False),
    Column("stock_item_id", UUID(as_uuid=True), ForeignKey("stock_items.id"), nullable=False),
    Column("location_id", UUID(as_uuid=True), nullable=False),
    Column("lot_number", Text, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    Column("unit_price_minor", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("cancel_reason", Text),
    Column("dispenser_id", UUID(as_uuid=True)),
    Column("handed_over_time", DateTime(timezone=True)),
    # Increases with every change; the etag and the MedicationDispenseChanged revision.
    Column("revision", BigInteger, nullable=False, server_default="1"),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    *_times(),
    CheckConstraint(_one_of("status", DISPENSE_STATUSES), name="dispense_status_known"),
    CheckConstraint("quantity BETWEEN 1 AND 100000", name="dispense_quantity_range"),
    CheckConstraint(
        "(status = 'completed') = (handed_over_time IS NOT NULL)", name="completed_has_time"
    ),
    CheckConstraint(
        "(status = 'cancelled') = (cancel_reason IS NOT NULL)", name="cancelled_has_reason"
    ),
)
Index("dispenses_by_time", dispenses.c.create_time, dispenses.c.id)
# The hand-overs of a period (ListMedicationDispenses handed_over_period: billing's
# reconciliation).
Index(
    "dispenses_by_handed_over_time",
    dispenses.c.handed_over_time,
    postgresql_where=text("handed_over_time IS NOT NULL"),
)
Index("dispenses_by_patient", dispenses.c.patient_id, dispenses.c.create_time, dispenses.c.id)
Index(
    "dispenses_by_prescription",
    dispenses.c.prescription_id,
    dispenses.c.create_time,
    dispenses.c.id,
)

# Events for other services (audit, orders), stored with the change (his.runtime.outbox).
outbox = declare_outbox(metadata)

# Events of other services (orders), each applied once (his.runtime.inbox).
inbox = declare_inbox(metadata)
