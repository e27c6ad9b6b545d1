"""Patient schema: patients, merge history, consents.

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


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("mrn_seq", start=1000000, schema="patient")))
    op.create_table(
        "patients",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "mrn_number",
            sa.BigInteger(),
            server_default=sa.text("nextval('patient.mrn_seq')"),
            nullable=False,
        ),
        sa.Column("state", sa.Text(), server_default="active", nullable=False),
        sa.Column("family_name", sa.Text(), nullable=False),
        sa.Column("given_names", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column(
            "family_key",
            sa.Text(),
            sa.Computed("lower(family_name)", persisted=True),
            nullable=False,
        ),
        sa.Column(
            "given_key",
            sa.Text(),
            sa.Computed("lower(coalesce(given_names[1], ''))", persisted=True),
            nullable=False,
        ),
        sa.Column("gender", sa.Text(), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("national_id_system", sa.Text(), nullable=True),
        sa.Column("national_id_value", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("address", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("merged_into", sa.UUID(), nullable=True),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "update_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(state = 'merged') = (merged_into IS NOT NULL)", name="merged_has_survivor"
        ),
        sa.CheckConstraint("gender IN ('male', 'female', 'other', 'unknown')", name="gender_known"),
        sa.CheckConstraint("state IN ('active', 'inactive', 'merged')", name="state_known"),
        sa.CheckConstraint(
            "(national_id_system IS NULL) = (national_id_value IS NULL)",
            name="national_id_complete",
        ),
        sa.CheckConstraint("cardinality(given_names) >= 1", name="has_given_name"),
        sa.CheckConstraint(
            "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
            name="patient_request_fingerprinted",
        ),
        sa.CheckConstraint("merged_into IS DISTINCT FROM id", name="not_merged_into_self"),
        sa.ForeignKeyConstraint(
            ["merged_into"],
            ["patient.patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        sa.UniqueConstraint("mrn_number"),
        sa.UniqueConstraint("national_id_system", "national_id_value", name="national_id_unique"),
        schema="patient",
    )
    op.create_index(
        "patients_birth_date", "patients", ["birth_date"], unique=False, schema="patient"
    )
    op.create_index(
        "patients_family_prefix",
        "patients",
        ["family_key"],
        unique=False,
        schema="patient",
        postgresql_ops={"family_key": "text_pattern_ops"},
    )
    op.create_index(
        "patients_given_prefix",
        "patients",
        ["given_key"],
        unique=False,
        schema="patient",
        postgresql_ops={"given_key": "text_pattern_ops"},
    )
    op.create_index(
        "patients_list_order",
        "patients",
        ["family_key", "given_key", "id"],
        unique=False,
        schema="patient",
    )
    op.create_index("patients_phone", "patients", ["phone"], unique=False, schema="patient")
    op.create_table(
        "consents",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'inactive') = (revoke_time IS NOT NULL)", name="revoked_has_time"
        ),
        sa.CheckConstraint("status IN ('active', 'inactive')", name="consent_status_known"),
        sa.CheckConstraint(
            "period_end IS NULL OR period_end > period_start", name="period_ordered"
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patient.patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "create_request_id", name="consent_request_unique"),
        sa.CheckConstraint(
            "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
            name="consent_request_fingerprinted",
        ),
        schema="patient",
    )
    op.create_index(
        "consents_by_patient",
        "consents",
        ["patient_id", sa.literal_column("create_time DESC"), "id"],
        unique=False,
        schema="patient",
    )
    op.create_table(
        "patient_merges",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("duplicate_id", sa.UUID(), nullable=False),
        sa.Column("survivor_id", sa.UUID(), nullable=False),
        sa.Column("previous_state", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "merge_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("unmerge_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unmerge_reason", sa.Text(), nullable=True),
        sa.CheckConstraint("previous_state IN ('active', 'inactive')", name="previous_state_known"),
        sa.ForeignKeyConstraint(
            ["duplicate_id"],
            ["patient.patients.id"],
        ),
        sa.ForeignKeyConstraint(
            ["survivor_id"],
            ["patient.patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        schema="patient",
    )
    op.create_index(
        "patient_merges_one_open",
        "patient_merges",
        ["duplicate_id"],
        unique=True,
        schema="patient",
        postgresql_where=sa.text("unmerge_time IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "patient_merges_one_open",
        table_name="patient_merges",
        schema="patient",
        postgresql_where=sa.text("unmerge_time IS NULL"),
    )
    op.drop_table("patient_merges", schema="patient")
    op.drop_index("consents_by_patient", table_name="consents", schema="patient")
    op.drop_table("consents", schema="patient")
    op.drop_index("patients_phone", table_name="patients", schema="patient")
    op.drop_index("patients_list_order", table_name="patients", schema="patient")
    op.drop_index(
        "patients_given_prefix",
        table_name="patients",
        schema="patient",
        postgresql_ops={"given_key": "text_pattern_ops"},
    )
    op.drop_index(
        "patients_family_prefix",
        table_name="patients",
        schema="patient",
        postgresql_ops={"family_key": "text_pattern_ops"},
    )
    op.drop_index("patients_birth_date", table_name="patients", schema="patient")
    op.drop_table("patients", schema="patient")
    op.execute(sa.schema.DropSequence(sa.Sequence("mrn_seq", schema="patient")))
