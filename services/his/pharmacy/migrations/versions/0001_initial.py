"""Pharmacy schema: formulary, stock by lot, receipts and adjustments, the copy of prescriptions,
dispenses, the outbox and the inbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from his.runtime import inbox, outbox

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "pharmacy"


def _time(name: str) -> sa.Column[Any]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "medications",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("atc_code", sa.Text(), nullable=False),
        sa.Column("atc_display", sa.Text(), server_default="", nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("form_system", sa.Text(), nullable=False),
        sa.Column("form_code", sa.Text(), nullable=False),
        sa.Column("form_display", sa.Text(), server_default="", nullable=False),
        sa.Column("strength_value", sa.Float(), nullable=False),
        sa.Column("strength_unit", sa.Text(), nullable=False),
        sa.Column("dispense_unit", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.CheckConstraint("unit_price_minor >= 0", name="price_not_negative"),
        sa.CheckConstraint("strength_value > 0", name="strength_positive"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        sa.UniqueConstraint(
            "atc_code",
            "form_system",
            "form_code",
            "strength_value",
            "strength_unit",
            name="medications_one_per_product",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "medications_by_display_name", "medications", ["display_name", "id"], schema=SCHEMA
    )

    op.create_table(
        "stock_items",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("medication_id", sa.UUID(), nullable=False),
        sa.Column("location_id", sa.UUID(), nullable=False),
        sa.Column("lot_number", sa.Text(), nullable=False),
        sa.Column("expiry_date", sa.Date(), nullable=False),
        sa.Column("on_hand", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
        sa.ForeignKeyConstraint(["medication_id"], ["pharmacy.medications.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "medication_id", "location_id", "lot_number", name="stock_items_one_per_lot"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "stock_items_by_expiry",
        "stock_items",
        ["medication_id", "location_id", "expiry_date", "lot_number"],
        schema=SCHEMA,
    )
    op.create_index(
        "stock_items_by_all_expiry", "stock_items", ["expiry_date", "lot_number"], schema=SCHEMA
    )

    op.create_table(
        "stock_receipts",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("request_fingerprint", sa.Text(), nullable=False),
        sa.Column("stock_item_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("staff_id", sa.UUID(), nullable=True),
        _time("create_time"),
        sa.ForeignKeyConstraint(["stock_item_id"], ["pharmacy.stock_items.id"]),
        sa.PrimaryKeyConstraint("request_id"),
        schema=SCHEMA,
    )

    op.create_table(
        "stock_adjustments",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("stock_item_id", sa.UUID(), nullable=False),
        sa.Column("quantity_change", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("staff_id", sa.UUID(), nullable=True),
        _time("create_time"),
        sa.CheckConstraint(
            "reason IN ('count_correction', 'damaged', 'expired', 'recalled', "
            "'returned_to_supplier', 'other')",
            name="adjustment_reason_known",
        ),
        sa.CheckConstraint("quantity_change <> 0", name="adjustment_not_zero"),
        sa.ForeignKeyConstraint(["stock_item_id"], ["pharmacy.stock_items.id"]),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_index(
        "stock_adjustments_by_item",
        "stock_adjustments",
        ["stock_item_id", "create_time"],
        schema=SCHEMA,
    )

    op.create_table(
        "prescriptions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=False),
        sa.Column("prescriber_id", sa.UUID(), nullable=True),
        sa.Column("medication_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("dose_value", sa.Float(), nullable=False),
        sa.Column("dose_unit", sa.Text(), nullable=False),
        sa.Column("dispense_quantity", sa.BigInteger(), nullable=False),
        sa.Column("refills", sa.Integer(), nullable=False),
        sa.Column("total_quantity", sa.BigInteger(), nullable=False),
        sa.Column("dispensed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
        _time("update_time"),
        sa.CheckConstraint(
            "status IN ('active', 'cancelled', 'completed', 'on_hold', 'entered_in_error', "
            "'unknown')",
            name="prescription_status_known",
        ),
        sa.CheckConstraint("dispensed >= 0", name="dispensed_not_negative"),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_index(
        "prescriptions_by_patient", "prescriptions", ["patient_id", "id"], schema=SCHEMA
    )

    op.create_table(
        "dispenses",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("prescription_id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=False),
        sa.Column("prescriber_id", sa.UUID(), nullable=True),
        sa.Column("medication_id", sa.UUID(), nullable=False),
        sa.Column("stock_item_id", sa.UUID(), nullable=False),
        sa.Column("location_id", sa.UUID(), nullable=False),
        sa.Column("lot_number", sa.Text(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("dispenser_id", sa.UUID(), nullable=True),
        sa.Column("handed_over_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revision", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        _time("create_time"),
        _time("update_time"),
        sa.CheckConstraint(
            "status IN ('in_progress', 'completed', 'cancelled')", name="dispense_status_known"
        ),
        sa.CheckConstraint("quantity BETWEEN 1 AND 100000", name="dispense_quantity_range"),
        sa.CheckConstraint(
            "(status = 'completed') = (handed_over_time IS NOT NULL)", name="completed_has_time"
        ),
        sa.CheckConstraint(
            "(status = 'cancelled') = (cancel_reason IS NOT NULL)", name="cancelled_has_reason"
        ),
        sa.ForeignKeyConstraint(["prescription_id"], ["pharmacy.prescriptions.id"]),
        sa.ForeignKeyConstraint(["medication_id"], ["pharmacy.medications.id"]),
        sa.ForeignKeyConstraint(["stock_item_id"], ["pharmacy.stock_items.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema=SCHEMA,
    )
    op.create_index("dispenses_by_time", "dispenses", ["create_time", "id"], schema=SCHEMA)
    op.create_index(
        "dispenses_by_patient", "dispenses", ["patient_id", "create_time", "id"], schema=SCHEMA
    )
    op.create_index(
        "dispenses_by_prescription",
        "dispenses",
        ["prescription_id", "create_time", "id"],
        schema=SCHEMA,
    )

    for statement in outbox.create_table_sql(SCHEMA) + inbox.create_table_sql(SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    for statement in inbox.drop_table_sql(SCHEMA) + outbox.drop_table_sql(SCHEMA):
        op.execute(statement)
    for table in (
        "dispenses",
        "prescriptions",
        "stock_adjustments",
        "stock_receipts",
        "stock_items",
        "medications",
    ):
        op.drop_table(table, schema=SCHEMA)
