"""The scheduling schema: schedules, their slots, the generations that made them, appointments,
the outbox, the inbox and the copy of patient states."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from his.runtime.inbox import declare as declare_inbox
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "scheduling"
metadata = MetaData(schema=SCHEMA)

schedules = Table(
    "schedules",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("department_id", UUID(as_uuid=True), nullable=False),
    Column("practitioner_id", UUID(as_uuid=True)),
    Column("service_type_system", Text, nullable=False),
    Column("service_type_code", Text, nullable=False),
    Column("service_type_display", Text, nullable=False, server_default=""),
    Column("horizon_start", DateTime(timezone=True), nullable=False),
    Column("horizon_end", DateTime(timezone=True)),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("horizon_end IS NULL OR horizon_end > horizon_start", name="horizon_ordered"),
)
Index(
    "schedules_list_order",
    schedules.c.department_id,
    schedules.c.practitioner_id,
    schedules.c.id,
)

# One row per GenerateSlots call that carried a request id: a replay returns that call's slots.
slot_generations = Table(
    "slot_generations",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("schedule_id", UUID(as_uuid=True), ForeignKey("schedules.id"), nullable=False),
    Column("request_id", Text, nullable=False),
    Column("request_fingerprint", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("schedule_id", "request_id", name="generation_request_unique"),
)

slots = Table(
    "slots",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("schedule_id", UUID(as_uuid=True), ForeignKey("schedules.id"), nullable=False),
    Column("generation_id", UUID(as_uuid=True), ForeignKey("slot_generations.id")),
    # Copied from the schedule (immutable there) so slot searches need no join.
    Column("department_id", UUID(as_uuid=True), nullable=False),
    Column("practitioner_id", UUID(as_uuid=True)),
    Column("service_type_system", Text, nullable=False),
    Column("service_type_code", Text, nullable=False),
    Column("service_type_display", Text, nullable=False, server_default=""),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("capacity", Integer, nullable=False),
    # Places held by BOOKED, ARRIVED, FULFILLED and NOSHOW appointments.
    Column("booked_count", Integer, nullable=False, server_default="0"),
    Column("block_reason", Text),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("end_time > start_time", name="slot_ordered"),
    CheckConstraint("capacity BETWEEN 1 AND 200", name="capacity_range"),
    # The no-double-booking invariant, in the database: no code path can overfill a slot.
    CheckConstraint("booked_count BETWEEN 0 AND capacity", name="within_capacity"),
)
Index("slots_by_schedule", slots.c.schedule_id, slots.c.start_time)
Index("slots_by_department", slots.c.department_id, slots.c.start_time, slots.c.id)
Index("slots_by_practitioner", slots.c.practitioner_id, slots.c.start_time, slots.c.id)
Index("slots_by_start", slots.c.start_time, slots.c.id)
Index("slots_by_generation", slots.c.generation_id)

appointments = Table(
    "appointments",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("slot_id", UUID(as_uuid=True), ForeignKey("slots.id"), nullable=False),
    # Copied from the slot at booking time.
    Column("department_id", UUID(as_uuid=True), nullable=False),
    Column("practitioner_id", UUID(as_uuid=True)),
    Column("service_type_system", Text, nullable=False),
    Column("service_type_code", Text, nullable=False),
    Column("service_type_display", Text, nullable=False, server_default=""),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False, server_default="booked"),
    Column("arrive_time", DateTime(timezone=True)),
    Column("cancel_time", DateTime(timezone=True)),
    Column("cancel_reason", Text),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "status IN ('booked', 'arrived', 'fulfilled', 'cancelled', 'noshow')", name="status_known"
    ),
    CheckConstraint("(status = 'cancelled') = (cancel_time IS NOT NULL)", name="cancel_has_time"),
)
Index("appointments_by_patient", appointments.c.patient_id, appointments.c.start_time)
Index("appointments_by_practitioner", appointments.c.practitioner_id, appointments.c.start_time)
Index("appointments_by_department", appointments.c.department_id, appointments.c.start_time)
Index("appointments_by_slot", appointments.c.slot_id)
# The check-ins of a period (ListAppointments arrive_period: billing's reconciliation).
Index(
    "appointments_by_arrive_time",
    appointments.c.arrive_time,
    postgresql_where=text("arrive_time IS NOT NULL"),
)
Index(
    "appointments_active_by_patient",
    appointments.c.patient_id,
    appointments.c.start_time,
    postgresql_where=text("status IN ('booked', 'arrived')"),
)

# A patient never holds two BOOKED/ARRIVED appointments that overlap in time: enforced by the
# trigger `appointments_patient_no_overlap` (migration 0001). An exclusion constraint would need
# btree_gist, which embedded PostgreSQL lacks; the trigger serialises one patient's bookings on an
# advisory lock and raises exclusion_violation, as the constraint would.
NO_OVERLAP_CONSTRAINT = "appointments_patient_no_overlap"

# Events for other services (audit among them), stored with the change (his.runtime.outbox).
outbox = declare_outbox(metadata)

# Events of other services (patient), each applied once (his.runtime.inbox).
inbox = declare_inbox(metadata)

# This service's copy of each patient's state, fed by the patient service's PatientStateChanged
# events: BookAppointment reads it instead of calling the patient service. `revision` is the
# patient record's version; an older event never overwrites a newer one.
patient_states = Table(
    "patient_states",
    metadata,
    Column("patient_id", UUID(as_uuid=True), primary_key=True),
    Column("state", Text, nullable=False),
    Column("merged_into", UUID(as_uuid=True)),
    Column("revision", BigInteger, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("state IN ('active', 'inactive', 'merged')", name="patient_state_known"),
)
