"""Iam schema: departments, staff, memberships, emergency access grants.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One staff member's memberships never overlap in time within one department, and primary ones
# never overlap at all (see tables.py). Serialised per staff member on an advisory lock; raises
# exclusion_violation naming the rule, as an exclusion constraint would.
NO_OVERLAP_FUNCTION = """
CREATE OR REPLACE FUNCTION iam.memberships_no_overlap() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.period_end IS NOT NULL AND NEW.period_end <= NEW.period_start THEN
    RETURN NEW;  -- an empty period overlaps nothing
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended('his-iam-memberships-' || NEW.staff_id::text, 0));
  IF EXISTS (
    SELECT 1 FROM iam.memberships m
    WHERE m.staff_id = NEW.staff_id
      AND m.id <> NEW.id
      AND m.department_id = NEW.department_id
      AND m.period_start < coalesce(NEW.period_end, 'infinity')
      AND NEW.period_start < coalesce(m.period_end, 'infinity')
  ) THEN
    RAISE EXCEPTION 'overlapping membership of the same department'
      USING ERRCODE = 'exclusion_violation', CONSTRAINT = 'memberships_department_no_overlap';
  END IF;
  IF NEW.is_primary AND EXISTS (
    SELECT 1 FROM iam.memberships m
    WHERE m.staff_id = NEW.staff_id
      AND m.id <> NEW.id
      AND m.is_primary
      AND m.period_start < coalesce(NEW.period_end, 'infinity')
      AND NEW.period_start < coalesce(m.period_end, 'infinity')
  ) THEN
    RAISE EXCEPTION 'overlapping primary membership'
      USING ERRCODE = 'exclusion_violation', CONSTRAINT = 'memberships_primary_no_overlap';
  END IF;
  RETURN NEW;
END
$$;
"""

NO_OVERLAP_TRIGGER = """
CREATE TRIGGER memberships_no_overlap
BEFORE INSERT OR UPDATE OF staff_id, department_id, period_start, period_end, is_primary
ON iam.memberships
FOR EACH ROW EXECUTE FUNCTION iam.memberships_no_overlap();
"""

_ROLES = (
    "'REGISTRAR', 'DOCTOR', 'NURSE', 'PHARMACIST', 'LAB_TECHNICIAN', 'BILLING_CLERK', "
    "'AUDITOR', 'ADMINISTRATOR'"
)
_KINDS = "'outpatient', 'inpatient', 'emergency', 'surgery', 'lab', 'pharmacy', 'admin'"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "departments",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint(f"kind IN ({_KINDS})", name="department_kind_known"),
        sa.CheckConstraint("code ~ '^[A-Z0-9-]{1,20}$'", name="department_code_format"),
        sa.CheckConstraint(
            "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
            name="department_request_fingerprinted",
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code", name="department_code_unique"),
        sa.UniqueConstraint("create_request_id"),
        schema="iam",
    )
    op.create_table(
        "staff",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column(
            "display_key",
            sa.Text(),
            sa.Computed("lower(display_name)", persisted=True),
            nullable=False,
        ),
        sa.Column("roles", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("practitioner_id_system", sa.Text(), nullable=True),
        sa.Column("practitioner_id_value", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint("username ~ '^[a-z][a-z0-9._-]{2,63}$'", name="staff_username_format"),
        sa.CheckConstraint(
            f"cardinality(roles) >= 1 AND roles <@ ARRAY[{_ROLES}]::text[]",
            name="staff_roles_known",
        ),
        sa.CheckConstraint(
            "(practitioner_id_system IS NULL) = (practitioner_id_value IS NULL)",
            name="staff_practitioner_complete",
        ),
        sa.CheckConstraint(
            "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
            name="staff_request_fingerprinted",
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username", name="staff_username_unique"),
        sa.UniqueConstraint(
            "practitioner_id_system", "practitioner_id_value", name="staff_practitioner_unique"
        ),
        sa.UniqueConstraint("create_request_id"),
        schema="iam",
    )
    op.create_index(
        "staff_display_prefix",
        "staff",
        ["display_key"],
        unique=False,
        schema="iam",
        postgresql_ops={"display_key": "text_pattern_ops"},
    )
    op.create_index(
        "staff_roles", "staff", ["roles"], unique=False, schema="iam", postgresql_using="gin"
    )
    op.create_table(
        "memberships",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("staff_id", sa.UUID(), nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_primary", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint(
            "period_end IS NULL OR period_end >= period_start", name="membership_period_ordered"
        ),
        sa.CheckConstraint(
            "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
            name="membership_request_fingerprinted",
        ),
        sa.ForeignKeyConstraint(["department_id"], ["iam.departments.id"]),
        sa.ForeignKeyConstraint(["staff_id"], ["iam.staff.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema="iam",
    )
    op.create_index(
        "memberships_by_staff",
        "memberships",
        ["staff_id", sa.literal_column("period_start DESC"), sa.literal_column("id DESC")],
        unique=False,
        schema="iam",
    )
    op.create_index(
        "memberships_by_department",
        "memberships",
        ["department_id", sa.literal_column("period_start DESC"), sa.literal_column("id DESC")],
        unique=False,
        schema="iam",
    )
    op.create_index(
        "memberships_list_order",
        "memberships",
        [sa.literal_column("period_start DESC"), sa.literal_column("id DESC")],
        unique=False,
        schema="iam",
    )
    op.execute(NO_OVERLAP_FUNCTION)
    op.execute(NO_OVERLAP_TRIGGER)
    op.create_table(
        "emergency_access_grants",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("staff_id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("grant_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.CheckConstraint("expire_time > grant_time", name="grant_period_ordered"),
        sa.CheckConstraint(
            "revoke_time IS NULL OR revoke_time >= grant_time", name="grant_revoked_after_grant"
        ),
        sa.CheckConstraint("char_length(reason) BETWEEN 20 AND 1000", name="grant_reason_length"),
        sa.CheckConstraint(
            "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
            name="grant_request_fingerprinted",
        ),
        sa.ForeignKeyConstraint(["staff_id"], ["iam.staff.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("staff_id", "create_request_id", name="grant_request_unique"),
        schema="iam",
    )
    op.create_index(
        "grants_list_order",
        "emergency_access_grants",
        [sa.literal_column("grant_time DESC"), sa.literal_column("id DESC")],
        unique=False,
        schema="iam",
    )
    op.create_index(
        "grants_by_staff_patient",
        "emergency_access_grants",
        ["staff_id", "patient_id", "expire_time"],
        unique=False,
        schema="iam",
    )
    op.create_index(
        "grants_by_patient",
        "emergency_access_grants",
        ["patient_id", "grant_time"],
        unique=False,
        schema="iam",
    )


def downgrade() -> None:
    op.drop_table("emergency_access_grants", schema="iam")
    op.execute("DROP TRIGGER memberships_no_overlap ON iam.memberships")
    op.execute("DROP FUNCTION iam.memberships_no_overlap()")
    op.drop_table("memberships", schema="iam")
    op.drop_table("staff", schema="iam")
    op.drop_table("departments", schema="iam")
