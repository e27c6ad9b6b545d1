"""Audit schema: the patient who acted (AuditAgent.patient, patient sign-in).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting (or updating) any stored
    # event, and '' is what every earlier event's agent had (no patient), so no hash changes.
    op.add_column(
        "events",
        sa.Column("agent_patient", sa.Text(), nullable=False, server_default=""),
        schema="audit",
    )


def downgrade() -> None:
    op.drop_column("events", "agent_patient", schema="audit")
