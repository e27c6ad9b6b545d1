"""The audit schema: the append-only, hash-chained events and the one-row head of the chain.

Every AuditEvent field is a column holding exactly what was hashed, so a row rebuilt from its
columns hashes the same (see chain.py). Names are kept as the text that was written (`patients/…`,
`staff/…`) rather than parsed ids: the hash covers the text, and the text is what an auditor reads.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

SCHEMA = "audit"
metadata = MetaData(schema=SCHEMA)

events = Table(
    "events",
    metadata,
    # The position in the chain: 1, 2, 3, ... without gaps, assigned under the chain head's lock.
    Column("sequence_number", BigInteger, primary_key=True, autoincrement=False),
    # The writer's id of the event (canonical UUID); a retried write carries the same one.
    Column("event_id", UUID(as_uuid=False), nullable=False, unique=True),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("record_time", DateTime(timezone=True), nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("outcome_description", Text, nullable=False),
    Column("operation", Text, nullable=False),
    Column("agent_staff", Text, nullable=False),
    Column("agent_roles", ARRAY(Text), nullable=False),
    Column("agent_on_behalf_of", Text, nullable=False),
    Column("agent_service_account", Text, nullable=False),
    Column("agent_network_address", Text, nullable=False),
    # A signed-in patient acting on their own records (AuditAgent.patient); '' otherwise.
    Column("agent_patient", Text, nullable=False, server_default=""),
    Column("patient", Text, nullable=False),
    # Both empty when the event names no entity.
    Column("entity_resource_name", Text, nullable=False),
    Column("entity_resource_type", Text, nullable=False),
    # AuditEntity.changes in order, as JSON text: [{"field_path": .., "before": .., "after": ..}]
    # (text, not jsonb: the group-commit writer's driver and SQLAlchemy then read it alike).
    Column("entity_changes", Text, nullable=False, server_default="[]"),
    # NULL for PURPOSE_OF_USE_UNSPECIFIED (allowed only without a patient).
    Column("purpose_of_use", Text),
    Column("emergency_access", Boolean, nullable=False),
    Column("emergency_access_grant", Text, nullable=False),
    Column("trace_id", Text, nullable=False),
    Column("previous_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    # The authenticated service that wrote the event (`pharmacy`); replays must come from it.
    Column("writer_service", Text, nullable=False),
    CheckConstraint("sequence_number >= 1", name="sequence_positive"),
    CheckConstraint("octet_length(hash) = 32", name="hash_sha256"),
    CheckConstraint("octet_length(previous_hash) = 32", name="previous_hash_sha256"),
    CheckConstraint(
        "emergency_access = (emergency_access_grant <> '')", name="emergency_has_grant"
    ),
    CheckConstraint("patient = '' OR purpose_of_use IS NOT NULL", name="patient_has_purpose"),
    CheckConstraint("jsonb_typeof(entity_changes::jsonb) = 'array'", name="entity_changes_list"),
)

# Auditors' questions: everything about a patient, everything a staff member did, a time window,
# every break-the-glass access; each answered in sequence order from an index.
Index(
    "events_by_patient",
    events.c.patient,
    events.c.sequence_number,
    postgresql_where=text("patient <> ''"),
)
Index(
    "events_by_agent_staff",
    events.c.agent_staff,
    events.c.sequence_number,
    postgresql_where=text("agent_staff <> ''"),
)
Index("events_by_event_time", events.c.event_time)
Index(
    "events_emergency",
    events.c.sequence_number,
    postgresql_where=text("emergency_access"),
)

# Exactly one row (id = 1): the last sequence number and hash. Appends lock it FOR UPDATE, which
# serialises them across every replica of the service.
chain_head = Table(
    "chain_head",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("last_sequence_number", BigInteger, nullable=False),
    Column("last_hash", LargeBinary, nullable=False),
    CheckConstraint("id = 1", name="one_head"),
    CheckConstraint("last_sequence_number >= 0", name="head_sequence_not_negative"),
    CheckConstraint("octet_length(last_hash) = 32", name="head_hash_sha256"),
)

# Exactly one row (id = 1): how far VerifyChain last found the chain intact, for incremental
# checks. `mac` authenticates the other columns under a key the database does not hold (see
# checkpoint.py); empty means no checkpoint yet. No trigger guards it: a forged or rewound row
# fails authentication or only makes the next check longer.
verify_checkpoint = Table(
    "verify_checkpoint",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("sequence_number", BigInteger, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("verified_at", DateTime(timezone=True)),
    Column("mac", LargeBinary, nullable=False),
    CheckConstraint("id = 1", name="one_checkpoint"),
    CheckConstraint("sequence_number >= 0", name="checkpoint_sequence_not_negative"),
    CheckConstraint("octet_length(hash) = 32", name="checkpoint_hash_sha256"),
    CheckConstraint("octet_length(mac) IN (0, 32)", name="checkpoint_mac_hmac_sha256"),
)

# Signed checkpoints (anchor.py): the service's Ed25519-signed statement that events
# 1..sequence_number end in `hash`. Append-only like the events. A superuser can still edit or
# delete rows here; what they cannot do is sign, so an edit fails verification, and a deleted
# newest checkpoint is still known to the service (in memory and in its log file outside the
# database). `event_prefixes` holds the first 16 bytes of the hash of every event since the
# previous checkpoint, to name the first event a rewrite changed.
chain_checkpoints = Table(
    "chain_checkpoints",
    metadata,
    Column("checkpoint_number", BigInteger, primary_key=True, autoincrement=False),
    Column("sequence_number", BigInteger, nullable=False, unique=True),
    Column("hash", LargeBinary, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("key_id", Text, nullable=False),
    Column("previous_digest", LargeBinary, nullable=False),
    Column("events_digest", LargeBinary, nullable=False),
    Column("event_prefixes", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    CheckConstraint("checkpoint_number >= 1", name="checkpoint_number_positive"),
    CheckConstraint("sequence_number >= 1", name="checkpoint_covers_events"),
    CheckConstraint("octet_length(hash) = 32", name="checkpoint_head_sha256"),
    CheckConstraint("octet_length(signature) = 64", name="checkpoint_signature_ed25519"),
)

# Which checkpoint a CreateChainCheckpoint `request_id` got, so a replay returns it (the primary
# key, not a search, makes the first answer stick).
checkpoint_requests = Table(
    "checkpoint_requests",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("checkpoint_number", BigInteger, nullable=False),
)
