"""The emr schema: encounters, clinical notes (text encrypted) and diagnoses.

Invariants live here where the database can hold them: one live encounter per appointment, one
principal diagnosis per encounter, one amendment per note version (so the newest version is the
only one that can be amended), and a signed note's content never changes (a trigger, migration
0001).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from his.runtime.fieldcrypt import data_keys_table
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "emr"
metadata = MetaData(schema=SCHEMA)

ENCOUNTER_CLASSES = (
    "ambulatory",
    "emergency",
    "inpatient",
    "short_stay",
    "virtual",
    "home_health",
)
ENCOUNTER_STATUSES = (
    "planned",
    "arrived",
    "in_progress",
    "finished",
    "cancelled",
    "entered_in_error",
)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


encounters = Table(
    "encounters",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("encounter_class", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("department_id", UUID(as_uuid=True), nullable=False),
    Column("practitioner_id", UUID(as_uuid=True)),
    Column("appointment_id", UUID(as_uuid=True)),
    Column("surgical", Boolean, nullable=False, server_default=text("false")),
    Column("sensitive", Boolean, nullable=False, server_default=text("false")),
    Column("start_time", DateTime(timezone=True)),
    Column("end_time", DateTime(timezone=True)),
    # When the encounter stopped being open: finished, cancelled or entered in error.
    Column("closed_time", DateTime(timezone=True)),
    Column("cancel_reason", Text),
    Column("entered_in_error_reason", Text),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(_one_of("encounter_class", ENCOUNTER_CLASSES), name="class_known"),
    CheckConstraint(_one_of("status", ENCOUNTER_STATUSES), name="status_known"),
    CheckConstraint(
        "(status IN ('finished', 'cancelled', 'entered_in_error')) = (closed_time IS NOT NULL)",
        name="closed_has_time",
    ),
    CheckConstraint("status <> 'finished' OR end_time IS NOT NULL", name="finished_has_end"),
)
Index("encounters_by_patient", encounters.c.patient_id, encounters.c.create_time, encounters.c.id)
Index(
    "encounters_by_practitioner",
    encounters.c.practitioner_id,
    encounters.c.create_time,
    encounters.c.id,
)
Index(
    "encounters_by_department",
    encounters.c.department_id,
    encounters.c.create_time,
    encounters.c.id,
)
Index("encounters_by_time", encounters.c.create_time, encounters.c.id)
# One live encounter per appointment: a second check-in event, or a clinician opening the same
# visit by hand, cannot make two.
Index(
    "encounters_one_per_appointment",
    encounters.c.appointment_id,
    unique=True,
    postgresql_where=text("status NOT IN ('cancelled', 'entered_in_error')"),
)

notes = Table(
    "notes",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("encounter_id", UUID(as_uuid=True), ForeignKey("encounters.id"), nullable=False),
    Column("author_id", UUID(as_uuid=True), nullable=False),
    Column("type_system", Text, nullable=False),
    Column("type_code", Text, nullable=False),
    Column("type_display", Text, nullable=False, server_default=""),
    # Encrypted (fieldcrypt format, AAD "emr.notes.text_enc"): the text is never stored in clear.
    Column("text_enc", LargeBinary, nullable=False),
    Column("status", Text, nullable=False, server_default="preliminary"),
    Column("sign_time", DateTime(timezone=True)),
    # The version this one corrects; at most one correction per version (unique).
    Column("amends_id", UUID(as_uuid=True), ForeignKey("notes.id"), unique=True),
    Column("amend_reason", Text),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('preliminary', 'final', 'amended')", name="note_status_known"),
    CheckConstraint("(status = 'preliminary') = (sign_time IS NULL)", name="signed_has_time"),
    CheckConstraint(
        "(status = 'amended') = (amends_id IS NOT NULL AND amend_reason IS NOT NULL)",
        name="amendment_linked",
    ),
)
Index("notes_by_encounter", notes.c.encounter_id, notes.c.create_time, notes.c.id)

# A signed note (FINAL or AMENDED) never changes, and no note is ever deleted: enforced by the
# trigger `notes_immutable_once_signed` (migration 0001), whatever code path tries.
NOTES_IMMUTABLE_TRIGGER = "notes_immutable_once_signed"

diagnoses = Table(
    "diagnoses",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("encounter_id", UUID(as_uuid=True), ForeignKey("encounters.id"), nullable=False),
    Column("code_system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("code_display", Text, nullable=False, server_default=""),
    Column("clinical_status", Text, nullable=False),
    Column("verification_status", Text, nullable=False),
    Column("rank", Integer, nullable=False),
    # A partial date: month and day may be 0 when unknown.
    Column("onset_year", Integer),
    Column("onset_month", Integer),
    Column("onset_day", Integer),
    Column("recorder_id", UUID(as_uuid=True), nullable=False),
    Column("create_request_id", Text, unique=True),
    Column("create_request_fingerprint", Text),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("rank BETWEEN 1 AND 99", name="rank_range"),
)
Index(
    "diagnoses_by_encounter",
    diagnoses.c.encounter_id,
    diagnoses.c.rank,
    diagnoses.c.create_time,
    diagnoses.c.id,
)
# A code counts once per encounter; a diagnosis entered in error no longer counts.
Index(
    "diagnoses_code_once",
    diagnoses.c.encounter_id,
    diagnoses.c.code_system,
    diagnoses.c.code,
    unique=True,
    postgresql_where=text("verification_status <> 'entered_in_error'"),
)
# At most one principal diagnosis (rank 1) among those that still count.
Index(
    "diagnoses_one_principal",
    diagnoses.c.encounter_id,
    unique=True,
    postgresql_where=text(
        "rank = 1 AND verification_status NOT IN ('refuted', 'entered_in_error')"
    ),
)

# Wrapped data keys of this schema (his.runtime.fieldcrypt).
data_keys = data_keys_table(metadata)

# Events for other services (audit among them), stored with the change (his.runtime.outbox).
outbox = declare_outbox(metadata)
