"""The billing schema: the price list (tariff), charge items, invoices with their lines, payments
with their refunds, the per-source record of charging events, the outbox and the inbox.

Invariants live here where the database can hold them: one charge counting per source (a partial
unique index over the charges that are not aborted and not credits), one credit per reversed
charge, one charge per event id, a billed charge names its invoice and a planned one has no
price, an invoice's payments never exceed its total and a payment's refunds never exceed the
payment (CHECKs, behind the conditional UPDATEs of store.py), and an issued invoice never changes
but by payments (the trigger of migration 0001, INVOICE_FROZEN_TRIGGER).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from his.runtime.inbox import declare as declare_inbox
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "billing"
metadata = MetaData(schema=SCHEMA)

CHARGE_STATUSES = ("billable", "billed", "aborted", "planned")
INVOICE_STATUSES = ("draft", "issued", "balanced", "cancelled")
PAYMENT_STATUSES = ("completed", "refunded")
PAYMENT_METHODS = ("cash", "card", "insurance", "mobile")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _times() -> tuple[Column[object], Column[object]]:
    return (
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


def _request() -> tuple[Column[object], Column[object]]:
    return (
        Column("create_request_id", Text, unique=True),
        Column("create_request_fingerprint", Text),
    )


# The price list: one unit of a code costs `unit_price_minor` from `effective_time` until the next
# item of the same code takes effect.
tariff_items = Table(
    "tariff_items",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("code_system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("code_display", Text, nullable=False, server_default=""),
    Column("currency", Text, nullable=False),
    Column("unit_price_minor", BigInteger, nullable=False),
    Column("effective_time", DateTime(timezone=True), nullable=False),
    *_request(),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("unit_price_minor >= 0", name="tariff_price_not_negative"),
    UniqueConstraint("code_system", "code", "effective_time", name="tariff_items_one_per_time"),
)

invoices = Table(
    "invoices",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True)),
    Column("status", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("total_minor", BigInteger, nullable=False),
    Column("paid_minor", BigInteger, nullable=False, server_default="0"),
    Column("cancel_reason", Text),
    Column("issue_time", DateTime(timezone=True)),
    Column("version", Integer, nullable=False, server_default="1"),
    *_request(),
    *_times(),
    CheckConstraint(_one_of("status", INVOICE_STATUSES), name="invoice_status_known"),
    # The last guard of "payments never exceed the balance due" (RecordPayment's UPDATE says so).
    CheckConstraint(
        "paid_minor >= 0 AND paid_minor <= greatest(total_minor, 0)", name="paid_within_total"
    ),
    CheckConstraint(
        "(status = 'cancelled') = (cancel_reason IS NOT NULL)", name="invoice_cancelled_has_reason"
    ),
    CheckConstraint(
        "(status = 'draft') = (issue_time IS NULL) OR status = 'cancelled'",
        name="invoice_issued_has_time",
    ),
)
Index("invoices_by_time", invoices.c.create_time, invoices.c.id)
Index("invoices_by_patient", invoices.c.patient_id, invoices.c.create_time, invoices.c.id)

charge_items = Table(
    "charge_items",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_id", UUID(as_uuid=True)),
    Column("code_system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("code_display", Text, nullable=False, server_default=""),
    # Numeric, so the total is computed exactly (prices of PLANNED charges are set in SQL).
    Column("quantity_value", Numeric, nullable=False),
    Column("quantity_unit", Text, nullable=False),
    Column("currency", Text, nullable=False),
    # Both NULL while PLANNED (no tariff item in force at the occurrence time).
    Column("unit_price_minor", BigInteger),
    Column("total_minor", BigInteger),
    # `appointments/{id}`, `serviceRequests/{id}`, ... ("" for a manual charge).
    Column("source", Text, nullable=False, server_default=""),
    Column("department_id", UUID(as_uuid=True)),
    Column("occurrence_time", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("cancel_reason", Text),
    Column("invoice_id", UUID(as_uuid=True), ForeignKey("invoices.id")),
    Column("reverses_id", UUID(as_uuid=True), ForeignKey("charge_items.id"), unique=True),
    # The event that created the charge: one charge per event whatever the delivery count.
    Column("source_event", UUID(as_uuid=True), unique=True),
    Column("version", Integer, nullable=False, server_default="1"),
    *_request(),
    *_times(),
    CheckConstraint(_one_of("status", CHARGE_STATUSES), name="charge_status_known"),
    CheckConstraint("quantity_value > 0", name="charge_quantity_positive"),
    CheckConstraint("(status = 'billed') = (invoice_id IS NOT NULL)", name="billed_has_invoice"),
    # PLANNED waits for a price, BILLABLE and BILLED have one; an ABORTED charge may have either.
    CheckConstraint(
        "(unit_price_minor IS NULL) = (total_minor IS NULL) AND (status = 'aborted' "
        "OR (status = 'planned') = (unit_price_minor IS NULL))",
        name="planned_has_no_price",
    ),
    CheckConstraint(
        "(status = 'aborted') = (cancel_reason IS NOT NULL)", name="charge_aborted_has_reason"
    ),
    # Only a credit (reversing another charge) has a negative price.
    CheckConstraint(
        "reverses_id IS NOT NULL OR unit_price_minor IS NULL OR unit_price_minor >= 0",
        name="charge_price_not_negative",
    ),
)
Index("charge_items_by_time", charge_items.c.create_time, charge_items.c.id)
Index(
    "charge_items_by_patient",
    charge_items.c.patient_id,
    charge_items.c.create_time,
    charge_items.c.id,
)
Index("charge_items_by_invoice", charge_items.c.invoice_id)
Index("charge_items_by_occurrence", charge_items.c.occurrence_time)
Index("charge_items_by_code", charge_items.c.code_system, charge_items.c.code)
# One order, dispense or appointment is charged once: a second charge of the same source and code
# is refused (CreateChargeItem's ALREADY_EXISTS; an event's second charge is not made).
Index(
    "charge_items_one_per_source",
    charge_items.c.source,
    charge_items.c.code_system,
    charge_items.c.code,
    unique=True,
    postgresql_where=text("source <> '' AND status <> 'aborted' AND reverses_id IS NULL"),
)

# Which charge items an invoice was made of, kept after it is cancelled (its lines are fixed).
invoice_lines = Table(
    "invoice_lines",
    metadata,
    Column("invoice_id", UUID(as_uuid=True), ForeignKey("invoices.id"), primary_key=True),
    Column("charge_item_id", UUID(as_uuid=True), ForeignKey("charge_items.id"), primary_key=True),
    Column("position", Integer, nullable=False),
)

payments = Table(
    "payments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("invoice_id", UUID(as_uuid=True), ForeignKey("invoices.id"), nullable=False),
    Column("currency", Text, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False, server_default="0"),
    Column("method", Text, nullable=False),
    Column("external_reference", Text, nullable=False, server_default=""),
    Column("received_time", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("cashier_id", UUID(as_uuid=True)),
    *_request(),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(_one_of("status", PAYMENT_STATUSES), name="payment_status_known"),
    CheckConstraint(_one_of("method", PAYMENT_METHODS), name="payment_method_known"),
    CheckConstraint("amount_minor > 0", name="payment_positive"),
    # Never more refunded than paid; fully refunded exactly when REFUNDED.
    CheckConstraint(
        "refunded_minor >= 0 AND refunded_minor <= amount_minor", name="refunds_within_payment"
    ),
    CheckConstraint(
        "(status = 'refunded') = (refunded_minor = amount_minor)", name="refunded_in_full"
    ),
)
Index("payments_by_invoice", payments.c.invoice_id, payments.c.received_time, payments.c.id)
Index("payments_by_time", payments.c.received_time, payments.c.id)

refunds = Table(
    "refunds",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("payment_id", UUID(as_uuid=True), ForeignKey("payments.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("refund_reference", Text, nullable=False, server_default=""),
    Column("cashier_id", UUID(as_uuid=True)),
    # A partial refund's request id: a repeat refunds nothing more.
    Column("request_id", Text, unique=True),
    Column("request_fingerprint", Text),
    Column("refund_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("amount_minor > 0", name="refund_positive"),
)
Index("refunds_by_payment", refunds.c.payment_id, refunds.c.refund_time)

# What billing last heard of each source resource (an order, a dispense, an appointment): the
# highest revision applied, so a late older event changes nothing.
sources = Table(
    "sources",
    metadata,
    Column("source", Text, primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Events for other services (audit), stored with the change (his.runtime.outbox).
outbox = declare_outbox(metadata)

# Events of scheduling, orders and pharmacy, each applied once (his.runtime.inbox).
inbox = declare_inbox(metadata)
