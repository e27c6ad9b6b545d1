"""Iam schema: patient sign-ins (keyed hashes of code and phone, expiry, single use)
and the attempts their rate limits count.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "patient_sign_ins",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("phone_key", sa.LargeBinary(), nullable=False),
        sa.Column("patient_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("code_hash", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("void_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("expire_time > create_time", name="sign_in_period_ordered"),
        sa.CheckConstraint("octet_length(code_hash) = 32", name="sign_in_code_hash_sha256"),
        sa.CheckConstraint("octet_length(phone_key) = 32", name="sign_in_phone_key_sha256"),
        sa.CheckConstraint(
            "patient_id IS NOT NULL OR used_time IS NULL", name="sign_in_decoy_unused"
        ),
        sa.PrimaryKeyConstraint("id"),
        schema="iam",
    )
    op.create_index(
        "sign_ins_open_by_phone",
        "patient_sign_ins",
        ["phone_key"],
        schema="iam",
        postgresql_where=sa.text("used_time IS NULL AND void_time IS NULL"),
    )
    op.create_index("sign_ins_by_expiry", "patient_sign_ins", ["expire_time"], schema="iam")
    op.create_table(
        "sign_in_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("phone_key", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('start', 'failure')", name="sign_in_attempt_kind"),
        sa.PrimaryKeyConstraint("id"),
        schema="iam",
    )
    op.create_index(
        "sign_in_attempts_by_phone",
        "sign_in_attempts",
        ["kind", "phone_key", "at"],
        schema="iam",
    )
    op.create_index(
        "sign_in_attempts_by_source", "sign_in_attempts", ["kind", "source", "at"], schema="iam"
    )
    op.create_index("sign_in_attempts_by_time", "sign_in_attempts", ["at"], schema="iam")


def downgrade() -> None:
    op.drop_table("sign_in_attempts", schema="iam")
    op.drop_table("patient_sign_ins", schema="iam")
