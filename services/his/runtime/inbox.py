"""The receiving end of the outbox: other services' events, each applied exactly once.

A source's relay (his.runtime.relay) delivers its outbox at least once, in batches, through the
receiver's `DeliverEvents` rpc. The receiver applies each event in its own transaction, together
with a row of `<service>.inbox` keyed by the event id: a second delivery finds the row and changes
nothing. Events that carry a resource's state carry its revision too, so a handler keeps the newest
state whatever order deliveries arrive in (the relay sends a batch's events concurrently).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message
from sqlalchemy import Column, DateTime, MetaData, Table, Text, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

from his.base import identity
from his.base.errors import FieldViolation, InvalidArgument, PermissionDenied
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.runtime.database import Database
from his.runtime.outbox import table as _outbox_table
from his.runtime.relay import NO_FLUSH_WAIT, Deliver
from his.runtime.request_guard import nul_paths

TABLE = "inbox"
# One delivery call of a source's relay may take this long (the receiver applies the batch).
DELIVERY_TIMEOUT_S = 10.0
# One DeliverEvents call takes at most this many events (the relay's batches are smaller).
MAX_EVENTS = 500


def table(schema: str) -> str:
    """`"<schema>".inbox` (the schema is checked as the outbox's is: it becomes SQL)."""
    return _outbox_table(schema, TABLE)


def create_table_sql(schema: str) -> list[str]:
    """The statements of a service's migration that adds its inbox. Frozen as it is: a later
    change is a new function and a new migration."""
    return [
        f"""
        CREATE TABLE {table(schema)} (
            event_id uuid PRIMARY KEY,
            event_type text NOT NULL,
            source text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    ]


def drop_table_sql(schema: str) -> list[str]:
    """The statements of the migration's downgrade."""
    return [f"DROP TABLE {table(schema)}"]


def declare(metadata: MetaData) -> Table:
    """The inbox as SQLAlchemy sees it, in a service's `tables.py` (the schema tests compare it
    with what the migration builds)."""
    return Table(
        TABLE,
        metadata,
        Column("event_id", UUID(as_uuid=True), primary_key=True),
        Column("event_type", Text, nullable=False),
        Column("source", Text, nullable=False),
        Column(
            "applied_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=text("clock_timestamp()"),
        ),
    )


Handler = Callable[[AsyncSession, EventEnvelope, Message], Awaitable[None]]


@dataclass(frozen=True)
class Consumes:
    """One event type a service takes: who may send it, its payload and what applying it does
    (inside the transaction that also records the event id)."""

    source: str
    payload: type[Message]
    apply: Handler

    @property
    def event_type(self) -> str:
        return self.payload.DESCRIPTOR.full_name


@dataclass(frozen=True)
class Outcome:
    """What one DeliverEvents call did."""

    applied: int
    duplicates: int


def consuming(*kinds: Consumes) -> dict[str, Consumes]:
    """The event types of `kinds`, by type name."""
    return {kind.event_type: kind for kind in kinds}


async def first_delivery(session: AsyncSession, schema: str, event: EventEnvelope) -> bool:
    """Records `event` as applied; False if it already was (then apply nothing)."""
    result = await session.execute(
        text(
            # The condition also turns off the wait for the disk at this transaction's commit
            # (apply_events flushes once a batch), with no statement of its own.
            f"INSERT INTO {table(schema)} (event_id, event_type, source) "
            "SELECT CAST(:event_id AS uuid), CAST(:event_type AS text), CAST(:source AS text) "
            f"WHERE {NO_FLUSH_WAIT} "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        ),
        {
            "event_id": uuid.UUID(event.event_id),
            "event_type": event.event_type,
            "source": event.source,
        },
    )
    return result.first() is not None


def _check(
    events: Sequence[EventEnvelope], consumes: Mapping[str, Consumes]
) -> list[tuple[int, EventEnvelope, Consumes, Message]]:
    """Each event with what takes it and its unpacked payload; INVALID_ARGUMENT naming every bad
    event (a relay sends such an event to its dead letters), PERMISSION_DENIED when the caller is
    not the service an event type comes from."""
    if not events:
        raise InvalidArgument.field("events", "is required")
    if len(events) > MAX_EVENTS:
        raise InvalidArgument.field("events", f"at most {MAX_EVENTS} per call")
    caller = identity.current_or_none()
    bad: list[FieldViolation] = []
    checked: list[tuple[int, EventEnvelope, Consumes, Message]] = []
    for index, event in enumerate(events):
        field = f"events[{index}]"
        kind = consumes.get(event.event_type)
        try:
            uuid.UUID(event.event_id)
        except ValueError:
            bad.append(FieldViolation(f"{field}.event_id", "must be a UUID"))
        if kind is None:
            bad.append(FieldViolation(f"{field}.event_type", "is not an event this service takes"))
            continue
        if event.source != kind.source:
            bad.append(FieldViolation(f"{field}.source", f"must be {kind.source!r}"))
            continue
        if caller is not None and caller.service_name != kind.source:
            # Only the source's own relay delivers its events (the mesh says so too).
            raise PermissionDenied(
                f"only the {kind.source} service delivers {kind.event_type}",
                reason="SERVICE_NOT_PERMITTED",
            )
        payload = kind.payload()
        try:
            unpacked = event.payload.Unpack(payload)
        except DecodeError:
            # The right type name over bytes that are not that message.
            unpacked = False
        if not unpacked:
            bad.append(FieldViolation(f"{field}.payload", f"is not a {kind.event_type}"))
            continue
        # The request guard does not look inside an Any: a NUL the database cannot store would
        # end the event's transaction as INTERNAL, on every delivery again.
        nul = [
            FieldViolation(path, "must not contain the NUL character (U+0000)")
            for path in nul_paths(payload, f"{field}.payload.")
        ]
        if nul:
            bad += nul
            continue
        checked.append((index, event, kind, payload))
    if bad:
        raise InvalidArgument(bad)
    return checked


async def apply_events(
    database: Database,
    schema: str,
    events: Sequence[EventEnvelope],
    consumes: Mapping[str, Consumes],
) -> Outcome:
    """Applies each of `events` once, each in its own short transaction, in the order given.

    A handler refusing its payload (INVALID_ARGUMENT on the payload's fields) rolls back that
    event's transaction, so it is not recorded as applied; the refusal names the event
    (`events[i].payload.<field>`), as the contract says, so the relay can tell which one to keep
    as a dead letter. The events before it stay applied (a redelivery finds them duplicates)."""
    applied = duplicates = 0
    for index, event, kind, payload in _check(events, consumes):
        try:
            async with database.transaction() as session:
                # Each event's commit skips the wait for the disk (first_delivery says so);
                # `_flush` waits once for all of them before the relay hears the batch applied.
                if await first_delivery(session, schema, event):
                    await kind.apply(session, event, payload)
                    applied += 1
                else:
                    duplicates += 1
        except InvalidArgument as refused:
            if applied:
                await _flush(database)
            raise InvalidArgument(
                [
                    FieldViolation(f"events[{index}].payload.{v.field}", v.description)
                    for v in refused.violations
                ],
                reason=refused.reason,
                metadata=refused.metadata,
            ) from None
    # Duplicates too: their first application may have answered with an error before its flush.
    await _flush(database)
    return Outcome(applied=applied, duplicates=duplicates)


# A transaction with an id writes a commit record, and a durable commit waits until the WAL is
# flushed up to it — and so up to every earlier commit, those made without waiting included.
_DURABLE_MARK = "SELECT txid_current()"


async def _flush(database: Database) -> None:
    """Wait until every commit made so far is on disk: the events a DeliverEvents call applied
    are durable before it answers (the source deletes its rows on that answer), for the price of
    one disk wait a batch instead of one an event."""
    async with database.driver() as connection, connection.transaction():
        await connection.execute(_DURABLE_MARK)


def delivery(stub: Callable[[], Any], request_type: type[Message]) -> Deliver:
    """The source relay's way to a receiver's DeliverEvents: the whole batch in one call.
    `stub` gives the receiver's stub when a batch goes out (clients are made lazily)."""

    async def deliver(envelopes: Sequence[EventEnvelope]) -> None:
        await stub().DeliverEvents(request_type(events=list(envelopes)), timeout=DELIVERY_TIMEOUT_S)

    return deliver
