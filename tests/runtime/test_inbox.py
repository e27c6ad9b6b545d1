"""The inbox applies each delivered event once, however often and however concurrently it comes,
and refuses events it does not take, naming them; only the source service may deliver."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from his.base import identity
from his.base.errors import InvalidArgument, PermissionDenied
from his.base.identity import Principal
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime import inbox
from his.runtime.config import DatabaseConfig
from his.runtime.database import Database
from his.runtime.outbox import envelope

SCHEMA = "inbox_test"


async def _count_up(session: AsyncSession, event: EventEnvelope, payload: Message) -> None:
    """The effect under test: one more application of the event's subject."""
    await session.execute(
        text(
            f"INSERT INTO {SCHEMA}.effects (subject, applied) VALUES (:subject, 1) "
            "ON CONFLICT (subject) DO UPDATE SET applied = effects.applied + 1"
        ),
        {"subject": event.subject},
    )


CONSUMES = inbox.consuming(
    inbox.Consumes("orders", orders_pb.ServiceRequestChanged, _count_up),
)


async def _refuse_bad(session: AsyncSession, event: EventEnvelope, payload: Message) -> None:
    """Applies the event, then refuses it when its subject says so (after it wrote: the refusal
    must take its writes back)."""
    await _count_up(session, event, payload)
    if event.subject.endswith("bad"):
        raise InvalidArgument.field("revision", "is refused by this test")


REFUSING = inbox.consuming(
    inbox.Consumes("orders", orders_pb.ServiceRequestChanged, _refuse_bad),
)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, DatabaseConfig(), application_name="his-inbox-test")
    async with db.transaction() as session:
        await session.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        await session.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        for statement in inbox.create_table_sql(SCHEMA):
            await session.execute(text(statement))
        await session.execute(
            text(f"CREATE TABLE {SCHEMA}.effects (subject text PRIMARY KEY, applied int NOT NULL)")
        )
    yield db
    async with db.transaction() as session:
        await session.execute(text(f"DROP SCHEMA {SCHEMA} CASCADE"))
    await db.dispose()


def _event(subject: str = "serviceRequests/1", **overrides: str) -> EventEnvelope:
    event = envelope(orders_pb.ServiceRequestChanged(revision=1), source="orders", subject=subject)
    for field, value in overrides.items():
        setattr(event, field, value)
    return event


async def _applied(database: Database, subject: str) -> int:
    async with database.read() as session:
        found = await session.execute(
            text(f"SELECT applied FROM {SCHEMA}.effects WHERE subject = :s"), {"s": subject}
        )
        row = found.first()
    return 0 if row is None else int(row[0])


def _as(service: str) -> identity.Entered:
    return identity.enter(
        Principal(subject=f"services/{service}", username=service, roles=frozenset({"SERVICE"}))
    )


async def test_an_event_delivered_again_changes_nothing(database: Database) -> None:
    event = _event()
    first = await inbox.apply_events(database, SCHEMA, [event], CONSUMES)
    again = await inbox.apply_events(database, SCHEMA, [event, event], CONSUMES)
    assert (first.applied, first.duplicates) == (1, 0)
    assert (again.applied, again.duplicates) == (0, 2)
    assert await _applied(database, event.subject) == 1


async def test_one_id_twice_in_a_batch_is_applied_once(database: Database) -> None:
    a, b = _event("serviceRequests/a"), _event("serviceRequests/b")
    upper = EventEnvelope()
    upper.CopyFrom(a)
    upper.event_id = a.event_id.upper()
    outcome = await inbox.apply_events(database, SCHEMA, [a, b, upper], CONSUMES)
    assert (outcome.applied, outcome.duplicates) == (2, 1)
    assert await _applied(database, a.subject) == 1


async def test_a_refused_event_keeps_those_before_it_and_nothing_after(
    database: Database,
) -> None:
    first, second = _event("serviceRequests/1st"), _event("serviceRequests/2nd")
    bad, after = _event("serviceRequests/bad"), _event("serviceRequests/after")
    with pytest.raises(InvalidArgument) as refused:
        await inbox.apply_events(database, SCHEMA, [first, second, bad, after], REFUSING)
    assert [v.field for v in refused.value.violations] == ["events[2].payload.revision"]
    applied = [await _applied(database, e.subject) for e in (first, second, bad, after)]
    assert applied == [1, 1, 0, 0]
    # The relay delivers the rest again (without the dead letter): the first two are duplicates.
    again = await inbox.apply_events(database, SCHEMA, [first, second, after], REFUSING)
    assert (again.applied, again.duplicates) == (1, 2)
    assert [await _applied(database, e.subject) for e in (first, second, after)] == [1, 1, 1]


async def test_a_refused_first_event_applies_nothing(database: Database) -> None:
    bad, after = _event("serviceRequests/bad"), _event("serviceRequests/next")
    with pytest.raises(InvalidArgument) as refused:
        await inbox.apply_events(database, SCHEMA, [bad, after], REFUSING)
    assert [v.field for v in refused.value.violations] == ["events[0].payload.revision"]
    assert [await _applied(database, e.subject) for e in (bad, after)] == [0, 0]


async def test_concurrent_deliveries_of_one_event_apply_it_once(database: Database) -> None:
    event = _event("serviceRequests/race")
    outcomes = await asyncio.gather(
        *(inbox.apply_events(database, SCHEMA, [event], CONSUMES) for _ in range(20)),
        return_exceptions=True,
    )
    # A loser waits on the winner's inbox row and then finds it: a duplicate, never an error.
    assert all(isinstance(o, inbox.Outcome) for o in outcomes), outcomes
    assert sum(o.applied for o in outcomes if isinstance(o, inbox.Outcome)) == 1
    assert await _applied(database, event.subject) == 1


async def test_bad_events_are_named_and_nothing_is_applied(database: Database) -> None:
    good = _event("serviceRequests/good")
    unknown = _event(event_type="his.orders.v1.Nothing")
    not_uuid = _event(event_id="42")
    wrong_source = _event(source="lab")
    wrong_payload = _event()
    wrong_payload.payload.Pack(orders_pb.MedicationRequestChanged())
    with pytest.raises(InvalidArgument) as refused:
        await inbox.apply_events(
            database, SCHEMA, [good, unknown, not_uuid, wrong_source, wrong_payload], CONSUMES
        )
    named = {v.field for v in refused.value.violations}
    assert named == {
        "events[1].event_type",
        "events[2].event_id",
        "events[3].source",
        "events[4].payload",
    }
    assert await _applied(database, good.subject) == 0
    with pytest.raises(InvalidArgument):
        await inbox.apply_events(database, SCHEMA, [], CONSUMES)


async def test_only_the_source_service_delivers(database: Database) -> None:
    event = _event("serviceRequests/by-whom")
    entered = _as("pharmacy")
    try:
        with pytest.raises(PermissionDenied):
            await inbox.apply_events(database, SCHEMA, [event], CONSUMES)
    finally:
        identity.leave(entered)
    entered = _as("orders")
    try:
        outcome = await inbox.apply_events(database, SCHEMA, [event], CONSUMES)
    finally:
        identity.leave(entered)
    assert outcome.applied == 1
    async with database.read() as session:
        recorded = await session.execute(
            text(f"SELECT source FROM {SCHEMA}.inbox WHERE event_id = :id"),
            {"id": uuid.UUID(event.event_id)},
        )
        assert recorded.scalar_one() == "orders"


async def test_a_nul_inside_a_payload_is_named_not_stored(database: Database) -> None:
    # The request guard stops NUL characters PostgreSQL cannot store, but not inside an Any.
    good = _event("serviceRequests/clean")
    dirty = envelope(
        orders_pb.ServiceRequestChanged(
            service_request=orders_pb.ServiceRequest(name="serviceRequests/\0"), revision=1
        ),
        source="orders",
        subject="serviceRequests/dirty",
    )
    with pytest.raises(InvalidArgument) as refused:
        await inbox.apply_events(database, SCHEMA, [good, dirty], CONSUMES)
    assert [v.field for v in refused.value.violations] == ["events[1].payload.service_request.name"]
    assert await _applied(database, good.subject) == 0
