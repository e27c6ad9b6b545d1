"""CreateSchedule, GetSchedule and ListSchedules."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import pytest

from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import (
    UTC,
    Stub,
    create_schedule,
    department,
    instant,
    invalid,
    make_schedule,
    missing,
    not_found,
    practitioner,
    request_id,
    timestamp,
)

# --- CreateSchedule ----------------------------------------------------------------------------


async def test_created_schedule_keeps_what_was_sent_and_gets_a_name(scheduling: Stub) -> None:
    start = dt.datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
    end = dt.datetime(2027, 1, 5, 0, 0, tzinfo=UTC)
    sent = make_schedule(horizon_start=start, horizon_end=end)
    before = dt.datetime.now(UTC)

    created = await scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=sent))

    assert created.name.startswith("schedules/")
    assert str(uuid.UUID(created.name.removeprefix("schedules/"))) == created.name[10:]
    assert created.department == sent.department
    assert created.practitioner == sent.practitioner
    assert created.service_type == sent.service_type
    assert instant(created.planning_horizon.start_time) == start
    assert instant(created.planning_horizon.end_time) == end
    assert before - dt.timedelta(seconds=5) <= instant(created.create_time)
    assert instant(created.create_time) <= dt.datetime.now(UTC) + dt.timedelta(seconds=5)


async def test_a_schedule_without_practitioner_is_for_the_whole_department(
    scheduling: Stub,
) -> None:
    created = await create_schedule(scheduling, practitioner_name="")

    assert created.practitioner == ""
    assert not created.planning_horizon.HasField("end_time")
    assert await scheduling.GetSchedule(pb.GetScheduleRequest(name=created.name)) == created


async def test_assigned_name_and_times_in_the_request_are_ignored(scheduling: Stub) -> None:
    sent = make_schedule()
    sent.name = f"schedules/{uuid.uuid4()}"
    sent.create_time.CopyFrom(timestamp(dt.datetime(2001, 1, 1, tzinfo=UTC)))

    created = await scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=sent))

    assert created.name != sent.name
    age = dt.datetime.now(UTC) - instant(created.create_time)
    assert dt.timedelta(0) <= age < dt.timedelta(seconds=5)


async def test_repeating_a_create_with_its_request_id_returns_the_first_schedule(
    scheduling: Stub,
) -> None:
    key = request_id()
    sent = make_schedule()
    first = await scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=sent, request_id=key))

    again = await scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=sent, request_id=key))
    other = make_schedule(department_name=sent.department)
    reused = await invalid(
        scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=other, request_id=key))
    )

    assert again == first
    assert reused == ["request_id"]  # a reused key for another schedule is refused
    listed = await scheduling.ListSchedules(pb.ListSchedulesRequest(department=sent.department))
    assert list(listed.schedules) == [first]


async def test_creates_without_request_id_make_separate_schedules(scheduling: Stub) -> None:
    sent = make_schedule()

    first = await scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=sent))
    second = await scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=sent))

    assert first.name != second.name
    listed = await scheduling.ListSchedules(pb.ListSchedulesRequest(department=sent.department))
    assert {s.name for s in listed.schedules} == {first.name, second.name}


def _without_horizon_start(s: pb.Schedule) -> None:
    s.planning_horizon.ClearField("start_time")


def _end_before_start(s: pb.Schedule) -> None:
    s.planning_horizon.end_time.CopyFrom(s.planning_horizon.start_time)
    s.planning_horizon.end_time.seconds -= 60


def _end_equal_to_start(s: pb.Schedule) -> None:
    s.planning_horizon.end_time.CopyFrom(s.planning_horizon.start_time)


def _start_in_1850(s: pb.Schedule) -> None:
    s.planning_horizon.start_time.CopyFrom(timestamp(dt.datetime(1850, 1, 1, tzinfo=UTC)))


def _end_out_of_range(s: pb.Schedule) -> None:
    s.planning_horizon.end_time.seconds = 10**12


def _set(field: str, value: str) -> Callable[[pb.Schedule], None]:
    def change(s: pb.Schedule) -> None:
        target = s
        *path, last = field.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)

    return change


BAD_SCHEDULES: list[tuple[str, Callable[[pb.Schedule], None], str]] = [
    ("no department", _set("department", ""), "schedule.department"),
    ("wrong collection", _set("department", f"wards/{uuid.uuid4()}"), "schedule.department"),
    ("department id not a uuid", _set("department", "departments/cardio"), "schedule.department"),
    (
        "department id upper case",
        _set("department", f"departments/{str(uuid.uuid4()).upper()}"),
        "schedule.department",
    ),
    (
        "department with a child path",
        _set("department", f"departments/{uuid.uuid4()}/x"),
        "schedule.department",
    ),
    ("practitioner wrong collection", _set("practitioner", department()), "schedule.practitioner"),
    ("practitioner id not a uuid", _set("practitioner", "staff/dr-li"), "schedule.practitioner"),
    ("no service type system", _set("service_type.system", ""), "schedule.service_type.system"),
    ("blank service type code", _set("service_type.code", "   "), "schedule.service_type.code"),
    ("long service type code", _set("service_type.code", "c" * 201), "schedule.service_type.code"),
    (
        "long service type system",
        _set("service_type.system", "s" * 201),
        "schedule.service_type.system",
    ),
    (
        "long service type display",
        _set("service_type.display", "d" * 201),
        "schedule.service_type.display",
    ),
    ("no horizon start", _without_horizon_start, "schedule.planning_horizon.start_time"),
    ("horizon end before start", _end_before_start, "schedule.planning_horizon.end_time"),
    ("horizon end equal to start", _end_equal_to_start, "schedule.planning_horizon.end_time"),
    ("horizon start in 1850", _start_in_1850, "schedule.planning_horizon.start_time"),
    ("horizon end out of range", _end_out_of_range, "schedule.planning_horizon.end_time"),
]


@pytest.mark.parametrize(
    ("change", "field"),
    [(change, field) for _, change, field in BAD_SCHEDULES],
    ids=[case for case, _, _ in BAD_SCHEDULES],
)
async def test_a_bad_schedule_is_rejected_naming_the_field(
    scheduling: Stub, change: Callable[[pb.Schedule], None], field: str
) -> None:
    schedule = make_schedule()
    change(schedule)

    fields = await invalid(scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule)))

    assert fields == [field]


async def test_a_create_without_a_schedule_names_the_schedule(scheduling: Stub) -> None:
    fields = await invalid(scheduling.CreateSchedule(pb.CreateScheduleRequest()))

    assert "schedule" in fields


@pytest.mark.parametrize("key", ["k" * 65, " padded", "tab\tinside"])
async def test_a_bad_request_id_is_rejected(scheduling: Stub, key: str) -> None:
    request = pb.CreateScheduleRequest(schedule=make_schedule(), request_id=key)

    assert await invalid(scheduling.CreateSchedule(request)) == ["request_id"]


async def test_a_rejected_schedule_is_not_created(scheduling: Stub) -> None:
    schedule = make_schedule()
    schedule.service_type.code = ""

    await invalid(scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule)))

    listed = await scheduling.ListSchedules(pb.ListSchedulesRequest(department=schedule.department))
    assert list(listed.schedules) == []


# --- GetSchedule -------------------------------------------------------------------------------


async def test_get_returns_the_created_schedule(scheduling: Stub) -> None:
    created = await create_schedule(scheduling)

    assert await scheduling.GetSchedule(pb.GetScheduleRequest(name=created.name)) == created


async def test_getting_a_missing_schedule_is_not_found(scheduling: Stub) -> None:
    await not_found(scheduling.GetSchedule(pb.GetScheduleRequest(name=missing("schedules"))))


BAD_NAMES = [
    "",
    "schedules/",
    "schedules/abc",
    f"slots/{uuid.uuid4()}",
    f"schedules/{uuid.uuid4()}/slots",
    f"schedules/{str(uuid.uuid4()).upper()}",
    f"/schedules/{uuid.uuid4()}",
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_get_with_a_malformed_name_is_invalid(scheduling: Stub, name: str) -> None:
    assert await invalid(scheduling.GetSchedule(pb.GetScheduleRequest(name=name))) == ["name"]


# --- ListSchedules -----------------------------------------------------------------------------


async def test_schedules_are_listed_by_department_in_name_order(scheduling: Stub) -> None:
    ward = department()
    made = [await create_schedule(scheduling, department_name=ward) for _ in range(4)]
    await create_schedule(scheduling)  # another department

    listed = await scheduling.ListSchedules(pb.ListSchedulesRequest(department=ward))

    assert [s.name for s in listed.schedules] == sorted(s.name for s in made)
    assert listed.next_page_token == ""


async def test_schedules_are_listed_by_practitioner_across_departments(scheduling: Stub) -> None:
    doctor = practitioner()
    first = await create_schedule(scheduling, practitioner_name=doctor)
    second = await create_schedule(scheduling, practitioner_name=doctor)
    await create_schedule(scheduling, department_name=first.department)  # another practitioner

    listed = await scheduling.ListSchedules(pb.ListSchedulesRequest(practitioner=doctor))

    expected = sorted([first, second], key=lambda s: (s.department, s.name))
    assert list(listed.schedules) == expected


async def test_schedule_filters_combine(scheduling: Stub) -> None:
    doctor = practitioner()
    wanted = await create_schedule(scheduling, practitioner_name=doctor)
    await create_schedule(scheduling, practitioner_name=doctor)  # same doctor, other department
    await create_schedule(scheduling, department_name=wanted.department)  # other doctor

    listed = await scheduling.ListSchedules(
        pb.ListSchedulesRequest(department=wanted.department, practitioner=doctor)
    )

    assert list(listed.schedules) == [wanted]


async def test_schedule_pages_yield_every_schedule_once_in_order(scheduling: Stub) -> None:
    ward = department()
    made = [await create_schedule(scheduling, department_name=ward) for _ in range(5)]
    pages: list[list[str]] = []
    token = ""

    while True:
        page = await scheduling.ListSchedules(
            pb.ListSchedulesRequest(department=ward, page_size=2, page_token=token)
        )
        pages.append([s.name for s in page.schedules])
        token = page.next_page_token
        if not token:
            break

    assert [len(p) for p in pages] == [2, 2, 1]
    assert [name for p in pages for name in p] == sorted(s.name for s in made)


async def test_listing_an_empty_department_returns_nothing(scheduling: Stub) -> None:
    listed = await scheduling.ListSchedules(pb.ListSchedulesRequest(department=department()))

    assert list(listed.schedules) == []
    assert listed.next_page_token == ""


async def test_a_schedule_page_token_only_works_with_its_own_filters(scheduling: Stub) -> None:
    ward = department()
    for _ in range(2):
        await create_schedule(scheduling, department_name=ward)
    page = await scheduling.ListSchedules(pb.ListSchedulesRequest(department=ward, page_size=1))
    assert page.next_page_token

    request = pb.ListSchedulesRequest(department=department(), page_token=page.next_page_token)

    assert await invalid(scheduling.ListSchedules(request)) == ["page_token"]


@pytest.mark.parametrize("token", ["garbage", "AAAA", "!!!", "eyJjIjp7fX0"])
async def test_a_garbage_schedule_page_token_is_invalid(scheduling: Stub, token: str) -> None:
    request = pb.ListSchedulesRequest(department=department(), page_token=token)

    assert await invalid(scheduling.ListSchedules(request)) == ["page_token"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListSchedulesRequest(page_size=-1), "page_size"),
        (pb.ListSchedulesRequest(department="departments/x"), "department"),
        (pb.ListSchedulesRequest(department=practitioner()), "department"),
        (pb.ListSchedulesRequest(practitioner="staff/"), "practitioner"),
        (pb.ListSchedulesRequest(practitioner=department()), "practitioner"),
    ],
    ids=["negative page size", "bad department", "staff as department", "empty id", "wrong kind"],
)
async def test_a_malformed_schedule_filter_is_invalid(
    scheduling: Stub, request_: pb.ListSchedulesRequest, field: str
) -> None:
    assert await invalid(scheduling.ListSchedules(request_)) == [field]
