"""Hand-overs by time: ListMedicationDispenses(handed_over_period) lists the dispenses handed
over in a period (billing reconciles its drug charges with them).

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

SCHEMA = "pharmacy"


def upgrade() -> None:
    op.create_index(
        "dispenses_by_handed_over_time",
        "dispenses",
        ["handed_over_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("handed_over_time IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("dispenses_by_handed_over_time", table_name="dispenses", schema=SCHEMA)
