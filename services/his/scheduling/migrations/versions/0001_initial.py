"""Scheduling schema: schedules, slot generations, slots, appointments.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A patient never holds two BOOKED/ARRIVED appointments that overlap in time (see tables.py).
NO_OVERLAP_FUNCTION = """
CREATE OR REPLACE FUNCTION scheduling.no_overlapping_appointments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status IN ('booked', 'arrived') THEN
    PERFORM pg_advisory_xact_lock(hashtextextended('his-appointments-' || NEW.patient_id::text, 0));
    IF EXISTS (
      SELECT 1 FROM scheduling.appointments a
      WHERE a.patient_id = NEW.patient_id
        AND a.id <> NEW.id
        AND a.status IN ('booked', 'arrived')
        AND a.start_time < NEW.end_time
        AND NEW.start_time < a.end_time
    ) THEN
      RAISE EXCEPTION 'patient already has an overlapping appointment'
        USING ERRCODE = 'exclusion_violation', CONSTRAINT = 'appointments_patient_no_overlap';
    END IF;
  END IF;
  RETURN NEW;
END
$$;
"""

NO_OVERLAP_TRIGGER = """
CREATE TRIGGER appointments_patient_no_overlap
BEFORE INSERT OR UPDATE OF status, start_time, end_time ON scheduling.appointments
FOR EACH ROW EXECUTE FUNCTION scheduling.no_overlapping_appointments();
"""


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("practitioner_id", sa.UUID(), nullable=True),
        sa.Column("service_type_system", sa.Text(), nullable=False),
        sa.Column("service_type_code", sa.Text(), nullable=False),
        sa.Column("service_type_display", sa.Text(), server_default="", nullable=False),
        sa.Column("horizon_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("horizon_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_request_fingerprint", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "horizon_end IS NULL OR horizon_end > horizon_start", name="horizon_ordered"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema="scheduling",
    )
    op.create_index(
        "schedules_list_order",
        "schedules",
        ["department_id", "practitioner_id", "id"],
        unique=False,
        schema="scheduling",
    )
    op.create_table(
        "slot_generations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("schedule_id", sa.UUID(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("request_fingerprint", sa.Text(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["scheduling.schedules.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("schedule_id", "request_id", name="generation_request_unique"),
        schema="scheduling",
    )
    op.create_table(
        "slots",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("schedule_id", sa.UUID(), nullable=False),
        sa.Column("generation_id", sa.UUID(), nullable=True),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("practitioner_id", sa.UUID(), nullable=True),
        sa.Column("service_type_system", sa.Text(), nullable=False),
        sa.Column("service_type_code", sa.Text(), nullable=False),
        sa.Column("service_type_display", sa.Text(), server_default="", nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("booked_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("block_reason", sa.Text(), nullable=True),
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
        sa.CheckConstraint("booked_count BETWEEN 0 AND capacity", name="within_capacity"),
        sa.CheckConstraint("capacity BETWEEN 1 AND 200", name="capacity_range"),
        sa.CheckConstraint("end_time > start_time", name="slot_ordered"),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["scheduling.slot_generations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["scheduling.schedules.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        schema="scheduling",
    )
    op.create_index(
        "slots_by_department",
        "slots",
        ["department_id", "start_time", "id"],
        unique=False,
        schema="scheduling",
    )
    op.create_index(
        "slots_by_generation", "slots", ["generation_id"], unique=False, schema="scheduling"
    )
    op.create_index(
        "slots_by_practitioner",
        "slots",
        ["practitioner_id", "start_time", "id"],
        unique=False,
        schema="scheduling",
    )
    op.create_index(
        "slots_by_schedule",
        "slots",
        ["schedule_id", "start_time"],
        unique=False,
        schema="scheduling",
    )
    op.create_index(
        "slots_by_start", "slots", ["start_time", "id"], unique=False, schema="scheduling"
    )
    op.create_table(
        "appointments",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("patient_id", sa.UUID(), nullable=False),
        sa.Column("slot_id", sa.UUID(), nullable=False),
        sa.Column("department_id", sa.UUID(), nullable=False),
        sa.Column("practitioner_id", sa.UUID(), nullable=True),
        sa.Column("service_type_system", sa.Text(), nullable=False),
        sa.Column("service_type_code", sa.Text(), nullable=False),
        sa.Column("service_type_display", sa.Text(), server_default="", nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), server_default="booked", nullable=False),
        sa.Column("arrive_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
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
            "(status = 'cancelled') = (cancel_time IS NOT NULL)", name="cancel_has_time"
        ),
        sa.CheckConstraint(
            "status IN ('booked', 'arrived', 'fulfilled', 'cancelled', 'noshow')",
            name="status_known",
        ),
        sa.ForeignKeyConstraint(
            ["slot_id"],
            ["scheduling.slots.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("create_request_id"),
        schema="scheduling",
    )
    op.create_index(
        "appointments_active_by_patient",
        "appointments",
        ["patient_id", "start_time"],
        unique=False,
        schema="scheduling",
        postgresql_where=sa.text("status IN ('booked', 'arrived')"),
    )
    op.create_index(
        "appointments_by_department",
        "appointments",
        ["department_id", "start_time"],
        unique=False,
        schema="scheduling",
    )
    op.create_index(
        "appointments_by_patient",
        "appointments",
        ["patient_id", "start_time"],
        unique=False,
        schema="scheduling",
    )
    op.create_index(
        "appointments_by_practitioner",
        "appointments",
        ["practitioner_id", "start_time"],
        unique=False,
        schema="scheduling",
    )
    op.create_index(
        "appointments_by_slot", "appointments", ["slot_id"], unique=False, schema="scheduling"
    )

    op.execute(NO_OVERLAP_FUNCTION)
    op.execute(NO_OVERLAP_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER appointments_patient_no_overlap ON scheduling.appointments")
    op.execute("DROP FUNCTION scheduling.no_overlapping_appointments()")
    op.drop_index("appointments_by_slot", table_name="appointments", schema="scheduling")
    op.drop_index("appointments_by_practitioner", table_name="appointments", schema="scheduling")
    op.drop_index("appointments_by_patient", table_name="appointments", schema="scheduling")
    op.drop_index("appointments_by_department", table_name="appointments", schema="scheduling")
    op.drop_index(
        "appointments_active_by_patient",
        table_name="appointments",
        schema="scheduling",
        postgresql_where=sa.text("status IN ('booked', 'arrived')"),
    )
    op.drop_table("appointments", schema="scheduling")
    op.drop_index("slots_by_start", table_name="slots", schema="scheduling")
    op.drop_index("slots_by_schedule", table_name="slots", schema="scheduling")
    op.drop_index("slots_by_practitioner", table_name="slots", schema="scheduling")
    op.drop_index("slots_by_generation", table_name="slots", schema="scheduling")
    op.drop_index("slots_by_department", table_name="slots", schema="scheduling")
    op.drop_table("slots", schema="scheduling")
    op.drop_table("slot_generations", schema="scheduling")
    op.drop_index("schedules_list_order", table_name="schedules", schema="scheduling")
    op.drop_table("schedules", schema="scheduling")
