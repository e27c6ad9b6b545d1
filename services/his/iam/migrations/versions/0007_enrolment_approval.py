"""Iam schema: enrolments approved by a second administrator (two halves of the code), and a
staff member's credential replaced only through such an enrolment.

Re-enrolling someone who has a credential, or who holds or is proposed a role that needs TOTP,
takes two administrators (his.iam.enrolment_rule): the creator's half of the code and the
approver's. The checks below hold the rule even against a bug: an enrolment that needs approval
cannot be used before it, its approver is neither its creator nor its staff member, and nobody
enrols themselves. The trigger holds the takeover case itself: an existing credential is replaced
only by an approved two-administrator enrolment of the same staff member.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ENROLMENTS = "staff_enrolments"
_CHECKS = {
    "enrolment_approval_whole": "(approved_by IS NULL) = (approve_time IS NULL) "
    "AND (approve_time IS NULL) = (approval_code_hash IS NULL)",
    "enrolment_approval_hash_sha256": "approval_code_hash IS NULL "
    "OR octet_length(approval_code_hash) = 32",
    "enrolment_approved_only_if_required": "approval_required OR approved_by IS NULL",
    "enrolment_used_once_approved": "NOT approval_required OR used_time IS NULL "
    "OR (approve_time IS NOT NULL AND approve_time <= used_time)",
    "enrolment_approver_not_creator": "approved_by IS NULL OR approved_by <> created_by",
    "enrolment_approver_not_enrolled": "approved_by IS NULL "
    "OR approved_by <> 'staff/' || staff_id::text",
    "enrolment_not_by_self": "created_by <> 'staff/' || staff_id::text",
}
_TRIGGER_FUNCTION = """
CREATE FUNCTION iam.credential_replaced_by_two() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enrolment_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM iam.staff_enrolments e
        WHERE e.id = NEW.enrolment_id AND e.staff_id = NEW.staff_id
          AND e.approval_required AND e.approve_time IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'a staff credential is replaced only through an enrolment approved by a '
            'second administrator' USING ERRCODE = 'check_violation',
            CONSTRAINT = 'credential_replaced_by_two';
    END IF;
    RETURN NEW;
END
$$
"""
_TRIGGER = (
    # Only a change of the secrets: the foreign key's SET NULL (an old enrolment deleted) is not.
    "CREATE TRIGGER credential_replaced_by_two "
    "BEFORE UPDATE OF password_hash, totp_secret_enc ON iam.staff_credentials "
    "FOR EACH ROW EXECUTE FUNCTION iam.credential_replaced_by_two()"
)


def upgrade() -> None:
    op.add_column(
        _ENROLMENTS,
        sa.Column("approval_required", sa.Boolean(), nullable=False, server_default=sa.false()),
        schema="iam",
    )
    op.add_column(_ENROLMENTS, sa.Column("approved_by", sa.Text()), schema="iam")
    op.add_column(_ENROLMENTS, sa.Column("approve_time", sa.DateTime(timezone=True)), schema="iam")
    op.add_column(_ENROLMENTS, sa.Column("approval_code_hash", sa.LargeBinary()), schema="iam")
    # Codes still open were made under the one-administrator rule: retired, so that every
    # enrolment that can still be used was made under this one.
    op.execute(
        "UPDATE iam.staff_enrolments SET void_time = now() "
        "WHERE used_time IS NULL AND void_time IS NULL"
    )
    for name, condition in _CHECKS.items():
        op.create_check_constraint(name, _ENROLMENTS, condition, schema="iam")
    # Which enrolment set the credential (None: set directly, the development bootstrap
    # administrator's).
    op.add_column(
        "staff_credentials",
        sa.Column(
            "enrolment_id",
            postgresql.UUID(as_uuid=True),
            # Old enrolments are deleted after a while (credential_store.KEEP_ENDED).
            sa.ForeignKey(
                "iam.staff_enrolments.id", name="credential_enrolment", ondelete="SET NULL"
            ),
        ),
        schema="iam",
    )
    op.execute(_TRIGGER_FUNCTION)
    op.execute(_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER credential_replaced_by_two ON iam.staff_credentials")
    op.execute("DROP FUNCTION iam.credential_replaced_by_two()")
    op.drop_constraint(
        "credential_enrolment", "staff_credentials", schema="iam", type_="foreignkey"
    )
    op.drop_column("staff_credentials", "enrolment_id", schema="iam")
    for name in _CHECKS:
        op.drop_constraint(name, _ENROLMENTS, schema="iam", type_="check")
    # Half-made enrolments mean nothing to 0006's one-code rule: retired.
    op.execute(
        "UPDATE iam.staff_enrolments SET void_time = now() "
        "WHERE approval_required AND used_time IS NULL AND void_time IS NULL"
    )
    for column in ("approval_code_hash", "approve_time", "approved_by", "approval_required"):
        op.drop_column(_ENROLMENTS, column, schema="iam")
