"""Iam schema: the privacy officer role, one open break-the-glass grant per person and patient, and
the privacy officer's review of every grant.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_ROLES = (
    "'REGISTRAR', 'DOCTOR', 'NURSE', 'PHARMACIST', 'LAB_TECHNICIAN', 'BILLING_CLERK', "
    "'AUDITOR', 'ADMINISTRATOR'"
)
_NEW_ROLES = f"{_OLD_ROLES}, 'PRIVACY_OFFICER'"
_GRANTS = "emergency_access_grants"


def _roles_check(roles: str) -> None:
    op.drop_constraint("staff_roles_known", "staff", schema="iam", type_="check")
    op.create_check_constraint(
        "staff_roles_known",
        "staff",
        # No cardinality: since 0004 a new staff member holds no role until one is approved.
        f"roles <@ ARRAY[{roles}]::text[]",
        schema="iam",
    )
    # 0004's access changes name roles from the same list.
    op.drop_constraint("access_change_roles_known", "access_changes", schema="iam", type_="check")
    op.create_check_constraint(
        "access_change_roles_known",
        "access_changes",
        f"(kind = 'roles') = (roles IS NOT NULL AND cardinality(roles) >= 1 "
        f"AND roles <@ ARRAY[{roles}]::text[])",
        schema="iam",
    )


def upgrade() -> None:
    _roles_check(_NEW_ROLES)
    op.add_column(_GRANTS, sa.Column("closed_time", sa.DateTime(timezone=True)), schema="iam")
    op.add_column(
        _GRANTS,
        sa.Column("review_state", sa.Text(), nullable=False, server_default="pending"),
        schema="iam",
    )
    op.add_column(
        _GRANTS,
        sa.Column(
            "reviewer_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("iam.staff.id", name="grant_reviewer_staff"),
        ),
        schema="iam",
    )
    op.add_column(_GRANTS, sa.Column("review_time", sa.DateTime(timezone=True)), schema="iam")
    op.add_column(_GRANTS, sa.Column("review_comment", sa.Text()), schema="iam")
    # Grants over before this migration are closed; of several open ones of one person and
    # patient (possible before), all but the newest are closed too, so the index below holds.
    op.execute(
        "UPDATE iam.emergency_access_grants SET closed_time = COALESCE(revoke_time, expire_time) "
        "WHERE revoke_time IS NOT NULL OR expire_time <= now()"
    )
    op.execute(
        "UPDATE iam.emergency_access_grants g SET closed_time = now() "
        "WHERE closed_time IS NULL AND EXISTS (SELECT 1 FROM iam.emergency_access_grants n "
        "WHERE n.staff_id = g.staff_id "
        "AND n.patient_id = g.patient_id AND n.closed_time IS NULL "
        "AND (n.grant_time, n.id) > (g.grant_time, g.id))"
    )
    op.create_check_constraint(
        "grant_review_state_known",
        _GRANTS,
        "review_state IN ('pending', 'justified', 'flagged')",
        schema="iam",
    )
    op.create_check_constraint(
        "grant_reviewed_by_someone",
        _GRANTS,
        "(review_state = 'pending') = (reviewer_id IS NULL) "
        "AND (reviewer_id IS NULL) = (review_time IS NULL)",
        schema="iam",
    )
    op.create_check_constraint(
        "grant_review_comment_length",
        _GRANTS,
        "review_comment IS NULL OR char_length(review_comment) <= 1000",
        schema="iam",
    )
    op.create_check_constraint(
        "grant_closed_after_grant",
        _GRANTS,
        "closed_time IS NULL OR closed_time >= grant_time",
        schema="iam",
    )
    op.create_index(
        "grants_one_open",
        _GRANTS,
        ["staff_id", "patient_id"],
        unique=True,
        schema="iam",
        postgresql_where=sa.text("closed_time IS NULL"),
    )
    op.create_index(
        "grants_review_queue",
        _GRANTS,
        ["review_state", sa.text("grant_time DESC"), sa.text("id DESC")],
        schema="iam",
    )


def downgrade() -> None:
    op.drop_index("grants_review_queue", _GRANTS, schema="iam")
    op.drop_index("grants_one_open", _GRANTS, schema="iam")
    for name in (
        "grant_closed_after_grant",
        "grant_review_comment_length",
        "grant_reviewed_by_someone",
        "grant_review_state_known",
    ):
        op.drop_constraint(name, _GRANTS, schema="iam", type_="check")
    for column in ("review_comment", "review_time", "reviewer_id", "review_state", "closed_time"):
        op.drop_column(_GRANTS, column, schema="iam")
    # 0005 allows a staff member without roles (0004's pending grants), so nobody is deleted:
    # a privacy officer just loses the role, and proposals of nothing else but it are rejected.
    op.execute("UPDATE iam.staff SET roles = array_remove(roles, 'PRIVACY_OFFICER')")
    op.execute(
        "UPDATE iam.access_changes SET roles = array_remove(roles, 'PRIVACY_OFFICER') "
        "WHERE kind = 'roles' AND cardinality(array_remove(roles, 'PRIVACY_OFFICER')) >= 1"
    )
    op.execute(
        "DELETE FROM iam.access_changes WHERE kind = 'roles' "
        "AND cardinality(array_remove(roles, 'PRIVACY_OFFICER')) = 0"
    )
    _roles_check(_OLD_ROLES)
