"""Iam schema: migration 0007's trigger made strict (review rev17).

0007's trigger let a credential's secrets change whenever the row's enrolment_id named some
approved two-administrator enrolment of the person, so once a credential had been set that way
(every doctor's first enrolment, every re-enrolment) a plain UPDATE of password_hash passed; and it
watched UPDATE only, so DELETE then INSERT replaced a credential unchecked. Now a change of the
secrets (or of the row's staff member) must name a different enrolment than before, one of the
same person that needed and got a second administrator and is still open (not used, retired or
expired: the completion marks it used after setting the credential, in the same transaction), and
a credential is never deleted (staff members are deactivated, never deleted).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MESSAGE = (
    "'a staff credential is replaced only through an enrolment approved by a second administrator'"
)
_STRICT = """
CREATE OR REPLACE FUNCTION iam.credential_replaced_by_two() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enrolment_id IS NULL OR NEW.enrolment_id IS NOT DISTINCT FROM OLD.enrolment_id
       OR NOT EXISTS (
        SELECT 1 FROM iam.staff_enrolments e
        WHERE e.id = NEW.enrolment_id AND e.staff_id = NEW.staff_id
          AND e.approval_required AND e.approve_time IS NOT NULL
          AND e.used_time IS NULL AND e.void_time IS NULL AND e.expire_time > now()
    ) THEN
        RAISE EXCEPTION '%s' USING ERRCODE = 'check_violation',
            CONSTRAINT = 'credential_replaced_by_two';
    END IF;
    RETURN NEW;
END
$$
""".replace("'%s'", _MESSAGE)
_LENIENT = """
CREATE OR REPLACE FUNCTION iam.credential_replaced_by_two() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enrolment_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM iam.staff_enrolments e
        WHERE e.id = NEW.enrolment_id AND e.staff_id = NEW.staff_id
          AND e.approval_required AND e.approve_time IS NOT NULL
    ) THEN
        RAISE EXCEPTION '%s' USING ERRCODE = 'check_violation',
            CONSTRAINT = 'credential_replaced_by_two';
    END IF;
    RETURN NEW;
END
$$
""".replace("'%s'", _MESSAGE)
_NEVER_DELETED = """
CREATE FUNCTION iam.credential_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a staff credential is never deleted: it is replaced only through an '
        'enrolment approved by a second administrator' USING ERRCODE = 'check_violation',
        CONSTRAINT = 'credential_never_deleted';
END
$$
"""


def upgrade() -> None:
    op.execute(_STRICT)
    op.execute("DROP TRIGGER credential_replaced_by_two ON iam.staff_credentials")
    op.execute(
        "CREATE TRIGGER credential_replaced_by_two "
        "BEFORE UPDATE OF password_hash, totp_secret_enc, staff_id ON iam.staff_credentials "
        "FOR EACH ROW EXECUTE FUNCTION iam.credential_replaced_by_two()"
    )
    op.execute(_NEVER_DELETED)
    op.execute(
        "CREATE TRIGGER credential_never_deleted BEFORE DELETE ON iam.staff_credentials "
        "FOR EACH ROW EXECUTE FUNCTION iam.credential_never_deleted()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER credential_never_deleted ON iam.staff_credentials")
    op.execute("DROP FUNCTION iam.credential_never_deleted()")
    op.execute("DROP TRIGGER credential_replaced_by_two ON iam.staff_credentials")
    op.execute(
        "CREATE TRIGGER credential_replaced_by_two "
        "BEFORE UPDATE OF password_hash, totp_secret_enc ON iam.staff_credentials "
        "FOR EACH ROW EXECUTE FUNCTION iam.credential_replaced_by_two()"
    )
    op.execute(_LENIENT)
