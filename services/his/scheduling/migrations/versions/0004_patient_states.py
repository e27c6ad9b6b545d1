"""The inbox and the copy of patient states fed by the patient service's events
(his.scheduling.patient_states).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from his.runtime.inbox import create_table_sql, drop_table_sql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "scheduling"


def upgrade() -> None:
    for statement in create_table_sql(SCHEMA):
        op.execute(statement)
    op.execute(
        f"""
        CREATE TABLE "{SCHEMA}".patient_states (
            patient_id uuid PRIMARY KEY,
            state text NOT NULL,
            merged_into uuid,
            revision bigint NOT NULL,
            update_time timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT patient_state_known CHECK (state IN ('active', 'inactive', 'merged'))
        )
        """
    )


def downgrade() -> None:
    op.execute(f'DROP TABLE "{SCHEMA}".patient_states')
    for statement in drop_table_sql(SCHEMA):
        op.execute(statement)
