"""Iam schema: how many administrators stood behind an enrolment and the credential it set
(issue 17, the rev17 residual).

An administrator who enrols a person with no TOTP role alone (one administrator suffices there)
knows that person's password and TOTP secret; once a second administrator approves a TOTP role
for the person (ADMINISTRATOR, DOCTOR, ...), the first would hold a second administrator's or a
clinician's account. So each enrolment and each credential records its assurance:

- TWO_ADMINISTRATORS: both halves of the code, from two administrators;
- LONE_ADMINISTRATOR: one, under the bootstrap exception (a TOTP role, nobody else could approve);
- ONE_ADMINISTRATOR: one, for someone with no TOTP role: such a credential never signs in while
  its person holds a TOTP role (his.iam.credentials.login: REENROLMENT_REQUIRED);
- UNCHECKED: created with security off (HIS_SECURITY=off: no caller is checked);
- DIRECT: set without an enrolment (the development bootstrap administrator).

Existing rows: an enrolment that required approval, and a credential set by one, are
TWO_ADMINISTRATORS; other enrolments, and credentials set by them, ONE_ADMINISTRATOR (whether the
bootstrap exception applied was not recorded: such a person re-enrols with two administrators);
credentials with no enrolment DIRECT. The triggers hold the claim: a credential claims no more
than its enrolment gave, and a replaced credential is always TWO_ADMINISTRATORS.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LEVELS = "('TWO_ADMINISTRATORS', 'LONE_ADMINISTRATOR', 'ONE_ADMINISTRATOR', 'UNCHECKED')"
ENROLMENT_CHECKS = {
    "enrolment_assurance_known": f"assurance IN {_LEVELS}",
    "enrolment_assurance_two_iff_required": "approval_required = "
    "(assurance = 'TWO_ADMINISTRATORS')",
}
CREDENTIAL_CHECKS = {
    "credential_assurance_known": "assurance IN "
    "('TWO_ADMINISTRATORS', 'LONE_ADMINISTRATOR', 'ONE_ADMINISTRATOR', 'UNCHECKED', 'DIRECT')",
}
_MESSAGE = (
    "'a staff credential is replaced only through an enrolment approved by a second administrator'"
)
_REPLACED = """
CREATE OR REPLACE FUNCTION iam.credential_replaced_by_two() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enrolment_id IS NULL OR NEW.enrolment_id IS NOT DISTINCT FROM OLD.enrolment_id
       OR NEW.assurance <> 'TWO_ADMINISTRATORS'
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
# 0008's, restored by the downgrade.
_REPLACED_0008 = """
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
# A new credential claims no more than its enrolment gave: ONE_ADMINISTRATOR always may (the
# weakest), DIRECT only without an enrolment, anything else only what its open enrolment of the
# same person records (TWO_ADMINISTRATORS once approved).
_CLAIMED = """
CREATE FUNCTION iam.credential_assurance_claimed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (
        NEW.assurance = 'ONE_ADMINISTRATOR' AND NEW.enrolment_id IS NOT NULL
        OR NEW.assurance = 'DIRECT' AND NEW.enrolment_id IS NULL
        OR EXISTS (
            SELECT 1 FROM iam.staff_enrolments e
            WHERE e.id = NEW.enrolment_id AND e.staff_id = NEW.staff_id
              AND e.assurance = NEW.assurance
              AND (NOT e.approval_required OR e.approve_time IS NOT NULL)
        )
    ) THEN
        RAISE EXCEPTION 'a staff credential claims no more administrators than its enrolment had'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'credential_assurance_claimed';
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    for table in ("staff_enrolments", "staff_credentials"):
        op.add_column(
            table,
            sa.Column("assurance", sa.Text(), nullable=False, server_default="ONE_ADMINISTRATOR"),
            schema="iam",
        )
        op.alter_column(table, "assurance", server_default=None, schema="iam")
    op.execute(
        "UPDATE iam.staff_enrolments SET assurance = 'TWO_ADMINISTRATORS' WHERE approval_required"
    )
    # Before the trigger watches the column.
    op.execute(
        "UPDATE iam.staff_credentials c SET assurance = CASE "
        "WHEN c.enrolment_id IS NULL THEN 'DIRECT' "
        "WHEN EXISTS (SELECT 1 FROM iam.staff_enrolments e "
        "WHERE e.id = c.enrolment_id AND e.approval_required) THEN 'TWO_ADMINISTRATORS' "
        "ELSE 'ONE_ADMINISTRATOR' END"
    )
    for name, condition in ENROLMENT_CHECKS.items():
        op.create_check_constraint(name, "staff_enrolments", condition, schema="iam")
    for name, condition in CREDENTIAL_CHECKS.items():
        op.create_check_constraint(name, "staff_credentials", condition, schema="iam")
    op.execute(_REPLACED)
    op.execute("DROP TRIGGER credential_replaced_by_two ON iam.staff_credentials")
    op.execute(
        "CREATE TRIGGER credential_replaced_by_two "
        "BEFORE UPDATE OF password_hash, totp_secret_enc, staff_id, assurance "
        "ON iam.staff_credentials "
        "FOR EACH ROW EXECUTE FUNCTION iam.credential_replaced_by_two()"
    )
    op.execute(_CLAIMED)
    op.execute(
        "CREATE TRIGGER credential_assurance_claimed BEFORE INSERT ON iam.staff_credentials "
        "FOR EACH ROW EXECUTE FUNCTION iam.credential_assurance_claimed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER credential_assurance_claimed ON iam.staff_credentials")
    op.execute("DROP FUNCTION iam.credential_assurance_claimed()")
    op.execute("DROP TRIGGER credential_replaced_by_two ON iam.staff_credentials")
    op.execute(
        "CREATE TRIGGER credential_replaced_by_two "
        "BEFORE UPDATE OF password_hash, totp_secret_enc, staff_id ON iam.staff_credentials "
        "FOR EACH ROW EXECUTE FUNCTION iam.credential_replaced_by_two()"
    )
    op.execute(_REPLACED_0008)
    # 0008 has no assurance: a one-administrator credential would sign in with a TOTP role again.
    for name in CREDENTIAL_CHECKS:
        op.drop_constraint(name, "staff_credentials", schema="iam", type_="check")
    for name in ENROLMENT_CHECKS:
        op.drop_constraint(name, "staff_enrolments", schema="iam", type_="check")
    op.drop_column("staff_credentials", "assurance", schema="iam")
    op.drop_column("staff_enrolments", "assurance", schema="iam")
