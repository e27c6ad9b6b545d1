"""Billing schema: the price list, charge items, invoices and their lines, payments and refunds,
the per-source record of charging events, the outbox and the inbox; an issued invoice is frozen.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from his.runtime import inbox, outbox

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "billing"

# An invoice that left draft never changes but by payments (paid_minor, and the status between
# issued and balanced that follows it) and by cancelling (status, cancel_reason): its patient,
# encounter, currency, total and issue time are what the patient was given. Nothing is deleted.
FROZEN_FUNCTION = """
CREATE OR REPLACE FUNCTION billing.invoices_frozen() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'invoices are never deleted'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'invoices_frozen_once_issued';
  END IF;
  IF OLD.status <> 'draft' AND (
       NEW.patient_id IS DISTINCT FROM OLD.patient_id
    OR NEW.encounter_id IS DISTINCT FROM OLD.encounter_id
    OR NEW.currency IS DISTINCT FROM OLD.currency
    OR NEW.total_minor IS DISTINCT FROM OLD.total_minor
    OR NEW.issue_time IS DISTINCT FROM OLD.issue_time
    OR NEW.status = 'draft'
    OR OLD.status = 'cancelled'
  ) THEN
    RAISE EXCEPTION 'an issued invoice cannot be changed, only paid, refunded or cancelled'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'invoices_frozen_once_issued';
  END IF;
  RETURN NEW;
END
$$;
"""

FROZEN_TRIGGER = """
CREATE TRIGGER invoices_frozen_once_issued
BEFORE UPDATE OR DELETE ON billing.invoices
FOR EACH ROW EXECUTE FUNCTION billing.invoices_frozen();
"""


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("paid_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("issue_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "update_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(status = 'cancelled') = (cancel_reason IS NOT NULL)",
            name="invoice_cancelled_has_reason",
        ),
        sa.CheckConstraint(
            "(status = 'draft') = (issue_time IS NULL) OR status = 'cancelled'",
            name="invoice_issued_has_time",
        ),
        sa.CheckConstraint(
            "status IN ('draft', 'issued', 'balanced', 'cancelled')", name="invoice_status_known"
        ),
        sa.CheckConstraint(
            "paid_minor >= 0 AND paid_minor <= greatest(total_minor, 0)", name="paid_within_total"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema="billing",
    )
    op.create_index(
        "invoices_by_patient",
        "invoices",
        ["patient_id", "create_time", "id"],
        unique=False,
        schema="billing",
    )
    op.create_index(
        "invoices_by_time", "invoices", ["create_time", "id"], unique=False, schema="billing"
    )
    op.create_table(
        "sources",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "update_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("source"),
        schema="billing",
    )
    op.create_table(
        "tariff_items",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("code_system", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_display", sa.Text(), server_default="", nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
        sa.Column("effective_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("unit_price_minor >= 0", name="tariff_price_not_negative"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "code_system", "code", "effective_time", name="tariff_items_one_per_time"
        ),
        sa.UniqueConstraint("create_request_id"),
        schema="billing",
    )
    op.create_table(
        "charge_items",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=True),
        sa.Column("code_system", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_display", sa.Text(), server_default="", nullable=False),
        sa.Column("quantity_value", sa.Numeric(), nullable=False),
        sa.Column("quantity_unit", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=True),
        sa.Column("total_minor", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.Text(), server_default="", nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=True),
        sa.Column("occurrence_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("invoice_id", sa.UUID(), nullable=True),
        sa.Column("reverses_id", sa.UUID(), nullable=True),
        sa.Column("source_event", sa.UUID(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "update_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(status = 'aborted') = (cancel_reason IS NOT NULL)", name="charge_aborted_has_reason"
        ),
        sa.CheckConstraint(
            "(status = 'billed') = (invoice_id IS NOT NULL)", name="billed_has_invoice"
        ),
        sa.CheckConstraint(
            "(unit_price_minor IS NULL) = (total_minor IS NULL) AND (status = 'aborted' "
            "OR (status = 'planned') = (unit_price_minor IS NULL))",
            name="planned_has_no_price",
        ),
        sa.CheckConstraint(
            "status IN ('billable', 'billed', 'aborted', 'planned')", name="charge_status_known"
        ),
        sa.CheckConstraint("quantity_value > 0", name="charge_quantity_positive"),
        sa.CheckConstraint(
            "reverses_id IS NOT NULL OR unit_price_minor IS NULL OR unit_price_minor >= 0",
            name="charge_price_not_negative",
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing.invoices.id"],
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["billing.charge_items.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        sa.UniqueConstraint("reverses_id"),
        sa.UniqueConstraint("source_event"),
        schema="billing",
    )
    op.create_index(
        "charge_items_by_code",
        "charge_items",
        ["code_system", "code"],
        unique=False,
        schema="billing",
    )
    op.create_index(
        "charge_items_by_invoice", "charge_items", ["invoice_id"], unique=False, schema="billing"
    )
    op.create_index(
        "charge_items_by_occurrence",
        "charge_items",
        ["occurrence_time"],
        unique=False,
        schema="billing",
    )
    op.create_index(
        "charge_items_by_patient",
        "charge_items",
        ["patient_id", "create_time", "id"],
        unique=False,
        schema="billing",
    )
    op.create_index(
        "charge_items_by_time",
        "charge_items",
        ["create_time", "id"],
        unique=False,
        schema="billing",
    )
    op.create_index(
        "charge_items_one_per_source",
        "charge_items",
        ["source", "code_system", "code"],
        unique=True,
        schema="billing",
        postgresql_where=sa.text("source <> '' AND status <> 'aborted' AND reverses_id IS NULL"),
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("invoice_id", sa.UUID(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("external_reference", sa.Text(), server_default="", nullable=False),
        sa.Column("received_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("cashier_id", sa.UUID(), nullable=True),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(status = 'refunded') = (refunded_minor = amount_minor)", name="refunded_in_full"
        ),
        sa.CheckConstraint(
            "method IN ('cash', 'card', 'insurance', 'mobile')", name="payment_method_known"
        ),
        sa.CheckConstraint("status IN ('completed', 'refunded')", name="payment_status_known"),
        sa.CheckConstraint("amount_minor > 0", name="payment_positive"),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= amount_minor", name="refunds_within_payment"
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing.invoices.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema="billing",
    )
    op.create_index(
        "payments_by_invoice",
        "payments",
        ["invoice_id", "received_time", "id"],
        unique=False,
        schema="billing",
    )
    op.create_index(
        "payments_by_time", "payments", ["received_time", "id"], unique=False, schema="billing"
    )
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_id", sa.UUID(), nullable=False),
        sa.Column("charge_item_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["charge_item_id"],
            ["billing.charge_items.id"],
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing.invoices.id"],
        ),
        sa.PrimaryKeyConstraint("invoice_id", "charge_item_id"),
        schema="billing",
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("payment_id", sa.UUID(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("refund_reference", sa.Text(), server_default="", nullable=False),
        sa.Column("cashier_id", sa.UUID(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("request_fingerprint", sa.Text(), nullable=True),
        sa.Column(
            "refund_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("amount_minor > 0", name="refund_positive"),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["billing.payments.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
        schema="billing",
    )
    op.create_index(
        "refunds_by_payment",
        "refunds",
        ["payment_id", "refund_time"],
        unique=False,
        schema="billing",
    )

    op.execute(FROZEN_FUNCTION)
    op.execute(FROZEN_TRIGGER)
    for statement in outbox.create_table_sql(SCHEMA) + inbox.create_table_sql(SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    for statement in inbox.drop_table_sql(SCHEMA) + outbox.drop_table_sql(SCHEMA):
        op.execute(statement)
    op.execute("DROP TRIGGER invoices_frozen_once_issued ON billing.invoices")
    op.execute("DROP FUNCTION billing.invoices_frozen()")
    for table in (
        "refunds",
        "payments",
        "invoice_lines",
        "charge_items",
        "invoices",
        "tariff_items",
        "sources",
    ):
        op.drop_table(table, schema=SCHEMA)
