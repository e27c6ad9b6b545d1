"""Audit schema: the changed fields of an event's entity, before and after (AuditEntity.changes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: no stored event is rewritten, and an empty list is what every earlier
    # event had (no changes), so its encoding, and its hash, stay the same.
    op.add_column(
        "events",
        # JSON text (see tables.py for why not jsonb).
        sa.Column("entity_changes", sa.Text(), nullable=False, server_default="[]"),
        schema="audit",
    )
    op.create_check_constraint(
        "entity_changes_list",
        "events",
        "jsonb_typeof(entity_changes::jsonb) = 'array'",
        schema="audit",
    )


def downgrade() -> None:
    op.drop_constraint("entity_changes_list", "events", schema="audit")
    op.drop_column("events", "entity_changes", schema="audit")
