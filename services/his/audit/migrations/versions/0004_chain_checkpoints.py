"""Audit schema: signed checkpoints of the chain (anchoring, ADR 0006).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_checkpoints",
        sa.Column("checkpoint_number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sequence_number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("previous_digest", sa.LargeBinary(), nullable=False),
        sa.Column("events_digest", sa.LargeBinary(), nullable=False),
        sa.Column("event_prefixes", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("checkpoint_number >= 1", name="checkpoint_number_positive"),
        sa.CheckConstraint("sequence_number >= 1", name="checkpoint_covers_events"),
        sa.CheckConstraint("octet_length(hash) = 32", name="checkpoint_head_sha256"),
        sa.CheckConstraint("octet_length(signature) = 64", name="checkpoint_signature_ed25519"),
        sa.PrimaryKeyConstraint("checkpoint_number"),
        sa.UniqueConstraint("sequence_number"),
        schema="audit",
    )
    op.create_table(
        "checkpoint_requests",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("checkpoint_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
        schema="audit",
    )
    # Append-only like the events (audit.refuse_change from 0001); a superuser getting round it
    # still cannot sign, which is what verification relies on.
    op.execute(
        "CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON audit.chain_checkpoints"
        " FOR EACH ROW EXECUTE FUNCTION audit.refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON audit.chain_checkpoints"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER checkpoints_no_truncate ON audit.chain_checkpoints")
    op.execute("DROP TRIGGER checkpoints_append_only ON audit.chain_checkpoints")
    op.drop_table("checkpoint_requests", schema="audit")
    op.drop_table("chain_checkpoints", schema="audit")
