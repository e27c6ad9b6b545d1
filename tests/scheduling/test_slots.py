"""GenerateSlots, GetSlot, BlockSlot and UnblockSlot."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.duration_pb2 import Duration

from his.common.v1 import types_pb2
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import (
    ALL_DAYS,
    SHANGHAI,
    UTC,
    WEEKDAYS,
    Patients,
    Stub,
    active_patient,
    book,
    create_schedule,
    future_slots,
    generate,
    generate_request,
    get_appointment,
    get_slot,
    instant,
    invalid,
    local,
    missing,
    next_monday,
    not_found,
    past_slots,
    precondition,
    request_id,
    tomorrow,
)


async def _all_slots(stub: Stub, schedule: str) -> list[pb.Slot]:
    slots: list[pb.Slot] = []
    token = ""
    while True:
        reply = await stub.ListSlots(
            pb.ListSlotsRequest(schedule=schedule, page_size=500, page_token=token)
        )
        slots += reply.slots
        token = reply.next_page_token
        if not token:
            return slots


def _spans(slots: list[pb.Slot]) -> list[tuple[dt.datetime, dt.datetime]]:
    return [(instant(s.start_time), instant(s.end_time)) for s in slots]


# --- GenerateSlots: what is made ---------------------------------------------------------------


async def test_a_working_week_gets_sixteen_quarter_hours_each_weekday(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    monday = next_monday()

    slots = await generate(
        scheduling,
        schedule.name,
        first=monday,
        last=monday + dt.timedelta(days=6),
        days=WEEKDAYS,
        opens=(8, 0),
        closes=(12, 0),
        length=15,
        capacity=2,
    )

    per_day = Counter(instant(s.start_time).astimezone(SHANGHAI).date() for s in slots)
    assert per_day == {monday + dt.timedelta(days=d): 16 for d in range(5)}
    # 08:00 in Shanghai (UTC+8, no daylight saving) is 00:00 UTC of the same date.
    expected = [
        (
            dt.datetime.combine(monday + dt.timedelta(days=d), dt.time(), tzinfo=UTC)
            + dt.timedelta(minutes=15 * i),
            dt.datetime.combine(monday + dt.timedelta(days=d), dt.time(), tzinfo=UTC)
            + dt.timedelta(minutes=15 * (i + 1)),
        )
        for d in range(5)
        for i in range(16)
    ]
    assert _spans(slots) == expected
    for slot in slots:
        assert slot.schedule == schedule.name
        assert slot.department == schedule.department
        assert slot.practitioner == schedule.practitioner
        assert slot.service_type == schedule.service_type
        assert (slot.capacity, slot.booked_count) == (2, 0)
        assert slot.status == pb.SLOT_STATUS_FREE
        assert slot.block_reason == ""
        assert slot.name.startswith("slots/")
    assert len({s.name for s in slots}) == 80
    assert await _all_slots(scheduling, schedule.name) == slots


async def test_generated_slots_are_readable_one_by_one(scheduling: Stub) -> None:
    made = await future_slots(scheduling, count=3)

    for slot in made.slots:
        assert await get_slot(scheduling, slot.name) == slot


async def test_a_department_schedule_makes_slots_without_practitioner(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling, practitioner_name="")

    slots = await generate(scheduling, schedule.name, closes=(8, 30))

    assert [s.practitioner for s in slots] == ["", ""]


def _second_sunday_of_march_ahead() -> dt.date:
    year = dt.date.today().year
    while True:
        first = dt.date(year, 3, 1)
        sunday = first + dt.timedelta(days=(6 - first.weekday()) % 7 + 7)
        if sunday > dt.date.today() + dt.timedelta(days=1):
            return sunday
        year += 1


async def test_slots_whose_local_start_does_not_exist_on_spring_forward_are_skipped(
    scheduling: Stub,
) -> None:
    # In New York clocks jump from 02:00 to 03:00 on the second Sunday of March.
    day = _second_sunday_of_march_ahead()
    schedule = await create_schedule(scheduling)

    slots = await generate(
        scheduling,
        schedule.name,
        first=day,
        opens=(1, 30),
        closes=(3, 30),
        length=30,
        time_zone="America/New_York",
    )

    def utc(hours: int, minutes: int) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=UTC)

    # 01:30 EST (UTC-5) and 03:00 EDT (UTC-4); 02:00 and 02:30 do not exist that night.
    assert _spans(slots) == [(utc(6, 30), utc(7, 0)), (utc(7, 0), utc(7, 30))]
    zone = ZoneInfo("America/New_York")
    assert [instant(s.start_time).astimezone(zone).time() for s in slots] == [
        dt.time(1, 30),
        dt.time(3, 0),
    ]


async def test_slots_of_one_generation_never_overlap_across_spring_forward(
    scheduling: Stub,
) -> None:
    # 45-minute slots from 01:30: 01:30 EST lasts until 03:15 EDT, so 03:00 EDT cannot follow it.
    day = _second_sunday_of_march_ahead()
    schedule = await create_schedule(scheduling)

    slots = await generate(
        scheduling,
        schedule.name,
        first=day,
        opens=(1, 30),
        closes=(4, 0),
        length=45,
        time_zone="America/New_York",
    )

    spans = _spans(slots)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    start = dt.datetime.combine(day, dt.time(6, 30), tzinfo=UTC)
    assert spans == [(start, start + dt.timedelta(minutes=45))]


async def test_five_minute_and_eight_hour_slots_are_the_allowed_extremes(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    day = tomorrow()

    short = await generate(
        scheduling, schedule.name, first=day, opens=(7, 0), closes=(7, 10), length=5
    )
    long = await generate(
        scheduling, schedule.name, first=day, opens=(8, 0), closes=(16, 0), length=480
    )

    assert _spans(short) == [
        (local(day, 7, 0), local(day, 7, 5)),
        (local(day, 7, 5), local(day, 7, 10)),
    ]
    assert _spans(long) == [(local(day, 8), local(day, 16))]


async def test_a_slot_that_would_end_after_the_daily_end_time_is_not_made(
    scheduling: Stub,
) -> None:
    schedule = await create_schedule(scheduling)
    day = tomorrow()

    slots = await generate(scheduling, schedule.name, first=day, closes=(8, 50), length=20)

    assert _spans(slots) == [
        (local(day, 8, 0), local(day, 8, 20)),
        (local(day, 8, 20), local(day, 8, 40)),
    ]


async def test_no_chosen_weekday_in_the_range_makes_no_slots(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    monday = next_monday()

    slots = await generate(
        scheduling,
        schedule.name,
        first=monday,
        last=monday + dt.timedelta(days=4),
        days=[pb.DAY_OF_WEEK_SUNDAY],
    )

    assert slots == []
    assert await _all_slots(scheduling, schedule.name) == []


async def test_a_range_of_92_days_is_accepted(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    monday = next_monday()

    slots = await generate(
        scheduling,
        schedule.name,
        first=monday,
        last=monday + dt.timedelta(days=92),
        days=[pb.DAY_OF_WEEK_MONDAY],
        closes=(8, 15),
    )

    assert len(slots) == 14
    assert instant(slots[-1].start_time) == local(monday + dt.timedelta(days=91), 8)


async def test_exactly_2000_slots_may_be_made_at_once(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    day = tomorrow()

    slots = await generate(
        scheduling,
        schedule.name,
        first=day,
        last=day + dt.timedelta(days=7),
        opens=(0, 0),
        closes=(20, 50),
        length=5,
    )

    assert len(slots) == 2000
    assert await _all_slots(scheduling, schedule.name) == slots


# --- GenerateSlots: replays, overlap, horizon --------------------------------------------------


async def test_a_replayed_generation_returns_the_same_slots_and_makes_none(
    scheduling: Stub,
) -> None:
    schedule = await create_schedule(scheduling)
    request = generate_request(schedule.name, request_id=request_id())
    first = await scheduling.GenerateSlots(request)

    again = await scheduling.GenerateSlots(request)

    assert len(first.slots) == 16
    assert [s.name for s in again.slots] == [s.name for s in first.slots]
    assert again == first
    assert await _all_slots(scheduling, schedule.name) == list(first.slots)


async def test_a_replay_returns_the_first_slots_even_after_one_was_booked(
    scheduling: Stub, patients: Patients
) -> None:
    schedule = await create_schedule(scheduling)
    request = generate_request(schedule.name, closes=(8, 30), request_id=request_id())
    first = await scheduling.GenerateSlots(request)
    await book(scheduling, await active_patient(patients), first.slots[0])

    again = await scheduling.GenerateSlots(request)

    assert [s.name for s in again.slots] == [s.name for s in first.slots]
    assert again.slots[0].booked_count == 1


async def test_a_generation_overlapping_existing_slots_makes_nothing(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    day = tomorrow()
    existing = await generate(scheduling, schedule.name, first=day)

    failure = await precondition(
        scheduling.GenerateSlots(
            generate_request(
                schedule.name,
                first=day,
                last=day + dt.timedelta(days=2),
                opens=(11, 45),
                closes=(13, 0),
            )
        ),
        "SLOT_OVERLAP",
    )

    assert "overlap" in failure.message
    assert await _all_slots(scheduling, schedule.name) == existing


async def test_a_generation_overlapping_only_on_its_last_day_makes_nothing(
    scheduling: Stub,
) -> None:
    schedule = await create_schedule(scheduling)
    day = tomorrow() + dt.timedelta(days=3)
    existing = await generate(scheduling, schedule.name, first=day, opens=(9, 10), closes=(9, 25))

    await precondition(
        scheduling.GenerateSlots(
            generate_request(schedule.name, first=day - dt.timedelta(days=2), last=day, length=30)
        ),
        "SLOT_OVERLAP",
    )

    assert await _all_slots(scheduling, schedule.name) == existing


async def test_slots_may_start_where_existing_ones_end(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    morning = await generate(scheduling, schedule.name, closes=(12, 0))

    afternoon = await generate(scheduling, schedule.name, opens=(12, 0), closes=(13, 0))

    assert instant(afternoon[0].start_time) == instant(morning[-1].end_time)
    assert len(await _all_slots(scheduling, schedule.name)) == 20


async def test_other_schedules_slots_do_not_count_as_overlap(scheduling: Stub) -> None:
    first = await create_schedule(scheduling)
    second = await create_schedule(scheduling, practitioner_name=first.practitioner)
    await generate(scheduling, first.name)

    slots = await generate(scheduling, second.name)

    assert len(slots) == 16


async def test_a_request_id_used_by_another_schedule_still_generates(scheduling: Stub) -> None:
    key = request_id()
    first = await create_schedule(scheduling)
    second = await create_schedule(scheduling)
    made_first = await generate(scheduling, first.name, request_id=key)

    made_second = await generate(scheduling, second.name, request_id=key)

    assert {s.schedule for s in made_second} == {second.name}
    assert not {s.name for s in made_first} & {s.name for s in made_second}


async def test_slots_after_the_planning_horizon_are_refused(scheduling: Stub) -> None:
    day = tomorrow()
    schedule = await create_schedule(scheduling, horizon_end=local(day, 10))

    await precondition(
        scheduling.GenerateSlots(generate_request(schedule.name, first=day)),
        "OUTSIDE_PLANNING_HORIZON",
    )

    assert await _all_slots(scheduling, schedule.name) == []
    inside = await generate(scheduling, schedule.name, first=day, closes=(10, 0))
    assert len(inside) == 8


async def test_slots_before_the_planning_horizon_are_refused(scheduling: Stub) -> None:
    day = tomorrow()
    schedule = await create_schedule(scheduling, horizon_start=local(day, 9))

    await precondition(
        scheduling.GenerateSlots(generate_request(schedule.name, first=day)),
        "OUTSIDE_PLANNING_HORIZON",
    )

    assert await _all_slots(scheduling, schedule.name) == []
    inside = await generate(scheduling, schedule.name, first=day, opens=(9, 0))
    assert len(inside) == 12


async def test_generating_in_a_missing_schedule_is_not_found(scheduling: Stub) -> None:
    await not_found(scheduling.GenerateSlots(generate_request(missing("schedules"))))


# --- GenerateSlots: bad input ------------------------------------------------------------------

Change = Callable[[pb.GenerateSlotsRequest], None]


def _set(**values: object) -> Change:
    def change(request: pb.GenerateSlotsRequest) -> None:
        for key, value in values.items():
            if isinstance(value, (types_pb2.Date, pb.TimeOfDay, Duration)):
                getattr(request, key).CopyFrom(value)
            else:
                setattr(request, key, value)

    return change


def _clear(
    field: Literal["start_date", "end_date", "daily_start_time", "daily_end_time", "slot_duration"],
) -> Change:
    def change(request: pb.GenerateSlotsRequest) -> None:
        request.ClearField(field)

    return change


def _days(*days: int) -> Change:
    def change(request: pb.GenerateSlotsRequest) -> None:
        del request.days_of_week[:]
        request.days_of_week.extend(days)  # type: ignore[arg-type]

    return change


def _range(first: dt.date, last: dt.date) -> Change:
    return _set(
        start_date=types_pb2.Date(year=first.year, month=first.month, day=first.day),
        end_date=types_pb2.Date(year=last.year, month=last.month, day=last.day),
    )


_DAY = dt.date(2027, 2, 1)

BAD_GENERATIONS: list[tuple[str, Change, str]] = [
    ("no parent", _set(parent=""), "parent"),
    ("parent not a schedule", _set(parent=f"slots/{uuid.uuid4()}"), "parent"),
    ("parent id not a uuid", _set(parent="schedules/weekly"), "parent"),
    ("no start date", _clear("start_date"), "start_date"),
    ("no end date", _clear("end_date"), "end_date"),
    ("february 30", _set(start_date=types_pb2.Date(year=2027, month=2, day=30)), "start_date"),
    ("month 13", _set(end_date=types_pb2.Date(year=2027, month=13, day=1)), "end_date"),
    ("zero date", _set(start_date=types_pb2.Date()), "start_date"),
    ("end before start", _range(_DAY, _DAY - dt.timedelta(days=1)), "end_date"),
    ("93 days", _range(_DAY, _DAY + dt.timedelta(days=93)), "end_date"),
    ("no weekday", _days(), "days_of_week"),
    ("duplicate weekday", _days(1, 3, 1), "days_of_week[2]"),
    ("unspecified weekday", _days(0), "days_of_week[0]"),
    ("unknown weekday", _days(2, 8), "days_of_week[1]"),
    ("no start time", _clear("daily_start_time"), "daily_start_time"),
    ("no end time", _clear("daily_end_time"), "daily_end_time"),
    ("hour 24", _set(daily_start_time=pb.TimeOfDay(hours=24)), "daily_start_time"),
    ("minute 60", _set(daily_end_time=pb.TimeOfDay(hours=12, minutes=60)), "daily_end_time"),
    ("negative hour", _set(daily_start_time=pb.TimeOfDay(hours=-1)), "daily_start_time"),
    ("end equals start", _set(daily_end_time=pb.TimeOfDay(hours=8)), "daily_end_time"),
    ("end before start time", _set(daily_end_time=pb.TimeOfDay(hours=7)), "daily_end_time"),
    ("no duration", _clear("slot_duration"), "slot_duration"),
    ("90 seconds", _set(slot_duration=Duration(seconds=90)), "slot_duration"),
    ("nanos", _set(slot_duration=Duration(seconds=900, nanos=1)), "slot_duration"),
    ("4 minutes", _set(slot_duration=Duration(seconds=240)), "slot_duration"),
    ("8 hours 1 minute", _set(slot_duration=Duration(seconds=8 * 3600 + 60)), "slot_duration"),
    ("negative duration", _set(slot_duration=Duration(seconds=-900)), "slot_duration"),
    ("capacity 0", _set(capacity=0), "capacity"),
    ("capacity 201", _set(capacity=201), "capacity"),
    ("negative capacity", _set(capacity=-1), "capacity"),
    ("no time zone", _set(time_zone=""), "time_zone"),
    ("unknown time zone", _set(time_zone="Mars/Olympus_Mons"), "time_zone"),
    ("lower-case time zone", _set(time_zone="asia/shanghai"), "time_zone"),
    ("path as time zone", _set(time_zone="../../etc/passwd"), "time_zone"),
    ("absolute path time zone", _set(time_zone="/etc/localtime"), "time_zone"),
    ("not a zone file", _set(time_zone="zone.tab"), "time_zone"),
    ("request id too long", _set(request_id="r" * 65), "request_id"),
]


@pytest.mark.parametrize(
    ("change", "field"),
    [(change, field) for _, change, field in BAD_GENERATIONS],
    ids=[case for case, _, _ in BAD_GENERATIONS],
)
async def test_a_bad_generation_is_rejected_naming_the_field(
    scheduling: Stub, change: Change, field: str
) -> None:
    schedule = await create_schedule(scheduling)
    request = generate_request(schedule.name, first=_DAY, last=_DAY + dt.timedelta(days=6))
    change(request)

    assert await invalid(scheduling.GenerateSlots(request)) == [field]
    assert await _all_slots(scheduling, schedule.name) == []


@pytest.mark.parametrize("day", [dt.date(9999, 12, 31), dt.date(1, 1, 1)], ids=str)
async def test_dates_far_outside_any_horizon_are_invalid_not_internal(
    scheduling: Stub, day: dt.date
) -> None:
    schedule = await create_schedule(scheduling)
    for zone in ("Asia/Shanghai", "America/New_York"):
        request = generate_request(
            schedule.name, first=day, last=day, opens=(0, 0), closes=(23, 0), time_zone=zone
        )

        assert await invalid(scheduling.GenerateSlots(request)) == ["start_date", "end_date"]


async def test_more_than_2000_slots_at_once_are_refused(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    day = tomorrow()
    request = generate_request(
        schedule.name,
        first=day,
        last=day + dt.timedelta(days=7),
        days=ALL_DAYS,
        opens=(0, 0),
        closes=(20, 55),
        length=5,
    )  # 251 slots a day for 8 days: 2008

    assert await invalid(scheduling.GenerateSlots(request)) == ["end_date"]
    assert await _all_slots(scheduling, schedule.name) == []


async def test_every_bad_field_of_a_generation_is_named_at_once(scheduling: Stub) -> None:
    request = pb.GenerateSlotsRequest(parent="schedules/x", capacity=0, time_zone="Nowhere")

    fields = await invalid(scheduling.GenerateSlots(request))

    assert set(fields) == {
        "parent",
        "start_date",
        "end_date",
        "days_of_week",
        "daily_start_time",
        "daily_end_time",
        "slot_duration",
        "capacity",
        "time_zone",
    }


# --- GetSlot -----------------------------------------------------------------------------------


async def test_getting_a_missing_slot_is_not_found(scheduling: Stub) -> None:
    await not_found(scheduling.GetSlot(pb.GetSlotRequest(name=missing("slots"))))


@pytest.mark.parametrize(
    "name", ["", "slots/", "slots/1", f"schedules/{uuid.uuid4()}", f"slots/{uuid.uuid4()}/x"]
)
async def test_get_slot_with_a_malformed_name_is_invalid(scheduling: Stub, name: str) -> None:
    assert await invalid(scheduling.GetSlot(pb.GetSlotRequest(name=name))) == ["name"]


# --- BlockSlot and UnblockSlot -----------------------------------------------------------------


async def _block(stub: Stub, name: str, reason: str = "practitioner on leave") -> pb.Slot:
    return await stub.BlockSlot(pb.BlockSlotRequest(name=name, reason=reason))


async def _unblock(stub: Stub, name: str) -> pb.Slot:
    return await stub.UnblockSlot(pb.UnblockSlotRequest(name=name))


async def test_blocking_takes_a_slot_out_of_use(scheduling: Stub) -> None:
    slot = (await future_slots(scheduling)).slot

    blocked = await _block(scheduling, slot.name, "  practitioner on leave ")

    assert blocked.status == pb.SLOT_STATUS_BUSY_UNAVAILABLE
    assert blocked.block_reason == "practitioner on leave"
    assert instant(blocked.update_time) >= instant(slot.update_time)
    assert (blocked.booked_count, blocked.capacity, blocked.start_time) == (
        0,
        1,
        slot.start_time,
    )
    assert await get_slot(scheduling, slot.name) == blocked


async def test_blocking_a_blocked_slot_changes_nothing(scheduling: Stub) -> None:
    slot = (await future_slots(scheduling)).slot
    blocked = await _block(scheduling, slot.name, "first reason")

    again = await _block(scheduling, slot.name, "second reason")

    assert again == blocked
    assert again.block_reason == "first reason"


async def test_unblocking_makes_a_blocked_free_slot_free_again(scheduling: Stub) -> None:
    slot = (await future_slots(scheduling)).slot
    await _block(scheduling, slot.name)

    unblocked = await _unblock(scheduling, slot.name)

    assert unblocked.status == pb.SLOT_STATUS_FREE
    assert unblocked.block_reason == ""
    assert await get_slot(scheduling, slot.name) == unblocked


async def test_unblocking_a_slot_that_is_not_blocked_changes_nothing(scheduling: Stub) -> None:
    slot = (await future_slots(scheduling)).slot

    assert await _unblock(scheduling, slot.name) == slot


async def test_blocking_keeps_the_booked_appointments(scheduling: Stub, patients: Patients) -> None:
    slot = (await future_slots(scheduling, capacity=2)).slot
    appointment = await book(scheduling, await active_patient(patients), slot)

    blocked = await _block(scheduling, slot.name)

    assert (blocked.status, blocked.booked_count) == (pb.SLOT_STATUS_BUSY_UNAVAILABLE, 1)
    assert await get_appointment(scheduling, appointment.name) == appointment


async def test_unblocking_a_full_slot_makes_it_busy(scheduling: Stub, patients: Patients) -> None:
    slot = (await future_slots(scheduling, capacity=1)).slot
    await book(scheduling, await active_patient(patients), slot)
    await _block(scheduling, slot.name)

    unblocked = await _unblock(scheduling, slot.name)

    assert (unblocked.status, unblocked.booked_count) == (pb.SLOT_STATUS_BUSY, 1)


async def test_unblocking_a_partly_booked_slot_makes_it_free(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=2)).slot
    await book(scheduling, await active_patient(patients), slot)
    await _block(scheduling, slot.name)

    unblocked = await _unblock(scheduling, slot.name)

    assert (unblocked.status, unblocked.booked_count) == (pb.SLOT_STATUS_FREE, 1)


async def test_an_ended_slot_cannot_be_blocked_or_unblocked(scheduling: Stub) -> None:
    slot = (await past_slots(scheduling)).slot

    await precondition(
        scheduling.BlockSlot(pb.BlockSlotRequest(name=slot.name, reason="late")), "SLOT_ENDED"
    )
    await precondition(scheduling.UnblockSlot(pb.UnblockSlotRequest(name=slot.name)), "SLOT_ENDED")

    assert await get_slot(scheduling, slot.name) == slot


async def test_blocking_or_unblocking_a_missing_slot_is_not_found(scheduling: Stub) -> None:
    name = missing("slots")

    await not_found(scheduling.BlockSlot(pb.BlockSlotRequest(name=name, reason="leave")))
    await not_found(scheduling.UnblockSlot(pb.UnblockSlotRequest(name=name)))


@pytest.mark.parametrize(
    ("name", "reason", "fields"),
    [
        ("slots/x", "leave", ["name"]),
        ("", "leave", ["name"]),
        (None, "", ["reason"]),
        (None, "   ", ["reason"]),
        (None, "r" * 501, ["reason"]),
        (None, "line\u0000break", ["reason"]),
        ("x", "", ["name", "reason"]),
    ],
    ids=["bad name", "no name", "no reason", "blank reason", "long reason", "control", "both"],
)
async def test_a_bad_block_request_is_invalid(
    scheduling: Stub, name: str | None, reason: str, fields: list[str]
) -> None:
    slot = (await future_slots(scheduling)).slot
    request = pb.BlockSlotRequest(name=slot.name if name is None else name, reason=reason)

    assert await invalid(scheduling.BlockSlot(request)) == fields
    assert await get_slot(scheduling, slot.name) == slot


async def test_a_reason_of_500_characters_is_accepted(scheduling: Stub) -> None:
    slot = (await future_slots(scheduling)).slot

    blocked = await _block(scheduling, slot.name, "r" * 500)

    assert blocked.block_reason == "r" * 500


@pytest.mark.parametrize("name", ["", "slots/abc", f"appointments/{uuid.uuid4()}"])
async def test_unblock_with_a_malformed_name_is_invalid(scheduling: Stub, name: str) -> None:
    assert await invalid(scheduling.UnblockSlot(pb.UnblockSlotRequest(name=name))) == ["name"]
