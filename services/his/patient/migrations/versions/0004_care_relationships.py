"""The inbox of other services' events and the care relationships they feed (his.patient.care):
which departments and practitioners have an appointment or encounter with which patient, and when.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from his.runtime.inbox import create_table_sql, drop_table_sql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "patient"


def upgrade() -> None:
    for statement in create_table_sql(SCHEMA):
        op.execute(statement)
    op.create_table(
        "care_relationships",
        sa.Column("record", sa.Text(), primary_key=True),
        sa.Column("patient_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("department_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("practitioner_id", postgresql.UUID(as_uuid=True)),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True)),
        sa.Column("related", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column(
            "update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "end_time IS NULL OR end_time >= start_time", name="care_period_ordered"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "care_by_patient",
        "care_relationships",
        ["patient_id", "end_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("related"),
    )


def downgrade() -> None:
    op.drop_index("care_by_patient", "care_relationships", schema=SCHEMA)
    op.drop_table("care_relationships", schema=SCHEMA)
    for statement in drop_table_sql(SCHEMA):
        op.execute(statement)
