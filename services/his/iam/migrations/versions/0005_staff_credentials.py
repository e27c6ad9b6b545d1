"""Iam schema: staff credentials (argon2id password hash, encrypted TOTP secret), one-time
enrolment codes (keyed hashes, expiry, single use) and the failed logins their limits count.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "staff_credentials",
        sa.Column("staff_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("totp_secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("enrol_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("password_hash LIKE '$argon2id$%'", name="staff_credential_argon2id"),
        sa.ForeignKeyConstraint(["staff_id"], ["iam.staff.id"]),
        sa.PrimaryKeyConstraint("staff_id"),
        schema="iam",
    )
    op.create_table(
        "staff_enrolments",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("staff_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("void_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("expire_time > create_time", name="enrolment_period_ordered"),
        sa.CheckConstraint("octet_length(code_hash) = 32", name="enrolment_code_hash_sha256"),
        sa.ForeignKeyConstraint(["staff_id"], ["iam.staff.id"]),
        sa.PrimaryKeyConstraint("id"),
        schema="iam",
    )
    op.create_index(
        "enrolments_open_by_staff",
        "staff_enrolments",
        ["staff_id"],
        schema="iam",
        postgresql_where=sa.text("used_time IS NULL AND void_time IS NULL"),
    )
    op.create_table(
        "staff_login_failures",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("user_key", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("octet_length(user_key) = 32", name="login_failure_user_key_sha256"),
        sa.PrimaryKeyConstraint("id"),
        schema="iam",
    )
    op.create_index(
        "login_failures_by_user", "staff_login_failures", ["user_key", "at"], schema="iam"
    )
    op.create_index(
        "login_failures_by_source", "staff_login_failures", ["source", "at"], schema="iam"
    )
    op.create_index("login_failures_by_time", "staff_login_failures", ["at"], schema="iam")


def downgrade() -> None:
    op.drop_table("staff_login_failures", schema="iam")
    op.drop_table("staff_enrolments", schema="iam")
    op.drop_table("staff_credentials", schema="iam")
