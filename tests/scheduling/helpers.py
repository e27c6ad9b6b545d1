"""Factories and checks shared by the scheduling tests.

Every factory uses fresh random department and practitioner ids, so a test only ever sees its own
schedules, slots and appointments in the session's shared database.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import string
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.support import RpcFailure, fails, invalid_in

if TYPE_CHECKING:
    from his.patient.v1.patient_service_pb2_grpc import PatientServiceAsyncStub
    from his.scheduling.v1.scheduling_service_pb2_grpc import SchedulingServiceAsyncStub

    # The async stubs exist only in the type stubs; at run time the fixtures' stubs are used as is.
    Stub: TypeAlias = SchedulingServiceAsyncStub
    Patients: TypeAlias = PatientServiceAsyncStub
else:
    Stub = Any
    Patients = Any

# The `states_copied` fixture: waits until patient state changes reached scheduling's copy,
# which bookings read (his.scheduling.patient_states).
Copied: TypeAlias = Callable[[], Awaitable[None]]

DOMAIN = "scheduling.his"
TIME_ZONE = "Asia/Shanghai"
SHANGHAI = ZoneInfo(TIME_ZONE)
UTC = dt.UTC
SERVICE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/service-type"

WEEKDAYS = (
    pb.DAY_OF_WEEK_MONDAY,
    pb.DAY_OF_WEEK_TUESDAY,
    pb.DAY_OF_WEEK_WEDNESDAY,
    pb.DAY_OF_WEEK_THURSDAY,
    pb.DAY_OF_WEEK_FRIDAY,
)
ALL_DAYS = (*WEEKDAYS, pb.DAY_OF_WEEK_SATURDAY, pb.DAY_OF_WEEK_SUNDAY)

_counter = itertools.count(1)


# --- names and times ---------------------------------------------------------------------------


def department() -> str:
    """A department name no other test uses."""
    return f"departments/{uuid.uuid4()}"


def practitioner() -> str:
    """A practitioner name no other test uses."""
    return f"staff/{uuid.uuid4()}"


def request_id() -> str:
    """A fresh idempotency key."""
    return f"req-{next(_counter)}-{uuid.uuid4().hex}"


def missing(collection: str) -> str:
    """A well-formed name of a resource that does not exist."""
    return f"{collection}/{uuid.uuid4()}"


def today(zone: ZoneInfo = SHANGHAI) -> dt.date:
    """Today's date in `zone`."""
    return dt.datetime.now(zone).date()


def tomorrow(zone: ZoneInfo = SHANGHAI) -> dt.date:
    """Tomorrow's date in `zone`: every slot on it has not started yet."""
    return today(zone) + dt.timedelta(days=1)


def yesterday(zone: ZoneInfo = SHANGHAI) -> dt.date:
    """Yesterday's date in `zone`: every slot on it has ended."""
    return today(zone) - dt.timedelta(days=1)


def next_monday(zone: ZoneInfo = SHANGHAI) -> dt.date:
    """The first Monday after today in `zone`."""
    day = tomorrow(zone)
    return day + dt.timedelta(days=(7 - day.weekday()) % 7)


def date(day: dt.date) -> types_pb2.Date:
    """A his.common.v1.Date."""
    return types_pb2.Date(year=day.year, month=day.month, day=day.day)


def timestamp(instant: dt.datetime) -> Timestamp:
    """A Timestamp of an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def instant(stamp: Timestamp) -> dt.datetime:
    """An aware UTC datetime of a Timestamp."""
    return stamp.ToDatetime(tzinfo=UTC)


def local(day: dt.date, hours: int, minutes: int = 0, zone: ZoneInfo = SHANGHAI) -> dt.datetime:
    """A wall-clock time of `day` in `zone`, as UTC."""
    return dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=zone).astimezone(UTC)


def minutes(count: int) -> Duration:
    """A Duration of whole minutes."""
    return Duration(seconds=count * 60)


# --- factories ---------------------------------------------------------------------------------


def make_schedule(
    *,
    department_name: str | None = None,
    practitioner_name: str | None = None,
    horizon_start: dt.datetime | None = None,
    horizon_end: dt.datetime | None = None,
    code: str = "general",
) -> pb.Schedule:
    """A valid Schedule: fresh department and practitioner, horizon from yesterday, open-ended."""
    schedule = pb.Schedule(
        department=department_name if department_name is not None else department(),
        practitioner=practitioner_name if practitioner_name is not None else practitioner(),
        service_type=types_pb2.Coding(
            system=SERVICE_TYPE_SYSTEM, code=code, display="General consultation"
        ),
    )
    start = horizon_start or dt.datetime.now(UTC) - dt.timedelta(days=1)
    schedule.planning_horizon.start_time.CopyFrom(timestamp(start))
    if horizon_end is not None:
        schedule.planning_horizon.end_time.CopyFrom(timestamp(horizon_end))
    return schedule


async def create_schedule(
    stub: Stub, schedule: pb.Schedule | None = None, **kwargs: Any
) -> pb.Schedule:
    """Create a schedule (a fresh valid one unless given)."""
    request = pb.CreateScheduleRequest(schedule=schedule or make_schedule(**kwargs))
    return await stub.CreateSchedule(request)


def generate_request(
    parent: str,
    *,
    first: dt.date | None = None,
    last: dt.date | None = None,
    days: Sequence[pb.DayOfWeek.ValueType] = ALL_DAYS,
    opens: tuple[int, int] = (8, 0),
    closes: tuple[int, int] = (12, 0),
    length: int = 15,
    capacity: int = 1,
    time_zone: str = TIME_ZONE,
    request_id: str = "",
) -> pb.GenerateSlotsRequest:
    """A valid GenerateSlots request: by default tomorrow (Shanghai), 08:00-12:00, 15 minutes."""
    first = first or tomorrow()
    return pb.GenerateSlotsRequest(
        parent=parent,
        start_date=date(first),
        end_date=date(last or first),
        days_of_week=list(days),
        daily_start_time=pb.TimeOfDay(hours=opens[0], minutes=opens[1]),
        daily_end_time=pb.TimeOfDay(hours=closes[0], minutes=closes[1]),
        slot_duration=minutes(length),
        capacity=capacity,
        time_zone=time_zone,
        request_id=request_id,
    )


async def generate(stub: Stub, parent: str, **kwargs: Any) -> list[pb.Slot]:
    """Generate slots in a schedule and return them."""
    reply = await stub.GenerateSlots(generate_request(parent, **kwargs))
    return list(reply.slots)


@dataclass
class Fixture:
    """A schedule and the slots generated in it."""

    schedule: pb.Schedule
    slots: list[pb.Slot]

    @property
    def slot(self) -> pb.Slot:
        """The first slot."""
        return self.slots[0]


async def _slots_on(
    stub: Stub,
    made: pb.Schedule,
    day: dt.date,
    *,
    count: int,
    capacity: int,
    opens: tuple[int, int],
    length: int,
) -> Fixture:
    start = dt.datetime.combine(day, dt.time(*opens))
    end = start + dt.timedelta(minutes=length * count)
    assert end.date() == day, "the slots must fit in one day"
    slots = await generate(
        stub,
        made.name,
        first=day,
        opens=opens,
        closes=(end.hour, end.minute),
        length=length,
        capacity=capacity,
    )
    assert len(slots) == count
    return Fixture(made, slots)


async def future_slots(
    stub: Stub,
    *,
    count: int = 1,
    capacity: int = 1,
    day: dt.date | None = None,
    opens: tuple[int, int] = (8, 0),
    length: int = 15,
    schedule: pb.Schedule | None = None,
) -> Fixture:
    """A fresh schedule with `count` back-to-back slots on one day (tomorrow, Shanghai)."""
    made = await create_schedule(stub, schedule)
    return await _slots_on(
        stub,
        made,
        day or tomorrow(),
        count=count,
        capacity=capacity,
        opens=opens,
        length=length,
    )


async def past_slots(stub: Stub, *, count: int = 1, capacity: int = 1) -> Fixture:
    """A fresh schedule (horizon from three days ago) with slots yesterday (Shanghai): ended."""
    made = await create_schedule(stub, horizon_start=dt.datetime.now(UTC) - dt.timedelta(days=3))
    return await _slots_on(
        stub, made, yesterday(), count=count, capacity=capacity, opens=(8, 0), length=15
    )


def zone_near_midday(now: dt.datetime | None = None) -> tuple[str, ZoneInfo]:
    """A fixed-offset IANA zone (`Etc/GMT...`) in which it is now between 06:00 and 17:59."""
    now = now or dt.datetime.now(UTC)
    for hours in range(-12, 15):
        if 6 <= (now + dt.timedelta(hours=hours)).hour <= 17:
            # POSIX sign convention: Etc/GMT-8 is UTC+8.
            name = "Etc/GMT" if hours == 0 else f"Etc/GMT{-hours:+d}"
            return name, ZoneInfo(name)
    raise AssertionError("every hour of the day has a zone")


async def current_slot(stub: Stub, *, capacity: int = 1) -> Fixture:
    """A fresh schedule with one two-hour slot that started about an hour ago and has not ended."""
    made = await create_schedule(stub, horizon_start=dt.datetime.now(UTC) - dt.timedelta(days=2))
    name, zone = zone_near_midday()
    now = dt.datetime.now(zone)
    opens = now.replace(second=0, microsecond=0) - dt.timedelta(hours=1)
    closes = opens + dt.timedelta(hours=2)
    slots = await generate(
        stub,
        made.name,
        first=opens.date(),
        opens=(opens.hour, opens.minute),
        closes=(closes.hour, closes.minute),
        length=120,
        capacity=capacity,
        time_zone=name,
    )
    assert len(slots) == 1
    assert instant(slots[0].start_time) < dt.datetime.now(UTC) < instant(slots[0].end_time)
    return Fixture(made, slots)


def unique_word(prefix: str = "Sq") -> str:
    """A random name-like word of letters only."""
    return prefix + "".join(random.choices(string.ascii_lowercase, k=10))


def make_patient() -> patient_pb.Patient:
    """A valid Patient with a unique family name and no identifiers to collide on."""
    return patient_pb.Patient(
        family_name=unique_word(),
        given_names=["Wei"],
        gender=patient_pb.ADMINISTRATIVE_GENDER_MALE,
        birth_date=types_pb2.Date(year=1975, month=3, day=9),
    )


async def active_patient(patients: Patients) -> str:
    """Register a fresh active patient; its resource name."""
    created = await patients.CreatePatient(patient_pb.CreatePatientRequest(patient=make_patient()))
    assert created.state == patient_pb.PATIENT_STATE_ACTIVE
    return created.name


async def book(
    stub: Stub, patient: str, slot: str | pb.Slot, *, request_id: str = ""
) -> pb.Appointment:
    """Book a patient into a slot."""
    slot_name = slot if isinstance(slot, str) else slot.name
    return await stub.BookAppointment(
        pb.BookAppointmentRequest(patient=patient, slot=slot_name, request_id=request_id)
    )


async def get_slot(stub: Stub, name: str) -> pb.Slot:
    """Read a slot again."""
    return await stub.GetSlot(pb.GetSlotRequest(name=name))


async def get_appointment(stub: Stub, name: str) -> pb.Appointment:
    """Read an appointment again."""
    return await stub.GetAppointment(pb.GetAppointmentRequest(name=name))


async def booked(stub: Stub, patients: Patients, **kwargs: Any) -> tuple[pb.Appointment, pb.Slot]:
    """A fresh patient booked into a fresh future slot: the appointment and the slot as created."""
    made = await future_slots(stub, **kwargs)
    appointment = await book(stub, await active_patient(patients), made.slot)
    return appointment, made.slot


# --- failures ----------------------------------------------------------------------------------


async def refused(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> RpcFailure:
    """Await a call that must fail with `code` and ErrorInfo `reason` from this service."""
    failure = await fails(call)
    assert (failure.code, failure.reason) == (code, reason), failure
    assert failure.domain == DOMAIN
    return failure


async def precondition(call: Awaitable[Any], reason: str) -> RpcFailure:
    """Await a call that must be FAILED_PRECONDITION with ErrorInfo `reason`."""
    return await refused(call, grpc.StatusCode.FAILED_PRECONDITION, reason)


async def not_found(call: Awaitable[Any]) -> RpcFailure:
    """Await a call that must be NOT_FOUND."""
    return await refused(call, grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


async def invalid(call: Awaitable[Any]) -> list[str]:
    """Await a call that must be INVALID_ARGUMENT; the field paths its BadRequest names."""
    return await invalid_in(DOMAIN, call)
