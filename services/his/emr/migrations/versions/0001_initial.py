"""Emr schema: encounters, notes (text encrypted), diagnoses, data keys and the outbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from his.runtime.outbox import create_table_sql, drop_table_sql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "emr"

# A signed note never changes and no note is deleted (tables.py, NOTES_IMMUTABLE_TRIGGER). Signing
# itself (preliminary -> final, sign_time set) is the one change a draft's content fields allow.
IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION emr.notes_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'clinical notes are never deleted'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'notes_immutable_once_signed';
  END IF;
  IF OLD.status <> 'preliminary' AND (
       NEW.text_enc IS DISTINCT FROM OLD.text_enc
    OR NEW.type_system IS DISTINCT FROM OLD.type_system
    OR NEW.type_code IS DISTINCT FROM OLD.type_code
    OR NEW.type_display IS DISTINCT FROM OLD.type_display
    OR NEW.status IS DISTINCT FROM OLD.status
    OR NEW.sign_time IS DISTINCT FROM OLD.sign_time
    OR NEW.author_id IS DISTINCT FROM OLD.author_id
    OR NEW.encounter_id IS DISTINCT FROM OLD.encounter_id
    OR NEW.amends_id IS DISTINCT FROM OLD.amends_id
    OR NEW.amend_reason IS DISTINCT FROM OLD.amend_reason
  ) THEN
    RAISE EXCEPTION 'a signed note cannot be changed; amend it instead'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'notes_immutable_once_signed';
  END IF;
  RETURN NEW;
END
$$;
"""

IMMUTABLE_TRIGGER = """
CREATE TRIGGER notes_immutable_once_signed
BEFORE UPDATE OR DELETE ON emr.notes
FOR EACH ROW EXECUTE FUNCTION emr.notes_immutable();
"""


def _times() -> list[sa.Column[Any]]:
    return [
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
    ]


def upgrade() -> None:
    op.create_table(
        "encounters",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("encounter_class", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("practitioner_id", sa.UUID(), nullable=True),
        sa.Column("appointment_id", sa.UUID(), nullable=True),
        sa.Column("surgical", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("sensitive", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("entered_in_error_reason", sa.Text(), nullable=True),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        *_times(),
        sa.CheckConstraint(
            "encounter_class IN ('ambulatory', 'emergency', 'inpatient', 'short_stay', "
            "'virtual', 'home_health')",
            name="class_known",
        ),
        sa.CheckConstraint(
            "status IN ('planned', 'arrived', 'in_progress', 'finished', 'cancelled', "
            "'entered_in_error')",
            name="status_known",
        ),
        sa.CheckConstraint(
            "(status IN ('finished', 'cancelled', 'entered_in_error')) = (closed_time IS NOT NULL)",
            name="closed_has_time",
        ),
        sa.CheckConstraint("status <> 'finished' OR end_time IS NOT NULL", name="finished_has_end"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema=SCHEMA,
    )
    for name, column in (
        ("encounters_by_patient", "patient_id"),
        ("encounters_by_practitioner", "practitioner_id"),
        ("encounters_by_department", "department_id"),
    ):
        op.create_index(name, "encounters", [column, "create_time", "id"], schema=SCHEMA)
    op.create_index("encounters_by_time", "encounters", ["create_time", "id"], schema=SCHEMA)
    op.create_index(
        "encounters_one_per_appointment",
        "encounters",
        ["appointment_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("status NOT IN ('cancelled', 'entered_in_error')"),
    )

    op.create_table(
        "notes",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=False),
        sa.Column("author_id", sa.UUID(), nullable=False),
        sa.Column("type_system", sa.Text(), nullable=False),
        sa.Column("type_code", sa.Text(), nullable=False),
        sa.Column("type_display", sa.Text(), server_default="", nullable=False),
        sa.Column("text_enc", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.Text(), server_default="preliminary", nullable=False),
        sa.Column("sign_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("amends_id", sa.UUID(), nullable=True),
        sa.Column("amend_reason", sa.Text(), nullable=True),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        *_times(),
        sa.CheckConstraint(
            "status IN ('preliminary', 'final', 'amended')", name="note_status_known"
        ),
        sa.CheckConstraint(
            "(status = 'preliminary') = (sign_time IS NULL)", name="signed_has_time"
        ),
        sa.CheckConstraint(
            "(status = 'amended') = (amends_id IS NOT NULL AND amend_reason IS NOT NULL)",
            name="amendment_linked",
        ),
        sa.ForeignKeyConstraint(["encounter_id"], ["emr.encounters.id"]),
        sa.ForeignKeyConstraint(["amends_id"], ["emr.notes.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("amends_id"),
        sa.UniqueConstraint("create_request_id"),
        schema=SCHEMA,
    )
    op.create_index(
        "notes_by_encounter", "notes", ["encounter_id", "create_time", "id"], schema=SCHEMA
    )
    op.execute(IMMUTABLE_FUNCTION)
    op.execute(IMMUTABLE_TRIGGER)

    op.create_table(
        "diagnoses",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("encounter_id", sa.UUID(), nullable=False),
        sa.Column("code_system", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_display", sa.Text(), server_default="", nullable=False),
        sa.Column("clinical_status", sa.Text(), nullable=False),
        sa.Column("verification_status", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("onset_year", sa.Integer(), nullable=True),
        sa.Column("onset_month", sa.Integer(), nullable=True),
        sa.Column("onset_day", sa.Integer(), nullable=True),
        sa.Column("recorder_id", sa.UUID(), nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        *_times(),
        sa.CheckConstraint("rank BETWEEN 1 AND 99", name="rank_range"),
        sa.ForeignKeyConstraint(["encounter_id"], ["emr.encounters.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema=SCHEMA,
    )
    op.create_index(
        "diagnoses_by_encounter",
        "diagnoses",
        ["encounter_id", "rank", "create_time", "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "diagnoses_code_once",
        "diagnoses",
        ["encounter_id", "code_system", "code"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("verification_status <> 'entered_in_error'"),
    )
    op.create_index(
        "diagnoses_one_principal",
        "diagnoses",
        ["encounter_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text(
            "rank = 1 AND verification_status NOT IN ('refuted', 'entered_in_error')"
        ),
    )

    op.create_table(
        "data_keys",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("master_key_id", sa.Text(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("retired", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    for statement in create_table_sql(SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_table_sql(SCHEMA):
        op.execute(statement)
    op.drop_table("data_keys", schema=SCHEMA)
    op.drop_table("diagnoses", schema=SCHEMA)
    op.execute("DROP TRIGGER notes_immutable_once_signed ON emr.notes")
    op.execute("DROP FUNCTION emr.notes_immutable()")
    op.drop_table("notes", schema=SCHEMA)
    op.drop_table("encounters", schema=SCHEMA)
