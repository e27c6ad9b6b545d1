"""Check-ins by time: ListAppointments(arrive_period) lists the whole hospital's check-ins of a
period (billing reconciles its registration charges with them) without reading every appointment.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "scheduling"


def upgrade() -> None:
    op.create_index(
        "appointments_by_arrive_time",
        "appointments",
        ["arrive_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("arrive_time IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("appointments_by_arrive_time", table_name="appointments", schema=SCHEMA)
