"""The patient schema: patients, their merge history and their consents.

National identifier, phone and address are stored encrypted (`*_enc`, his.runtime.fieldcrypt) under
the data keys in `data_keys`; exact-match search and uniqueness go through keyed blind indexes
(`*_bidx`), so the database never holds these values in plain text.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from his.runtime.fieldcrypt import data_keys_table
from his.runtime.inbox import declare as declare_inbox
from his.runtime.outbox import declare as declare_outbox

SCHEMA = "patient"
metadata = MetaData(schema=SCHEMA)

# Medical record numbers: a sequence, never reused, shown with a Luhn check digit (see mapping.py).
mrn_sequence = Sequence("mrn_seq", start=1000000, metadata=metadata, schema=SCHEMA)

patients = Table(
    "patients",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "mrn_number",
        BigInteger,
        mrn_sequence,
        nullable=False,
        unique=True,
        server_default=mrn_sequence.next_value(),
    ),
    Column("state", Text, nullable=False, server_default="active"),
    Column("family_name", Text, nullable=False),
    Column("given_names", ARRAY(Text), nullable=False),
    # Search keys, computed by PostgreSQL so they can never disagree with the names.
    Column("family_key", Text, Computed("lower(family_name)", persisted=True), nullable=False),
    Column(
        "given_key",
        Text,
        Computed("lower(coalesce(given_names[1], ''))", persisted=True),
        nullable=False,
    ),
    Column("gender", Text, nullable=False),
    Column("birth_date", Date, nullable=False),
    # Encrypted (fieldcrypt format, AAD "patient.patients.<column>"). The issuing system is
    # encrypted too: a foreign passport's issuer tells the patient's nationality.
    Column("national_id_system_enc", LargeBinary),
    Column("national_id_value_enc", LargeBinary),
    # HMAC of (system, value) under the index key: the unique lookup key of a national identifier.
    Column("national_id_bidx", LargeBinary),
    Column("phone_enc", LargeBinary),
    Column("phone_bidx", LargeBinary),
    # The address as encrypted JSON text.
    Column("address_enc", LargeBinary),
    Column("merged_into", UUID(as_uuid=True), ForeignKey("patients.id")),
    # The idempotency key of the CreatePatient call that made this row: a replay finds it here.
    Column("create_request_id", Text, unique=True),
    # Encrypted too: a plain SHA-256 of the request would let anyone holding the other columns
    # try every national identifier (a few million candidates) against it.
    Column("create_request_fingerprint_enc", LargeBinary),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("state IN ('active', 'inactive', 'merged')", name="state_known"),
    CheckConstraint("gender IN ('male', 'female', 'other', 'unknown')", name="gender_known"),
    CheckConstraint("(state = 'merged') = (merged_into IS NOT NULL)", name="merged_has_survivor"),
    CheckConstraint("merged_into IS DISTINCT FROM id", name="not_merged_into_self"),
    CheckConstraint(
        "(national_id_system_enc IS NULL) = (national_id_value_enc IS NULL)",
        name="national_id_complete",
    ),
    CheckConstraint(
        "(national_id_value_enc IS NULL) = (national_id_bidx IS NULL)", name="national_id_indexed"
    ),
    CheckConstraint("(phone_enc IS NULL) = (phone_bidx IS NULL)", name="phone_indexed"),
    CheckConstraint("cardinality(given_names) >= 1", name="has_given_name"),
    CheckConstraint(
        "(create_request_id IS NULL) = (create_request_fingerprint_enc IS NULL)",
        name="patient_request_fingerprinted",
    ),
    UniqueConstraint("national_id_bidx", name="national_id_unique"),
)

# Prefix search on either name, and the list order (family, first given name, id) for keyset pages.
Index(
    "patients_family_prefix",
    patients.c.family_key,
    postgresql_ops={"family_key": "text_pattern_ops"},
)
Index(
    "patients_given_prefix", patients.c.given_key, postgresql_ops={"given_key": "text_pattern_ops"}
)
Index("patients_list_order", patients.c.family_key, patients.c.given_key, patients.c.id)
Index("patients_birth_date", patients.c.birth_date)
Index("patients_phone", patients.c.phone_bidx)

# Wrapped data keys of this schema (his.runtime.fieldcrypt).
data_keys = data_keys_table(metadata)

patient_merges = Table(
    "patient_merges",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("duplicate_id", UUID(as_uuid=True), ForeignKey("patients.id"), nullable=False),
    Column("survivor_id", UUID(as_uuid=True), ForeignKey("patients.id"), nullable=False),
    # The state the duplicate had before the merge, restored by an unmerge.
    Column("previous_state", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("merge_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("unmerge_time", DateTime(timezone=True)),
    Column("unmerge_reason", Text),
    CheckConstraint("previous_state IN ('active', 'inactive')", name="previous_state_known"),
)

# At most one merge in force per duplicate; history rows (unmerged) may be many.
Index(
    "patient_merges_one_open",
    patient_merges.c.duplicate_id,
    unique=True,
    postgresql_where=text("unmerge_time IS NULL"),
)

consents = Table(
    "consents",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients.id"), nullable=False),
    Column("scope", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="active"),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True)),
    Column("note", Text, nullable=False, server_default=""),
    Column("create_request_id", Text),
    Column("create_request_fingerprint", Text),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoke_time", DateTime(timezone=True)),
    CheckConstraint("status IN ('active', 'inactive')", name="consent_status_known"),
    CheckConstraint("period_end IS NULL OR period_end > period_start", name="period_ordered"),
    CheckConstraint("(status = 'inactive') = (revoke_time IS NOT NULL)", name="revoked_has_time"),
    UniqueConstraint("patient_id", "create_request_id", name="consent_request_unique"),
    CheckConstraint(
        "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
        name="consent_request_fingerprinted",
    ),
)

Index("consents_by_patient", consents.c.patient_id, consents.c.create_time.desc(), consents.c.id)

# Events for other services (audit among them), stored with the change (his.runtime.outbox).
outbox = declare_outbox(metadata)

# The ids of the other services' events already applied, each once (his.runtime.inbox).
inbox = declare_inbox(metadata)

# One row per appointment of the scheduling service and per encounter of the EMR, as its newest
# AppointmentChanged / EncounterChanged event said (his.patient.care): who has a care relationship
# with the patient, and when. Other services' resources, referred to by name and id (no foreign
# keys: the patient may be registered after the event).
care_relationships = Table(
    "care_relationships",
    metadata,
    # `appointments/{id}` or `encounters/{id}`.
    Column("record", Text, primary_key=True),
    Column("patient_id", UUID(as_uuid=True), nullable=False),
    Column("department_id", UUID(as_uuid=True), nullable=False),
    Column("practitioner_id", UUID(as_uuid=True)),
    Column("start_time", DateTime(timezone=True), nullable=False),
    # NULL while the encounter goes on: related until it ends (and the window after).
    Column("end_time", DateTime(timezone=True)),
    # False once the appointment was cancelled or the encounter cancelled or entered in error.
    Column("related", Boolean, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("end_time IS NULL OR end_time >= start_time", name="care_period_ordered"),
)
Index(
    "care_by_patient",
    care_relationships.c.patient_id,
    care_relationships.c.end_time,
    postgresql_where=text("related"),
)
