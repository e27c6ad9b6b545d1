"""Booking invariants under real parallel calls over real channels, checked in the database too."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his.scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from tests.identity import registrar_channel
from tests.scheduling.helpers import (
    Patients,
    Stub,
    active_patient,
    book,
    create_schedule,
    future_slots,
    generate_request,
    get_slot,
    make_schedule,
    request_id,
)
from tests.support import failure_of

ATTEMPTS = 1000
# The attempts are spread over a few channels (HTTP/2 connections), all in flight together.
CHANNELS = 4
# The barrier is lifted before the server's statement timeout (5 s) could cancel a waiting UPDATE.
BARRIER_S = 3.0

# A booking's statement updates the slot row first (store.book), whatever else it does after.
_WAITING_ON_SLOTS = text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE %scheduling%.%slots%'"
)


@pytest.fixture(scope="module")
async def crowd(patients: Patients) -> list[str]:
    """ATTEMPTS distinct active patients, registered in chunks."""
    names: list[str] = []
    while len(names) < ATTEMPTS:
        names += await asyncio.gather(*(active_patient(patients) for _ in range(100)))
    assert len(set(names)) == ATTEMPTS
    return names


@pytest.fixture(scope="module")
async def stubs(scheduling_service: RunningService) -> AsyncIterator[list[Stub]]:
    """Stubs of the scheduling service over CHANNELS separate channels."""
    channels = [
        registrar_channel(
            scheduling_service.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CHANNELS)
    ]
    yield [pb_grpc.SchedulingServiceStub(channel) for channel in channels]
    for channel in channels:
        await channel.close()


def _pool(service: RunningService) -> int:
    """How many database connections the server may use at once."""
    return service.config.database.pool_size + service.config.database.max_overflow


async def _released_together(
    engine: AsyncEngine, slot: str, calls: Sequence[Awaitable[Any]], waiters: int
) -> list[Any]:
    """Run `calls` while the slot row is locked until `waiters` bookings queue on it, then let go.

    Without the barrier the bookings reach the row one after another; with it the first wave
    (one per server database connection) is released at the same instant, so the conditional
    UPDATE is re-checked by every waiter against the winner's commit.
    """
    slot_id = uuid.UUID(slot.removeprefix("slots/"))
    async with engine.connect() as connection, connection.begin():
        await connection.execute(
            text("SELECT 1 FROM scheduling.slots WHERE id = :id FOR UPDATE"), {"id": slot_id}
        )
        # A grpc.aio call is in flight as soon as it is created; gather schedules them all.
        gathered: asyncio.Future[list[Any]] = asyncio.gather(*calls, return_exceptions=True)
        give_up = time.monotonic() + BARRIER_S
        waiting = 0
        while waiting < waiters and time.monotonic() < give_up:
            assert not gathered.done(), gathered.result()
            await asyncio.sleep(0.01)
            # pg_stat_activity is snapshotted once per transaction unless told otherwise.
            await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
            waiting = (await connection.execute(_WAITING_ON_SLOTS)).scalar_one()
    assert waiting >= waiters, f"only {waiting} bookings queued on the slot"
    return await gathered


def _split(results: Sequence[Any]) -> tuple[list[pb.Appointment], list[grpc.aio.AioRpcError]]:
    unexpected = [
        r
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, grpc.aio.AioRpcError)
    ]
    assert not unexpected, unexpected
    successes = [r for r in results if isinstance(r, pb.Appointment)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(successes) + len(errors) == len(results)
    return successes, errors


async def _slot_row(engine: AsyncEngine, slot: str) -> tuple[int, int]:
    """(booked_count, non-cancelled appointments) of a slot, read from the database."""
    slot_id = uuid.UUID(slot.removeprefix("slots/"))
    async with engine.connect() as connection:
        booked_count = (
            await connection.execute(
                text("SELECT booked_count FROM scheduling.slots WHERE id = :id"), {"id": slot_id}
            )
        ).scalar_one()
        holding = (
            await connection.execute(
                text(
                    "SELECT count(*) FROM scheduling.appointments"
                    " WHERE slot_id = :id AND status <> 'cancelled'"
                ),
                {"id": slot_id},
            )
        ).scalar_one()
    return int(booked_count), int(holding)


async def _count(engine: AsyncEngine, table: str, schedule: str) -> int:
    """Rows of `scheduling.<table>` belonging to a schedule."""
    assert table in {"slots", "slot_generations"}
    schedule_id = uuid.UUID(schedule.removeprefix("schedules/"))
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(
                    text(f"SELECT count(*) FROM scheduling.{table} WHERE schedule_id = :id"),
                    {"id": schedule_id},
                )
            ).scalar_one()
        )


@pytest.mark.parametrize("capacity", [1, 3])
async def test_a_thousand_parallel_bookings_fill_a_slot_exactly_to_its_capacity(
    scheduling: Stub,
    scheduling_service: RunningService,
    stubs: list[Stub],
    crowd: list[str],
    scheduling_db: AsyncEngine,
    capacity: int,
) -> None:
    # One slot per capacity, at different times, so the crowd can be reused without overlaps.
    slot = (await future_slots(scheduling, capacity=capacity, opens=(8 + capacity, 0))).slot
    calls = [book(stubs[i % CHANNELS], patient, slot) for i, patient in enumerate(crowd)]

    results = await _released_together(scheduling_db, slot.name, calls, _pool(scheduling_service))

    successes, errors = _split(results)
    assert len(successes) == capacity
    assert len(errors) == ATTEMPTS - capacity
    codes = Counter(error.code() for error in errors)
    assert set(codes) <= {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}, codes
    refusals = {
        failure_of(e).reason for e in errors if e.code() == grpc.StatusCode.FAILED_PRECONDITION
    }
    assert refusals <= {"SLOT_FULL"}, refusals
    assert len({a.patient for a in successes}) == capacity
    assert {a.slot for a in successes} == {slot.name}
    assert {a.status for a in successes} == {pb.APPOINTMENT_STATUS_BOOKED}
    assert await _slot_row(scheduling_db, slot.name) == (capacity, capacity)
    after = await get_slot(scheduling, slot.name)
    assert (after.booked_count, after.status) == (capacity, pb.SLOT_STATUS_BUSY)


async def test_fifty_parallel_replays_of_one_booking_book_once_and_answer_alike(
    scheduling: Stub,
    scheduling_service: RunningService,
    stubs: list[Stub],
    patients: Patients,
    scheduling_db: AsyncEngine,
) -> None:
    # Room for several replays to take a place before they collide on the request id.
    slot = (await future_slots(scheduling, capacity=5)).slot
    patient = await active_patient(patients)
    key = request_id()
    calls = [book(stubs[i % CHANNELS], patient, slot, request_id=key) for i in range(50)]

    results = await _released_together(scheduling_db, slot.name, calls, _pool(scheduling_service))

    successes, errors = _split(results)
    assert [failure_of(e) for e in errors] == []
    assert len(successes) == 50
    first = successes[0]
    assert all(reply == first for reply in successes)
    assert (first.patient, first.slot, first.status) == (
        patient,
        slot.name,
        pb.APPOINTMENT_STATUS_BOOKED,
    )
    async with scheduling_db.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT id FROM scheduling.appointments WHERE create_request_id = :key"),
                {"key": key},
            )
        ).all()
    assert [f"appointments/{row.id}" for row in rows] == [first.name]
    assert await _slot_row(scheduling_db, slot.name) == (1, 1)
    assert (await get_slot(scheduling, slot.name)).status == pb.SLOT_STATUS_FREE


async def test_parallel_cancellations_give_the_place_back_once(
    scheduling: Stub, stubs: list[Stub], patients: Patients, scheduling_db: AsyncEngine
) -> None:
    slot = (await future_slots(scheduling, capacity=3)).slot
    held = [await book(scheduling, await active_patient(patients), slot) for _ in range(2)]

    results = await asyncio.gather(
        *(
            stubs[i % CHANNELS].CancelAppointment(
                pb.CancelAppointmentRequest(name=held[0].name, reason=f"reason {i}")
            )
            for i in range(30)
        ),
        return_exceptions=True,
    )

    successes, errors = _split(results)
    assert [failure_of(e) for e in errors] == []
    assert len({reply.SerializeToString() for reply in successes}) == 1
    assert successes[0].status == pb.APPOINTMENT_STATUS_CANCELLED
    assert await _slot_row(scheduling_db, slot.name) == (1, 1)


async def test_parallel_identical_generations_create_the_slots_once(
    scheduling: Stub, stubs: list[Stub], scheduling_db: AsyncEngine
) -> None:
    schedule = await create_schedule(scheduling)
    request = generate_request(schedule.name)

    results = await asyncio.gather(
        *(stubs[i % CHANNELS].GenerateSlots(request) for i in range(20)), return_exceptions=True
    )

    replies = [r for r in results if isinstance(r, pb.GenerateSlotsResponse)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(replies) == 1
    assert len(replies[0].slots) == 16
    assert [(e.code(), failure_of(e).reason) for e in errors] == [
        (grpc.StatusCode.FAILED_PRECONDITION, "SLOT_OVERLAP")
    ] * 19
    assert await _count(scheduling_db, "slots", schedule.name) == 16


async def test_parallel_replays_of_a_generation_answer_alike_and_create_once(
    scheduling: Stub, stubs: list[Stub], scheduling_db: AsyncEngine
) -> None:
    schedule = await create_schedule(scheduling)
    request = generate_request(schedule.name, request_id=request_id())

    replies = await asyncio.gather(*(stubs[i % CHANNELS].GenerateSlots(request) for i in range(20)))

    assert all(reply == replies[0] for reply in replies)
    assert len(replies[0].slots) == 16
    assert await _count(scheduling_db, "slots", schedule.name) == 16
    assert await _count(scheduling_db, "slot_generations", schedule.name) == 1


async def test_parallel_replays_of_a_schedule_create_it_once(
    scheduling: Stub, stubs: list[Stub], scheduling_db: AsyncEngine
) -> None:
    key = request_id()
    request = pb.CreateScheduleRequest(schedule=make_schedule(), request_id=key)

    replies = await asyncio.gather(
        *(stubs[i % CHANNELS].CreateSchedule(request) for i in range(20))
    )

    assert all(reply == replies[0] for reply in replies)
    async with scheduling_db.connect() as connection:
        count = (
            await connection.execute(
                text("SELECT count(*) FROM scheduling.schedules WHERE create_request_id = :key"),
                {"key": key},
            )
        ).scalar_one()
    assert count == 1
