"""Audit schema: hash-chained events, the chain head, append-only guard.

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
    op.create_table(
        "events",
        sa.Column("sequence_number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("outcome_description", sa.Text(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("agent_staff", sa.Text(), nullable=False),
        sa.Column("agent_roles", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("agent_on_behalf_of", sa.Text(), nullable=False),
        sa.Column("agent_service_account", sa.Text(), nullable=False),
        sa.Column("agent_network_address", sa.Text(), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("entity_resource_name", sa.Text(), nullable=False),
        sa.Column("entity_resource_type", sa.Text(), nullable=False),
        sa.Column("purpose_of_use", sa.Text(), nullable=True),
        sa.Column("emergency_access", sa.Boolean(), nullable=False),
        sa.Column("emergency_access_grant", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.Text(), nullable=False),
        sa.Column("previous_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("writer_service", sa.Text(), nullable=False),
        sa.CheckConstraint("sequence_number >= 1", name="sequence_positive"),
        sa.CheckConstraint("octet_length(hash) = 32", name="hash_sha256"),
        sa.CheckConstraint("octet_length(previous_hash) = 32", name="previous_hash_sha256"),
        sa.CheckConstraint(
            "emergency_access = (emergency_access_grant <> '')", name="emergency_has_grant"
        ),
        sa.CheckConstraint(
            "patient = '' OR purpose_of_use IS NOT NULL", name="patient_has_purpose"
        ),
        sa.PrimaryKeyConstraint("sequence_number"),
        sa.UniqueConstraint("event_id"),
        schema="audit",
    )
    op.create_index(
        "events_by_patient",
        "events",
        ["patient", "sequence_number"],
        unique=False,
        schema="audit",
        postgresql_where=sa.text("patient <> ''"),
    )
    op.create_index(
        "events_by_agent_staff",
        "events",
        ["agent_staff", "sequence_number"],
        unique=False,
        schema="audit",
        postgresql_where=sa.text("agent_staff <> ''"),
    )
    op.create_index("events_by_event_time", "events", ["event_time"], unique=False, schema="audit")
    op.create_index(
        "events_emergency",
        "events",
        ["sequence_number"],
        unique=False,
        schema="audit",
        postgresql_where=sa.text("emergency_access"),
    )
    op.create_table(
        "chain_head",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_sequence_number", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("id = 1", name="one_head"),
        sa.CheckConstraint("last_sequence_number >= 0", name="head_sequence_not_negative"),
        sa.CheckConstraint("octet_length(last_hash) = 32", name="head_hash_sha256"),
        sa.PrimaryKeyConstraint("id"),
        schema="audit",
    )
    # The empty chain: nothing appended yet, the "previous hash" of event 1 is 32 zero bytes.
    op.execute(
        "INSERT INTO audit.chain_head (id, last_sequence_number, last_hash)"
        " VALUES (1, 0, decode(repeat('00', 32), 'hex'))"
    )
    # Append-only in the database too: the service never updates or deletes an event, so any
    # attempt is refused. (A superuser can still get round it; VerifyChain is what detects that.)
    op.execute(
        """
        CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON audit.events"
        " FOR EACH ROW EXECUTE FUNCTION audit.refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.events"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()"
    )
    # The head only moves forward: winding it back (to hide deleted newest events from a
    # VerifyChain that ends at the head) is refused like any other change of history.
    op.execute(
        """
        CREATE FUNCTION audit.head_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.last_sequence_number <= OLD.last_sequence_number THEN
                RAISE EXCEPTION 'the audit chain head only moves forward'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER head_forward_only BEFORE UPDATE ON audit.chain_head"
        " FOR EACH ROW EXECUTE FUNCTION audit.head_moves_forward()"
    )
    op.execute(
        "CREATE TRIGGER head_not_removed BEFORE DELETE OR TRUNCATE ON audit.chain_head"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER head_not_removed ON audit.chain_head")
    op.execute("DROP TRIGGER head_forward_only ON audit.chain_head")
    op.execute("DROP FUNCTION audit.head_moves_forward()")
    op.execute("DROP TRIGGER events_no_truncate ON audit.events")
    op.execute("DROP TRIGGER events_append_only ON audit.events")
    op.execute("DROP FUNCTION audit.refuse_change()")
    op.drop_table("chain_head", schema="audit")
    op.drop_index(
        "events_emergency",
        table_name="events",
        schema="audit",
        postgresql_where=sa.text("emergency_access"),
    )
    op.drop_index("events_by_event_time", table_name="events", schema="audit")
    op.drop_index(
        "events_by_agent_staff",
        table_name="events",
        schema="audit",
        postgresql_where=sa.text("agent_staff <> ''"),
    )
    op.drop_index(
        "events_by_patient",
        table_name="events",
        schema="audit",
        postgresql_where=sa.text("patient <> ''"),
    )
    op.drop_table("events", schema="audit")
