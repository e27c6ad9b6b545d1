"""Completed lab orders by time: ListServiceRequests(complete_period) lists the orders completed in
a period (billing reconciles its laboratory charges with them). A completed order never changes
again, so its update time is its completion time (store.completed_in).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "orders"


def upgrade() -> None:
    op.create_index(
        "service_requests_completed_by_time",
        "service_requests",
        ["update_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'completed'"),
    )


def downgrade() -> None:
    op.drop_index(
        "service_requests_completed_by_time", table_name="service_requests", schema=SCHEMA
    )
