"""Orders schema: service requests, medication requests, the dispenses copy, outbox and inbox.

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

SCHEMA = "orders"


def _encounter_facts() -> list[sa.Column[Any]]:
    return [
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("attending_id", sa.UUID(), nullable=True),
        sa.Column("encounter_class", sa.Text(), nullable=False),
        sa.Column("surgical", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    ]


def _bookkeeping() -> list[sa.Column[Any]]:
    return [
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("revision", sa.BigInteger(), server_default="1", nullable=False),
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
    ]


def upgrade() -> None:
    op.create_table(
        "service_requests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=False),
        sa.Column("requester_id", sa.UUID(), nullable=False),
        sa.Column("performer_id", sa.UUID(), nullable=False),
        *_encounter_facts(),
        sa.Column("code_system", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_display", sa.Text(), server_default="", nullable=False),
        sa.Column("priority", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason_system", sa.Text(), nullable=True),
        sa.Column("reason_code", sa.Text(), nullable=True),
        sa.Column("reason_display", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("report_id", sa.UUID(), nullable=True),
        *_bookkeeping(),
        sa.CheckConstraint(
            "priority IN ('routine', 'urgent', 'asap', 'stat')", name="sr_priority_known"
        ),
        sa.CheckConstraint(
            "status IN ('active', 'revoked', 'completed', 'on_hold', 'entered_in_error')",
            name="sr_status_known",
        ),
        sa.CheckConstraint(
            "status <> 'revoked' OR revoke_reason IS NOT NULL", name="sr_revoked_why"
        ),
        sa.CheckConstraint("revision >= 1", name="sr_revision_positive"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema=SCHEMA,
    )
    op.create_index(
        "service_requests_by_time", "service_requests", ["create_time", "id"], schema=SCHEMA
    )
    for column in ("patient_id", "encounter_id", "performer_id"):
        op.create_index(
            f"service_requests_by_{column.removesuffix('_id')}",
            "service_requests",
            [column, "create_time", "id"],
            schema=SCHEMA,
        )

    op.create_table(
        "medication_requests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=False),
        sa.Column("prescriber_id", sa.UUID(), nullable=False),
        *_encounter_facts(),
        sa.Column("medication_id", sa.UUID(), nullable=False),
        sa.Column("atc_system", sa.Text(), nullable=False),
        sa.Column("atc_code", sa.Text(), nullable=False),
        sa.Column("atc_display", sa.Text(), server_default="", nullable=False),
        sa.Column("dose_value", sa.Float(), nullable=False),
        sa.Column("dose_unit", sa.Text(), nullable=False),
        sa.Column("route_system", sa.Text(), nullable=False),
        sa.Column("route_code", sa.Text(), nullable=False),
        sa.Column("route_display", sa.Text(), server_default="", nullable=False),
        sa.Column("frequency_per_day", sa.Integer(), nullable=False),
        sa.Column("duration_days", sa.Integer(), nullable=False),
        sa.Column("instructions", sa.Text(), server_default="", nullable=False),
        sa.Column("dispense_value", sa.Float(), nullable=False),
        sa.Column("dispense_unit", sa.Text(), nullable=False),
        sa.Column("refills", sa.Integer(), nullable=False),
        sa.Column("price_currency", sa.Text(), nullable=False),
        sa.Column("price_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("dispensed", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("handed_over", sa.Float(), server_default=sa.text("0"), nullable=False),
        *_bookkeeping(),
        sa.CheckConstraint(
            "status IN ('active', 'cancelled', 'completed', 'on_hold', 'entered_in_error')",
            name="mr_status_known",
        ),
        sa.CheckConstraint(
            "status <> 'cancelled' OR cancel_reason IS NOT NULL", name="mr_cancelled_why"
        ),
        sa.CheckConstraint("dose_value > 0 AND dispense_value > 0", name="mr_amounts_positive"),
        sa.CheckConstraint("refills BETWEEN 0 AND 12", name="mr_refills_range"),
        sa.CheckConstraint("frequency_per_day BETWEEN 1 AND 24", name="mr_frequency_range"),
        sa.CheckConstraint("duration_days BETWEEN 1 AND 365", name="mr_duration_range"),
        sa.CheckConstraint("dispensed >= 0 AND handed_over >= 0", name="mr_dispensed_positive"),
        sa.CheckConstraint("revision >= 1", name="mr_revision_positive"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema=SCHEMA,
    )
    op.create_index(
        "medication_requests_by_time", "medication_requests", ["create_time", "id"], schema=SCHEMA
    )
    for column in ("patient_id", "encounter_id"):
        op.create_index(
            f"medication_requests_by_{column.removesuffix('_id')}",
            "medication_requests",
            [column, "create_time", "id"],
            schema=SCHEMA,
        )

    op.create_table(
        "dispenses",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("medication_request_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column(
            "update_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('in_progress', 'completed', 'cancelled')", name="dispense_status_known"
        ),
        sa.CheckConstraint("quantity >= 0", name="dispense_quantity_positive"),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_index("dispenses_by_request", "dispenses", ["medication_request_id"], schema=SCHEMA)

    for statement in outbox.create_table_sql(SCHEMA) + inbox.create_table_sql(SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    for statement in inbox.drop_table_sql(SCHEMA) + outbox.drop_table_sql(SCHEMA):
        op.execute(statement)
    op.drop_table("dispenses", schema=SCHEMA)
    op.drop_table("medication_requests", schema=SCHEMA)
    op.drop_table("service_requests", schema=SCHEMA)
