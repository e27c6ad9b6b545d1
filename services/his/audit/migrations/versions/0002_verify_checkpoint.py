"""Audit schema: the checkpoint of incremental VerifyChain.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "verify_checkpoint",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sequence_number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mac", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("id = 1", name="one_checkpoint"),
        sa.CheckConstraint("sequence_number >= 0", name="checkpoint_sequence_not_negative"),
        sa.CheckConstraint("octet_length(hash) = 32", name="checkpoint_hash_sha256"),
        sa.CheckConstraint("octet_length(mac) IN (0, 32)", name="checkpoint_mac_hmac_sha256"),
        sa.PrimaryKeyConstraint("id"),
        schema="audit",
    )
    # Nothing verified yet: the row exists so that every update can lock it first. Its empty
    # mac makes it "no checkpoint" (the service signs the first real one).
    op.execute(
        "INSERT INTO audit.verify_checkpoint (id, sequence_number, hash, verified_at, mac)"
        " VALUES (1, 0, decode(repeat('00', 32), 'hex'), NULL, ''::bytea)"
    )


def downgrade() -> None:
    op.drop_table("verify_checkpoint", schema="audit")
