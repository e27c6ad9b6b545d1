"""The transactional outbox: audit and domain events stored with the change they report, for the
relay to deliver (his.runtime.outbox).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from his.runtime.outbox import create_table_sql, drop_table_sql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "scheduling"


def upgrade() -> None:
    for statement in create_table_sql(SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_table_sql(SCHEMA):
        op.execute(statement)
