"""The receiving end of the outbox: other services' events, each applied exactly once.

A source's relay (his.runtime.relay) delivers its outbox at least once, in batches, through the
receiver's `DeliverEvents` rpc. The receiver applies a call's events in one transaction, together
with a row of `<service>.inbox` per event keyed by its id: a second delivery finds the row and
changes nothing. Events that carry a resource's state carry its revision too, so a handler keeps
the newest state whatever order deliveries arrive in (several relays deliver concurrently).
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
from his.runtime.relay import Deliver
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


async def first_deliveries(
    session: AsyncSession, schema: str, events: Sequence[EventEnvelope]
) -> set[str]:
    """Records `events` as applied, in one statement; the ids of those that were not already
    (apply only these). A concurrent delivery of the same id waits for the other's commit and
    then finds it."""
    if not events:
        return set()
    # Through SQLAlchemy: the transaction's first statement (see database.driver_of).
    result = await session.execute(
        text(
            f"INSERT INTO {table(schema)} (event_id, event_type, source) "  # noqa: S608
            "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), "
            "CAST(:sources AS text[])) ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        ),
        {
            "ids": [uuid.UUID(event.event_id) for event in events],
            "types": [event.event_type for event in events],
            "sources": [event.source for event in events],
        },
    )
    return {str(row[0]) for row in result}


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
    """Applies each of `events` once, in the order given, all in one transaction (one commit and
    one wait for the disk a batch: an event a transaction of its own cost ~4 statements and a
    session each, the largest cost of a receiving service under load).

    A handler refusing its payload (INVALID_ARGUMENT on the payload's fields) is not recorded as
    applied; the events before it are, in a transaction of their own (the batch's is rolled
    back and its prefix applied again), and the refusal names the event
    (`events[i].payload.<field>`), as the contract says, so the relay can tell which one to keep
    as a dead letter. Any other error rolls the whole batch back: the relay delivers it again.
    That includes a deadlock, possible when two deliveries running at once change the same rows
    in opposite orders: PostgreSQL ends one (INTERNAL to its relay, which backs off and retries)."""
    checked = _check(events, consumes)
    end = len(checked)
    refusal: _Refused | None = None
    while True:
        try:
            outcome = await _apply_prefix(database, schema, checked[:end])
        except _Refused as refused:
            # Everything before the refused event again, without it.
            refusal, end = refused, refused.position
            continue
        break
    if outcome.duplicates and not outcome.applied:
        # Nothing written, so no commit record and no wait for the disk; a duplicate's first
        # application (by a replica of the previous release, which committed without waiting
        # and flushed once a batch) may not be on disk yet when the source deletes its rows.
        await _flush(database)
    if refusal is not None:
        index, refused_error = refusal.index, refusal.error
        raise InvalidArgument(
            [
                FieldViolation(f"events[{index}].payload.{v.field}", v.description)
                for v in refused_error.violations
            ],
            reason=refused_error.reason,
            metadata=refused_error.metadata,
        )
    return outcome


_Checked = tuple[int, EventEnvelope, Consumes, Message]


class _Refused(Exception):
    """A handler refused the event at `position` of the batch (`index` of the request)."""

    def __init__(self, position: int, index: int, error: InvalidArgument) -> None:
        super().__init__(position, index)
        self.position, self.index, self.error = position, index, error


async def _apply_prefix(database: Database, schema: str, checked: Sequence[_Checked]) -> Outcome:
    if not checked:
        return Outcome(applied=0, duplicates=0)
    applied = duplicates = 0
    async with database.transaction() as session:
        fresh = await first_deliveries(session, schema, [event for _, event, _, _ in checked])
        for position, (index, event, kind, payload) in enumerate(checked):
            event_id = str(uuid.UUID(event.event_id))
            if event_id not in fresh:
                duplicates += 1
                continue
            # The same id twice in one batch: the second is a duplicate.
            fresh.discard(event_id)
            try:
                await kind.apply(session, event, payload)
            except InvalidArgument as refused:
                raise _Refused(position, index, refused) from None
            applied += 1
    return Outcome(applied=applied, duplicates=duplicates)


# A transaction with an id writes a commit record, and a durable commit waits until the WAL is
# flushed up to it — and so up to every earlier commit, those made without waiting included.
_DURABLE_MARK = "SELECT txid_current()"


async def _flush(database: Database) -> None:
    """Wait until every commit made so far is on disk."""
    async with database.driver() as connection, connection.transaction():
        await connection.execute(_DURABLE_MARK)


def delivery(stub: Callable[[], Any], request_type: type[Message]) -> Deliver:
    """The source relay's way to a receiver's DeliverEvents: the whole batch in one call.
    `stub` gives the receiver's stub when a batch goes out (clients are made lazily)."""

    async def deliver(envelopes: Sequence[EventEnvelope]) -> None:
        await stub().DeliverEvents(request_type(events=list(envelopes)), timeout=DELIVERY_TIMEOUT_S)

    return deliver
