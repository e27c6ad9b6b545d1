"""The transactional outbox: what other services must learn of is stored with the change.

An event (an audit event, a domain event) is a row of `<service>.outbox`, inserted in the same
transaction as the change it reports — or, for a read, committed in the service's own database
before the answer, concurrent reads sharing one commit. No answer waits on another service. The
relay (his.runtime.relay) delivers rows later, at least once; receivers apply each event exactly
once by its id.

Rows hold the event's `EventEnvelope` (protos/his/events/v1), its destination (a service name)
and when it may next be tried; a delivered row is deleted (the receiver keeps the record), one the
receiver refuses for good is kept as a dead letter for an operator.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Unavailable
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.runtime.database import Database, open_driver_transaction, open_transaction
from his.runtime.telemetry import current_trace_id

TABLE = "outbox"
_SCHEMA = re.compile(r"^[a-z][a-z_]*$")


def table(schema: str, name: str = TABLE) -> str:
    """`"<schema>".outbox` (or another table of the schema, e.g. the inbox); the schema is a
    catalog service name (checked: it becomes SQL)."""
    if not _SCHEMA.fullmatch(schema):
        raise ValueError(f"not a service schema: {schema!r}")
    return f'"{schema}".{name}'


def create_table_sql(schema: str) -> list[str]:
    """The statements of a service's migration that adds its outbox (one per statement).

    Migrations run this, so it is frozen as it is: a later change to the table is a new function
    and a new migration, never an edit here."""
    return [
        f"""
        CREATE TABLE {table(schema)} (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id uuid NOT NULL,
            destination text NOT NULL,
            event_type text NOT NULL,
            envelope bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            -- Not before this time: a claimed row's lease, or a failed one's backoff.
            available_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts integer NOT NULL DEFAULT 0,
            -- Refused for good by its receiver: kept for an operator, never retried.
            dead_at timestamptz,
            last_error text,
            CONSTRAINT {TABLE}_event_unique UNIQUE (event_id, destination)
        )
        """,
        f"CREATE INDEX {TABLE}_ready ON {table(schema)} (destination, available_at, id) "
        "WHERE dead_at IS NULL",
    ]


def declare(metadata: MetaData) -> Table:
    """The outbox as SQLAlchemy sees it, in a service's `tables.py` (what the migration builds;
    the schema tests compare the two)."""
    return Table(
        TABLE,
        metadata,
        Column("id", BigInteger, Identity(always=True), primary_key=True),
        Column("event_id", UUID(as_uuid=True), nullable=False),
        Column("destination", Text, nullable=False),
        Column("event_type", Text, nullable=False),
        Column("envelope", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
        Column("available_at", DateTime(timezone=True), nullable=False, server_default=_NOW),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("dead_at", DateTime(timezone=True)),
        Column("last_error", Text),
        UniqueConstraint("event_id", "destination", name=f"{TABLE}_event_unique"),
        Index(
            f"{TABLE}_ready",
            "destination",
            "available_at",
            "id",
            postgresql_where=text("dead_at IS NULL"),
        ),
    )


_NOW = text("clock_timestamp()")


def drop_table_sql(schema: str) -> list[str]:
    """The statements of the migration's downgrade."""
    return [f"DROP TABLE {table(schema)}"]


@dataclass(frozen=True)
class Outgoing:
    """One event on its way out: where it goes and what it says."""

    destination: str
    envelope: EventEnvelope


def envelope(
    payload: Message,
    *,
    source: str,
    event_id: str | None = None,
    subject: str = "",
    patient: str = "",
    occur_time: dt.datetime | None = None,
    occurred: Timestamp | None = None,
    trace_id: str | None = None,
) -> EventEnvelope:
    """An envelope for `payload`, stamped with the call's trace id (unless given) and the time
    it occurred (`occurred`, else `occur_time`, else now)."""
    result = EventEnvelope(
        event_id=event_id or str(uuid.uuid4()),
        event_type=payload.DESCRIPTOR.full_name,
        source=source,
        subject=subject,
        patient=patient,
        trace_id=current_trace_id() if trace_id is None else trace_id,
    )
    result.payload.Pack(payload)
    if occurred is not None:
        result.occur_time.CopyFrom(occurred)
    else:
        result.occur_time.FromDatetime(occur_time or dt.datetime.now(dt.UTC))
    return result


class Outbox:
    """A service's outbox: events inserted with the open transaction, or group-committed."""

    def __init__(self, database: Database, schema: str) -> None:
        self._database = database
        self.schema = schema
        columns = f"{table(schema)} (event_id, destination, event_type, envelope)"
        self._insert_one = text(
            f"INSERT INTO {columns} "  # noqa: S608 (a checked schema name, values bound)
            "VALUES (CAST(:event_id AS uuid), :destination, :event_type, :envelope)"
        )
        self._insert_many = (
            f"INSERT INTO {columns} "  # noqa: S608 (a checked schema name, values bound)
            "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])"
        )
        self._insert_row = f"INSERT INTO {columns} VALUES ($1, $2, $3, $4)"  # noqa: S608
        self._queue: list[tuple[list[Outgoing], asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        # Set after rows were committed (the relay's wake-up), whichever way they came.
        self.committed: list[asyncio.Event] = []
        # Shared commits made for events recorded outside a transaction (a figure for tests).
        self.commits = 0

    async def add(self, events: Sequence[Outgoing]) -> None:
        """Store `events` durably: in the open transaction when there is one (they commit or
        roll back with the change), else in a commit shared with concurrent callers, before
        this returns. Raises what the database raised (the error interceptor maps outages)."""
        if not events:
            return
        driver = open_driver_transaction()
        if driver is not None:
            # Buffered, and inserted in one round trip as the transaction's last statement: a
            # booking's audit event and its AppointmentChanged cost one.
            buffered = driver.buffers.get(self)
            if buffered is None:
                buffered = driver.buffers[self] = []
                driver.before_commit.append(partial(self._insert_rows, driver.connection, buffered))
                driver.after_commit.append(self._wake)
            for r in (row(event) for event in events):
                buffered.append((r["event_id"], r["destination"], r["event_type"], r["envelope"]))
            return
        session = open_transaction()
        if session is not None:
            await self.add_in(session, events)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((list(events), future))
        if self._committer is None:
            # Belongs to no caller: no deadline, identity or span of the first one.
            self._committer = asyncio.create_task(self._commit_all(), context=contextvars.Context())
        await asyncio.shield(future)

    async def _insert_rows(self, connection: asyncpg.Connection, rows: list[Any]) -> None:
        # Scalar parameters: array ones make the driver look their types up on every new
        # connection (three round trips), and a pool at its limit opens new ones often.
        await connection.executemany(self._insert_row, rows)

    async def add_in(self, session: AsyncSession, events: Sequence[Outgoing]) -> None:
        """Insert `events` in `session`'s transaction."""
        await session.execute(self._insert_one, [row(event) for event in events])
        # The relay may look once the transaction committed (a rollback wakes it for nothing).
        sqlalchemy_event.listen(
            session.sync_session, "after_commit", lambda _: self._wake(), once=True
        )

    def _wake(self) -> None:
        for event in self.committed:
            event.set()

    async def _commit_all(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue, []
                await self._commit(group)
        finally:
            self._committer = None

    async def _commit(self, group: list[tuple[list[Outgoing], asyncio.Future[None]]]) -> None:
        rows = [row(event) for events, _ in group for event in events]
        self.commits += 1
        try:
            # One statement, its own transaction: one round trip for the whole group.
            async with self._database.driver() as connection:
                await connection.execute(
                    self._insert_many,
                    [row["event_id"] for row in rows],
                    [row["destination"] for row in rows],
                    [row["event_type"] for row in rows],
                    [row["envelope"] for row in rows],
                )
        except BaseException as error:
            for _, future in group:
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else _stopped())
            if not isinstance(error, Exception):
                raise
            return
        for _, future in group:
            if not future.done():
                future.set_result(None)
        self._wake()


def row(event: Outgoing) -> dict[str, object]:
    """An event's outbox columns, as bound parameters (also for a data migration's backfill)."""
    return {
        "event_id": event.envelope.event_id,
        "destination": event.destination,
        "event_type": event.envelope.event_type,
        "envelope": event.envelope.SerializeToString(),
    }


def _stopped() -> Exception:
    return Unavailable("the outbox was stopped", reason="OUTBOX_STOPPED")
