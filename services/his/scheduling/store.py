"""Queries of the scheduling schema. Each function runs inside the caller's transaction (a
SQLAlchemy session), except booking's, which run on the asyncpg driver (see "booking on the
driver" below).

Booking never reads-then-writes: a place is taken by one conditional UPDATE of the slot row
(`booked_count < capacity`), which PostgreSQL serialises on the row lock, and the CHECK
`booked_count <= capacity` backs it up. A patient's overlapping bookings are refused by a trigger.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Row, Table, and_, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, FailedPrecondition, NotFound
from his.runtime.database import Database
from his.runtime.idempotency import skip_taken
from his.scheduling.tables import appointments, schedules, slot_generations, slots


def not_found(name: str) -> NotFound:
    return NotFound(f"{name} not found", metadata={"name": name})


# --- schedules -------------------------------------------------------------------------------


async def insert_schedule(
    session: AsyncSession, values: dict[str, Any], request_id: str | None
) -> Row[Any] | None:
    """A new schedule; None when `request_id` was used before (read it with schedule_by_request)."""
    statement = insert(schedules).values(id=uuid.uuid4(), create_request_id=request_id, **values)
    statement = skip_taken(statement, request_id, schedules.c.create_request_id)
    return (await session.execute(statement.returning(*schedules.c))).first()


async def schedule_by_request(session: AsyncSession, request_id: str) -> Row[Any]:
    """The schedule created by the CreateSchedule call with this request id."""
    query = select(*schedules.c).where(schedules.c.create_request_id == request_id)
    return (await session.execute(query)).one()


async def get_schedule(
    session: AsyncSession, schedule_id: uuid.UUID, *, lock: bool = False
) -> Row[Any]:
    """One schedule, or NOT_FOUND."""
    query = select(*schedules.c).where(schedules.c.id == schedule_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        raise not_found(f"schedules/{schedule_id}")
    return row


async def list_schedules(
    session: AsyncSession,
    *,
    department_id: uuid.UUID | None,
    practitioner_id: uuid.UUID | None,
    after: tuple[uuid.UUID, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Schedules in (department, id) order after the keyset cursor."""
    conditions: list[Any] = []
    if department_id is not None:
        conditions.append(schedules.c.department_id == department_id)
    if practitioner_id is not None:
        conditions.append(schedules.c.practitioner_id == practitioner_id)
    if after is not None:
        conditions.append(
            tuple_(schedules.c.department_id, schedules.c.id)
            > tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*schedules.c)
        .where(and_(True, *conditions))
        .order_by(schedules.c.department_id, schedules.c.id)
    )
    return list((await session.execute(query.limit(limit))).all())


# --- slots -----------------------------------------------------------------------------------


async def generation(
    session: AsyncSession, schedule_id: uuid.UUID, request_id: str
) -> Row[Any] | None:
    """The earlier GenerateSlots call on this schedule with this request id, if there was one."""
    query = select(*slot_generations.c).where(
        slot_generations.c.schedule_id == schedule_id,
        slot_generations.c.request_id == request_id,
    )
    return (await session.execute(query)).first()


async def generation_slots(session: AsyncSession, generation: Row[Any]) -> list[Row[Any]]:
    """The slots one generation made, in time order."""
    query = (
        select(*slots.c)
        .where(slots.c.generation_id == generation.id)
        .order_by(slots.c.start_time, slots.c.id)
    )
    return list((await session.execute(query)).all())


async def create_slots(
    session: AsyncSession,
    schedule: Row[Any],
    planned: Sequence[tuple[dt.datetime, dt.datetime]],
    capacity: int,
    request: tuple[str, str] | None,
) -> list[Row[Any]]:
    """Insert the planned slots of a schedule (locked by the caller), all or none.

    `request` is (request id, request fingerprint) when the call carried a request id.
    """
    if not planned:
        return []
    first, last = planned[0][0], planned[-1][1]
    if first < schedule.horizon_start or (
        schedule.horizon_end is not None and last > schedule.horizon_end
    ):
        raise FailedPrecondition(
            "the slots would fall outside the schedule's planning horizon",
            reason="OUTSIDE_PLANNING_HORIZON",
        )
    # The schedule row is locked, so no other generation can add slots while this check runs.
    existing = (
        await session.execute(
            select(slots.c.start_time, slots.c.end_time)
            .where(
                slots.c.schedule_id == schedule.id,
                slots.c.start_time < last,
                slots.c.end_time > first,
            )
            .order_by(slots.c.start_time)
        )
    ).all()
    if _overlaps(planned, [(r.start_time, r.end_time) for r in existing]):
        raise FailedPrecondition(
            "a new slot would overlap an existing slot of the schedule", reason="SLOT_OVERLAP"
        )
    generation_id = None
    if request is not None:
        generation_id = uuid.uuid4()
        await session.execute(
            insert(slot_generations).values(
                id=generation_id,
                schedule_id=schedule.id,
                request_id=request[0],
                request_fingerprint=request[1],
            )
        )
    rows = [
        {
            "id": uuid.uuid4(),
            "schedule_id": schedule.id,
            "generation_id": generation_id,
            "department_id": schedule.department_id,
            "practitioner_id": schedule.practitioner_id,
            "service_type_system": schedule.service_type_system,
            "service_type_code": schedule.service_type_code,
            "service_type_display": schedule.service_type_display,
            "start_time": start,
            "end_time": end,
            "capacity": capacity,
        }
        for start, end in planned
    ]
    result = await session.execute(insert(slots).values(rows).returning(*slots.c))
    return sorted(result.all(), key=lambda row: (row.start_time, row.id))


def _overlaps(
    new: Sequence[tuple[dt.datetime, dt.datetime]], old: Sequence[tuple[dt.datetime, dt.datetime]]
) -> bool:
    """Whether any new interval meets an old one (both sorted by start; half-open intervals)."""
    j = 0
    for start, end in new:
        while j < len(old) and old[j][1] <= start:
            j += 1
        if j < len(old) and old[j][0] < end:
            return True
    return False


async def get_slot(session: AsyncSession, slot_id: uuid.UUID, *, lock: bool = False) -> Row[Any]:
    """One slot, or NOT_FOUND."""
    query = select(*slots.c).where(slots.c.id == slot_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        raise not_found(f"slots/{slot_id}")
    return row


@dataclass(frozen=True)
class SlotFilter:
    """The filters of ListSlots, validated."""

    schedule_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    practitioner_id: uuid.UUID | None = None
    window: tuple[dt.datetime, dt.datetime] | None = None
    only_free: bool = False

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            (
                "slots",
                self.schedule_id,
                self.department_id,
                self.practitioner_id,
                self.window,
                self.only_free,
            )
        )


async def list_slots(
    session: AsyncSession,
    where: SlotFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Slots in (start time, id) order after the keyset cursor."""
    conditions: list[Any] = []
    if where.schedule_id is not None:
        conditions.append(slots.c.schedule_id == where.schedule_id)
    if where.department_id is not None:
        conditions.append(slots.c.department_id == where.department_id)
    if where.practitioner_id is not None:
        conditions.append(slots.c.practitioner_id == where.practitioner_id)
    if where.window is not None:
        conditions += [slots.c.start_time >= where.window[0], slots.c.start_time < where.window[1]]
    if where.only_free:
        conditions += [
            slots.c.block_reason.is_(None),
            slots.c.booked_count < slots.c.capacity,
            slots.c.end_time > func.now(),
        ]
    if after is not None:
        conditions.append(
            tuple_(slots.c.start_time, slots.c.id) > tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*slots.c)
        .where(and_(True, *conditions))
        .order_by(slots.c.start_time, slots.c.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


async def set_block(session: AsyncSession, slot_id: uuid.UUID, reason: str | None) -> Row[Any]:
    """Block (reason) or unblock (None) a slot that has not ended; no change is a no-op."""
    current = await get_slot(session, slot_id, lock=True)
    now = (await session.execute(select(func.now()))).scalar_one()
    if current.end_time <= now:
        raise FailedPrecondition("the slot has already ended", reason="SLOT_ENDED")
    if (current.block_reason is None) == (reason is None):
        return current  # already blocked (first reason kept) or already open
    statement = (
        update(slots)
        .where(slots.c.id == slot_id)
        .values(block_reason=reason, update_time=func.now())
        .returning(*slots.c)
    )
    return (await session.execute(statement)).one()


# --- appointments ----------------------------------------------------------------------------


def unbookable(slot: Any, now: dt.datetime) -> FailedPrecondition | None:
    """Why a slot cannot take another booking now, or None if it can."""
    if slot.block_reason is not None:
        return FailedPrecondition("the slot is blocked", reason="SLOT_BLOCKED")
    if slot.booked_count >= slot.capacity:
        return FailedPrecondition("the slot is fully booked", reason="SLOT_FULL")
    if slot.end_time <= now:
        return FailedPrecondition("the slot has already ended", reason="SLOT_ENDED")
    return None


async def get_appointment(
    session: AsyncSession, appointment_id: uuid.UUID, *, lock: bool = False
) -> Row[Any]:
    """One appointment, or NOT_FOUND."""
    query = select(*appointments.c).where(appointments.c.id == appointment_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        raise not_found(f"appointments/{appointment_id}")
    return row


# --- booking on the driver ------------------------------------------------------------------
# BookAppointment is the morning rush's path: its statements run on the asyncpg driver, prepared
# once per connection, instead of through SQLAlchemy (profiled: ~1 ms of CPU per statement there,
# more than a third of the process under load). Names come from tables.py; values are bound.


def _columns(table: Table) -> str:
    return ", ".join(f'"{column.name}"' for column in table.c)


def _name(table: Table) -> str:
    return f'"{table.schema}"."{table.name}"'


_SLOT = f"SELECT {_columns(slots)} FROM {_name(slots)} WHERE id = $1"  # noqa: S608
_REPLAY = (
    f"SELECT {_columns(appointments)} FROM {_name(appointments)} "  # noqa: S608
    "WHERE create_request_id = $1"
)
# Take a place (the conditional UPDATE, serialised on the slot's row lock) and insert the
# appointment copied from the slot, in one statement: no place taken, no row returned.
_COPIED = (
    "department_id, practitioner_id, service_type_system, service_type_code, "
    "service_type_display, start_time, end_time"
)
_BOOK = f"""
WITH taken AS (
    UPDATE {_name(slots)} SET booked_count = booked_count + 1, update_time = now()
    WHERE id = $1 AND block_reason IS NULL AND booked_count < capacity AND end_time > now()
    RETURNING id, {_COPIED}
)
INSERT INTO {_name(appointments)} (id, patient_id, slot_id, {_COPIED},
    create_request_id, create_request_fingerprint)
SELECT $2, $3, id, {_COPIED}, $4, $5 FROM taken
RETURNING {_columns(appointments)}
"""  # noqa: S608


class Record:
    """A driver record read by attribute, as the mapping reads SQLAlchemy rows."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return self._record[name]


async def find_slot(database: Database, slot_id: uuid.UUID) -> Record | None:
    """One slot as it is now, or None, outside any transaction."""
    async with database.driver() as connection:
        record = await connection.fetchrow(_SLOT, slot_id)
    return None if record is None else Record(record)


async def find_booking(database: Database, request_id: str) -> Record | None:
    """The appointment booked by the BookAppointment call with this request id, if any."""
    async with database.driver() as connection:
        record = await connection.fetchrow(_REPLAY, request_id)
    return None if record is None else Record(record)


async def book(
    connection: asyncpg.Connection,
    patient_id: uuid.UUID,
    slot_id: uuid.UUID,
    request: tuple[str, str] | None,
) -> Record:
    """Take a place of a bookable slot and book it for the patient, in the caller's driver
    transaction, or say why not (FAILED_PRECONDITION, NOT_FOUND).

    `request` is (request id, request fingerprint) when the call carried a request id. The
    driver's errors (a unique or exclusion violation) are the caller's to map.
    """
    request_id, fingerprint = request or (None, None)
    booked = await connection.fetchrow(
        _BOOK, slot_id, uuid.uuid4(), patient_id, request_id, fingerprint
    )
    if booked is not None:
        return Record(booked)
    slot = await connection.fetchrow(_SLOT, slot_id)
    if slot is None:
        raise not_found(f"slots/{slot_id}")
    raise unbookable(Record(slot), dt.datetime.now(dt.UTC)) or FailedPrecondition(
        "the slot has already ended", reason="SLOT_ENDED"
    )


# FHIR Appointment: booked → arrived → fulfilled; booked → noshow; booked | arrived → cancelled.
TRANSITIONS: dict[str, frozenset[str]] = {
    "arrived": frozenset({"booked"}),
    "fulfilled": frozenset({"arrived"}),
    "noshow": frozenset({"booked"}),
    "cancelled": frozenset({"booked", "arrived"}),
}


async def transition(
    session: AsyncSession,
    appointment_id: uuid.UUID,
    to: str,
    *,
    etag: str,
    reason: str | None = None,
) -> Row[Any]:
    """Move an appointment to `to`. Already there: a no-op whatever the etag (safe retries)."""
    current = await get_appointment(session, appointment_id, lock=True)
    if current.status == to:
        return current
    if etag and etag != str(current.version):
        raise Aborted(
            "the appointment was changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(current.version)},
        )
    if current.status not in TRANSITIONS[to]:
        raise FailedPrecondition(
            f"an appointment that is {current.status} cannot become {to}",
            reason="ILLEGAL_TRANSITION",
            metadata={"status": current.status, "requested": to},
        )
    values: dict[str, Any] = {"status": to, "version": appointments.c.version + 1}
    now = func.now()
    if to == "noshow":
        started = (
            await session.execute(
                select(slots.c.start_time <= now).where(slots.c.id == current.slot_id)
            )
        ).scalar_one()
        if not started:
            raise FailedPrecondition(
                "a no-show can only be recorded once the slot has started",
                reason="SLOT_NOT_STARTED",
            )
    if to == "arrived":
        values["arrive_time"] = now
    if to == "cancelled":
        values.update(cancel_time=now, cancel_reason=reason)
        # Give the place back in the same transaction as the status change.
        await session.execute(
            update(slots)
            .where(slots.c.id == current.slot_id)
            .values(booked_count=slots.c.booked_count - 1, update_time=now)
        )
    statement = (
        update(appointments)
        .where(appointments.c.id == appointment_id)
        .values(**values, update_time=now)
        .returning(*appointments.c)
    )
    return (await session.execute(statement)).one()


@dataclass(frozen=True)
class AppointmentFilter:
    """The filters of ListAppointments, validated."""

    patient_id: uuid.UUID | None = None
    practitioner_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    window: tuple[dt.datetime, dt.datetime] | None = None
    statuses: tuple[str, ...] = ()
    # Checked in during [start, end) (arrive_period).
    arrived: tuple[dt.datetime | None, dt.datetime | None] | None = None

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            (
                "appointments",
                self.patient_id,
                self.practitioner_id,
                self.department_id,
                self.window,
                self.statuses,
                self.arrived,
            )
        )


async def list_appointments(
    session: AsyncSession,
    where: AppointmentFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Appointments in (start time, id) order after the keyset cursor."""
    conditions: list[Any] = []
    if where.patient_id is not None:
        conditions.append(appointments.c.patient_id == where.patient_id)
    if where.practitioner_id is not None:
        conditions.append(appointments.c.practitioner_id == where.practitioner_id)
    if where.department_id is not None:
        conditions.append(appointments.c.department_id == where.department_id)
    if where.window is not None:
        conditions += [
            appointments.c.start_time >= where.window[0],
            appointments.c.start_time < where.window[1],
        ]
    if where.statuses:
        conditions.append(appointments.c.status.in_(where.statuses))
    if where.arrived is not None:
        start, end = where.arrived
        conditions.append(appointments.c.arrive_time.is_not(None))
        if start is not None:
            conditions.append(appointments.c.arrive_time >= start)
        if end is not None:
            conditions.append(appointments.c.arrive_time < end)
    if after is not None:
        conditions.append(
            tuple_(appointments.c.start_time, appointments.c.id)
            > tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*appointments.c)
        .where(and_(True, *conditions))
        .order_by(appointments.c.start_time, appointments.c.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())
