"""Iam schema: the two-person rule. Access changes (roles to add, memberships) wait for a second
administrator's approval; a staff member may hold no role (until their first roles are approved);
a membership carries its approval state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The role names of migration 0001 (a migration keeps its own copy: the code's list may grow).
_ROLES = (
    "'REGISTRAR', 'DOCTOR', 'NURSE', 'PHARMACIST', 'LAB_TECHNICIAN', 'BILLING_CLERK', "
    "'AUDITOR', 'ADMINISTRATOR'"
)


def upgrade() -> None:
    # A new staff member holds no role until a second administrator approves the ones asked for.
    op.drop_constraint("staff_roles_known", "staff", schema="iam")
    op.create_check_constraint(
        "staff_roles_known", "staff", f"roles <@ ARRAY[{_ROLES}]::text[]", schema="iam"
    )
    op.create_table(
        "access_changes",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("staff_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("roles", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("membership_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("proposer_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("decider_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("rule", sa.Text(), server_default="two_person", nullable=False),
        sa.Column(
            "create_time", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("decide_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('roles', 'membership')", name="access_change_kind_known"),
        sa.CheckConstraint(
            "rule IN ('two_person', 'setup', 'demo_seed')", name="access_change_rule_known"
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'rejected')", name="access_change_state_known"
        ),
        sa.CheckConstraint(
            f"(kind = 'roles') = (roles IS NOT NULL AND cardinality(roles) >= 1 "
            f"AND roles <@ ARRAY[{_ROLES}]::text[])",
            name="access_change_roles_known",
        ),
        sa.CheckConstraint(
            "(kind = 'membership') = (membership_id IS NOT NULL)",
            name="access_change_membership_named",
        ),
        sa.CheckConstraint("proposer_id <> staff_id", name="access_change_not_own_proposal"),
        sa.CheckConstraint(
            "decider_id IS NULL OR decider_id <> staff_id", name="access_change_not_own_decision"
        ),
        sa.CheckConstraint(
            "state <> 'approved' OR decider_id <> proposer_id "
            "OR (decider_id IS NULL AND rule <> 'two_person')",
            name="access_change_second_person",
        ),
        sa.CheckConstraint(
            "(state = 'pending') = (decide_time IS NULL)", name="access_change_decided_when"
        ),
        sa.CheckConstraint(
            "state = 'pending' OR decider_id IS NOT NULL OR rule <> 'two_person'",
            name="access_change_decider_named",
        ),
        sa.ForeignKeyConstraint(["staff_id"], ["iam.staff.id"]),
        sa.ForeignKeyConstraint(["membership_id"], ["iam.memberships.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("membership_id", name="access_change_membership_unique"),
        schema="iam",
    )
    op.create_index(
        "access_changes_list_order",
        "access_changes",
        [sa.text("create_time DESC"), sa.text("id DESC")],
        schema="iam",
    )
    op.create_index(
        "access_changes_by_staff",
        "access_changes",
        ["staff_id", sa.text("create_time DESC"), sa.text("id DESC")],
        schema="iam",
    )
    # Memberships made before the two-person rule stay in force: approved.
    op.add_column(
        "memberships",
        sa.Column("approval_state", sa.Text(), server_default="approved", nullable=False),
        schema="iam",
    )
    op.add_column(
        "memberships",
        sa.Column("access_change_id", postgresql.UUID(as_uuid=True), nullable=True),
        schema="iam",
    )
    op.create_check_constraint(
        "membership_approval_known",
        "memberships",
        "approval_state IN ('pending', 'approved', 'rejected')",
        schema="iam",
    )


def downgrade() -> None:
    # Without approval_state a membership counts by its period alone: end the ones that were
    # never approved where they start, so a rollback puts nobody's pending access into force.
    op.execute(
        "UPDATE iam.memberships SET period_end = period_start "
        "WHERE approval_state <> 'approved' "
        "AND (period_end IS NULL OR period_end > period_start)"
    )
    op.drop_constraint("membership_approval_known", "memberships", schema="iam")
    op.drop_column("memberships", "access_change_id", schema="iam")
    op.drop_column("memberships", "approval_state", schema="iam")
    op.drop_index("access_changes_by_staff", table_name="access_changes", schema="iam")
    op.drop_index("access_changes_list_order", table_name="access_changes", schema="iam")
    op.drop_table("access_changes", schema="iam")
    # Staff members without a role cannot go back under the old rule: they are deactivated
    # and given the least role (REGISTRAR is not patient-clinical; none could sign in anyway).
    op.execute(
        "UPDATE iam.staff SET roles = ARRAY['REGISTRAR'], active = false "
        "WHERE cardinality(roles) = 0"
    )
    op.drop_constraint("staff_roles_known", "staff", schema="iam")
    op.create_check_constraint(
        "staff_roles_known",
        "staff",
        f"cardinality(roles) >= 1 AND roles <@ ARRAY[{_ROLES}]::text[]",
        schema="iam",
    )
