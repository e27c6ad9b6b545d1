"""Booking runs on the asyncpg driver (no SQLAlchemy around its statements): a database that
drops its connections under bookings is at worst UNAVAILABLE to the caller, never INTERNAL, the
pool recovers by itself, and no place is taken twice or lost."""

from __future__ import annotations

import asyncio

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import Patients, Stub, active_patient, book, future_slots, get_slot
from tests.support import handled

ROUNDS = 3
# Bookings at once: enough to check out several pooled connections, so a drop kills several.
AT_ONCE = 8


async def _outcome(call: asyncio.Future[pb.Appointment]) -> str:
    try:
        await call
        return "OK"
    except grpc.aio.AioRpcError as error:
        return error.code().name


async def test_bookings_on_dropped_database_connections_are_unavailable_never_internal(
    scheduling: Stub,
    scheduling_service: RunningService,
    scheduling_db: AsyncEngine,
    patients: Patients,
) -> None:
    internal_before = handled(scheduling_service, "INTERNAL")
    outcomes: list[str] = []
    for _ in range(ROUNDS):
        made = await future_slots(scheduling, count=2 * AT_ONCE, capacity=1)
        who = [await active_patient(patients) for _ in range(AT_ONCE)]
        # Live pooled connections first, then what a restart or failover does to all of them.
        await asyncio.gather(
            *(book(scheduling, p, s) for p, s in zip(who, made.slots[:AT_ONCE], strict=True))
        )
        # The relay's events delivered first: its next look is a poll away (0.5 s), so the
        # bookings below, not the relay, are the first to meet the dropped connections.
        assert scheduling_service.relay is not None
        await scheduling_service.relay.drain(10)
        async with scheduling_db.connect() as connection:
            dropped = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'his-scheduling'"
                )
            )
        assert dropped, "scheduling had no connection to drop: the test saw nothing"
        pairs = list(zip(who, made.slots[AT_ONCE:], strict=True))
        calls = [asyncio.ensure_future(book(scheduling, p, s)) for p, s in pairs]
        round_outcomes = await asyncio.gather(*(_outcome(call) for call in calls))
        outcomes += round_outcomes
        for (patient, slot), outcome in zip(pairs, round_outcomes, strict=True):
            # A refused booking took no place; a booking that went through took exactly one.
            assert (await get_slot(scheduling, slot.name)).booked_count == (outcome == "OK")
            if outcome != "OK":
                # The pool recovers by itself: the same booking goes through when tried again.
                await book(scheduling, patient, slot)
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    assert handled(scheduling_service, "INTERNAL") == internal_before
    # The driver's pool notices a connection the server dropped while it was idle and replaces
    # it before use, so most bookings simply go through; any that met a dropped connection
    # mid-statement were UNAVAILABLE (checked above). Each round asserted its drops happened.
