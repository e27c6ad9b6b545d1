"""ListSlots (the free-slot search) and ListAppointments (patient and day lists), with paging."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest

from his.common.v1 import types_pb2
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import (
    TIME_ZONE,
    UTC,
    Patients,
    Stub,
    active_patient,
    book,
    create_schedule,
    current_slot,
    date,
    department,
    future_slots,
    generate,
    instant,
    invalid,
    local,
    practitioner,
    tomorrow,
    yesterday,
)

NEW_YORK = ZoneInfo("America/New_York")


def _names(items: Sequence[pb.Slot | pb.Appointment]) -> list[str]:
    return [item.name for item in items]


def _ordered(items: Sequence[pb.Slot | pb.Appointment]) -> list[str]:
    return [i.name for i in sorted(items, key=lambda i: (instant(i.start_time), i.name))]


async def _slots(stub: Stub, **filters: object) -> list[pb.Slot]:
    reply = await stub.ListSlots(pb.ListSlotsRequest(**filters))  # type: ignore[arg-type]
    assert reply.next_page_token == ""
    return list(reply.slots)


async def _appointments(stub: Stub, **filters: object) -> list[pb.Appointment]:
    reply = await stub.ListAppointments(pb.ListAppointmentsRequest(**filters))  # type: ignore[arg-type]
    assert reply.next_page_token == ""
    return list(reply.appointments)


# --- ListSlots ---------------------------------------------------------------------------------


@dataclass
class Clinic:
    """A department with two practitioners' schedules and their slots."""

    department: str
    first: pb.Schedule
    second: pb.Schedule
    # The first practitioner's two slots of yesterday: ended.
    past: list[pb.Slot]
    # The first practitioner's four slots of tomorrow: full, blocked, free, free.
    mine: list[pb.Slot]
    # The second practitioner's two free slots of tomorrow afternoon.
    theirs: list[pb.Slot]


async def _clinic(stub: Stub, patients: Patients) -> Clinic:
    ward = department()
    first = await create_schedule(
        stub, department_name=ward, horizon_start=dt.datetime.now(UTC) - dt.timedelta(days=3)
    )
    second = await create_schedule(stub, department_name=ward)
    past = await generate(stub, first.name, first=yesterday(), closes=(8, 30), capacity=2)
    mine = await generate(stub, first.name, first=tomorrow(), closes=(9, 0))
    theirs = await generate(stub, second.name, first=tomorrow(), opens=(14, 0), closes=(14, 30))
    await book(stub, await active_patient(patients), mine[0])
    await stub.BlockSlot(pb.BlockSlotRequest(name=mine[1].name, reason="meeting"))
    return Clinic(ward, first, second, past, mine, theirs)


async def test_free_slot_search_of_a_department_skips_full_blocked_and_ended_slots(
    scheduling: Stub, patients: Patients
) -> None:
    clinic = await _clinic(scheduling, patients)
    ward = clinic.department

    free = await _slots(scheduling, department=ward, only_free=True)
    every = await _slots(scheduling, department=ward)

    assert _names(free) == _names(clinic.mine[2:] + clinic.theirs)
    assert all(s.status == pb.SLOT_STATUS_FREE for s in free)
    assert _names(every) == _names(clinic.past + clinic.mine + clinic.theirs)
    assert [s.status for s in every[2:6]] == [
        pb.SLOT_STATUS_BUSY,
        pb.SLOT_STATUS_BUSY_UNAVAILABLE,
        pb.SLOT_STATUS_FREE,
        pb.SLOT_STATUS_FREE,
    ]


async def test_free_slot_search_by_practitioner_and_by_schedule(
    scheduling: Stub, patients: Patients
) -> None:
    clinic = await _clinic(scheduling, patients)
    first, second = clinic.first, clinic.second

    by_practitioner = await _slots(scheduling, practitioner=second.practitioner, only_free=True)
    by_schedule = await _slots(scheduling, schedule=first.name, only_free=True)
    combined = await _slots(
        scheduling, department=first.department, practitioner=first.practitioner
    )

    assert _names(by_practitioner) == _names(clinic.theirs)
    assert _names(by_schedule) == _names(clinic.mine[2:])
    assert _names(combined) == _names(clinic.past + clinic.mine)


async def test_free_slot_search_on_one_day_reads_the_day_in_the_time_zone(
    scheduling: Stub, patients: Patients
) -> None:
    clinic = await _clinic(scheduling, patients)
    ward = clinic.department
    # Tomorrow 08:00 and 14:00 in Shanghai are 20:00 and 02:00 (or 19:00 and 01:00) in New York,
    # on two different New York days.
    first_start = instant(clinic.mine[0].start_time).astimezone(NEW_YORK)
    second_start = instant(clinic.theirs[0].start_time).astimezone(NEW_YORK)
    assert second_start.date() == first_start.date() + dt.timedelta(days=1)

    shanghai_tomorrow = await _slots(
        scheduling, department=ward, day=date(tomorrow()), time_zone=TIME_ZONE
    )
    shanghai_yesterday = await _slots(
        scheduling, department=ward, day=date(yesterday()), time_zone=TIME_ZONE
    )
    new_york_first = await _slots(
        scheduling, department=ward, day=date(first_start.date()), time_zone="America/New_York"
    )
    new_york_second = await _slots(
        scheduling, department=ward, day=date(second_start.date()), time_zone="America/New_York"
    )
    free_tomorrow = await _slots(
        scheduling, department=ward, day=date(tomorrow()), time_zone=TIME_ZONE, only_free=True
    )

    assert _names(shanghai_tomorrow) == _names(clinic.mine + clinic.theirs)
    assert _names(shanghai_yesterday) == _names(clinic.past)
    assert _names(new_york_first) == _names(clinic.mine)
    assert _names(new_york_second) == _names(clinic.theirs)
    assert _names(free_tomorrow) == _names(clinic.mine[2:] + clinic.theirs)


async def test_a_slot_that_has_started_but_not_ended_is_still_offered(
    scheduling: Stub, patients: Patients
) -> None:
    made = await current_slot(scheduling, capacity=2)

    offered = await _slots(scheduling, schedule=made.schedule.name, only_free=True)
    appointment = await book(scheduling, await active_patient(patients), made.slot)

    assert _names(offered) == [made.slot.name]
    assert appointment.status == pb.APPOINTMENT_STATUS_BOOKED


async def test_a_slot_freed_by_a_cancellation_is_found_again(
    scheduling: Stub, patients: Patients
) -> None:
    schedule = await create_schedule(scheduling)
    slot = (await generate(scheduling, schedule.name, closes=(8, 15)))[0]
    appointment = await book(scheduling, await active_patient(patients), slot)
    assert await _slots(scheduling, schedule=schedule.name, only_free=True) == []

    await scheduling.CancelAppointment(
        pb.CancelAppointmentRequest(name=appointment.name, reason="moved")
    )

    assert _names(await _slots(scheduling, schedule=schedule.name, only_free=True)) == [slot.name]


async def test_slot_pages_of_three_yield_ten_slots_once_in_start_and_name_order(
    scheduling: Stub,
) -> None:
    ward = department()
    made: list[pb.Slot] = []
    for _ in range(2):
        schedule = await create_schedule(scheduling, department_name=ward)
        # Both schedules have slots at the same five times: ties are ordered by name.
        made += await generate(scheduling, schedule.name, opens=(9, 0), closes=(10, 15))
    assert len(made) == 10
    pages: list[list[str]] = []
    token = ""

    while True:
        reply = await scheduling.ListSlots(
            pb.ListSlotsRequest(department=ward, only_free=True, page_size=3, page_token=token)
        )
        pages.append(_names(list(reply.slots)))
        token = reply.next_page_token
        if not token:
            break

    assert [len(page) for page in pages] == [3, 3, 3, 1]
    assert [name for page in pages for name in page] == _ordered(made)


async def test_a_page_size_above_500_is_served_as_500(scheduling: Stub) -> None:
    schedule = await create_schedule(scheduling)
    day = tomorrow()
    made = await generate(
        scheduling,
        schedule.name,
        first=day,
        last=day + dt.timedelta(days=1),
        opens=(0, 0),
        closes=(23, 55),
        length=5,
    )
    assert len(made) == 574

    first = await scheduling.ListSlots(pb.ListSlotsRequest(schedule=schedule.name, page_size=501))
    rest = await scheduling.ListSlots(
        pb.ListSlotsRequest(
            schedule=schedule.name, page_size=2**31 - 1, page_token=first.next_page_token
        )
    )

    assert len(first.slots) == 500
    assert _names(list(first.slots) + list(rest.slots)) == _names(made)
    assert rest.next_page_token == ""


async def test_huge_page_sizes_are_accepted_by_every_list(
    scheduling: Stub, patients: Patients
) -> None:
    appointment = await book(
        scheduling, await active_patient(patients), (await future_slots(scheduling)).slot
    )

    schedules = await scheduling.ListSchedules(
        pb.ListSchedulesRequest(department=appointment.department, page_size=10_000)
    )
    appointments = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=appointment.patient, page_size=10_000)
    )

    assert [s.department for s in schedules.schedules] == [appointment.department]
    assert list(appointments.appointments) == [appointment]


async def test_a_slot_page_token_only_works_with_its_own_filters(scheduling: Stub) -> None:
    ward = department()
    schedule = await create_schedule(scheduling, department_name=ward)
    await generate(scheduling, schedule.name, closes=(9, 0))
    page = await scheduling.ListSlots(pb.ListSlotsRequest(department=ward, page_size=2))
    assert page.next_page_token
    token = page.next_page_token

    for request in (
        pb.ListSlotsRequest(department=department(), page_token=token),
        pb.ListSlotsRequest(department=ward, only_free=True, page_token=token),
        pb.ListSlotsRequest(schedule=schedule.name, page_token=token),
        pb.ListSlotsRequest(
            department=ward, day=date(tomorrow()), time_zone=TIME_ZONE, page_token=token
        ),
    ):
        assert await invalid(scheduling.ListSlots(request)) == ["page_token"]
    following = await scheduling.ListSlots(
        pb.ListSlotsRequest(department=ward, page_size=2, page_token=token)
    )
    assert len(following.slots) == 2


async def test_an_appointment_page_token_is_no_slot_page_token(
    scheduling: Stub, patients: Patients
) -> None:
    schedule = await create_schedule(scheduling)
    slots = await generate(scheduling, schedule.name, closes=(8, 30))
    patient = await active_patient(patients)
    for slot in slots:
        await book(scheduling, patient, slot)
    page = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=patient, page_size=1)
    )
    assert page.next_page_token

    request = pb.ListSlotsRequest(page_token=page.next_page_token)

    assert await invalid(scheduling.ListSlots(request)) == ["page_token"]


BAD_SLOT_FILTERS = [
    ("negative page size", pb.ListSlotsRequest(page_size=-3), "page_size"),
    ("garbage token", pb.ListSlotsRequest(page_token="not-a-token"), "page_token"),
    ("base64 token", pb.ListSlotsRequest(page_token="AAAAAAAAAAAAAAAAAAAAAAAAAA"), "page_token"),
    ("bad schedule", pb.ListSlotsRequest(schedule="schedules/1"), "schedule"),
    ("bad department", pb.ListSlotsRequest(department=f"staff/{uuid.uuid4()}"), "department"),
    ("bad practitioner", pb.ListSlotsRequest(practitioner="staff/DR"), "practitioner"),
    (
        "day without zone",
        pb.ListSlotsRequest(day=types_pb2.Date(year=2027, month=1, day=4)),
        "time_zone",
    ),
    (
        "impossible day",
        pb.ListSlotsRequest(day=types_pb2.Date(year=2027, month=2, day=29), time_zone=TIME_ZONE),
        "day",
    ),
    ("empty day", pb.ListSlotsRequest(day=types_pb2.Date(), time_zone=TIME_ZONE), "day"),
    (
        "year 9999",
        pb.ListSlotsRequest(day=types_pb2.Date(year=9999, month=12, day=31), time_zone="UTC"),
        "day",
    ),
    (
        "unknown zone",
        pb.ListSlotsRequest(day=types_pb2.Date(year=2027, month=1, day=4), time_zone="Moon/Base"),
        "time_zone",
    ),
    ("unknown zone without day", pb.ListSlotsRequest(time_zone="Nowhere/Town"), "time_zone"),
]


@pytest.mark.parametrize(
    ("request_", "field"),
    [(r, f) for _, r, f in BAD_SLOT_FILTERS],
    ids=[case for case, _, _ in BAD_SLOT_FILTERS],
)
async def test_a_malformed_slot_search_is_invalid(
    scheduling: Stub, request_: pb.ListSlotsRequest, field: str
) -> None:
    assert await invalid(scheduling.ListSlots(request_)) == [field]


# --- ListAppointments --------------------------------------------------------------------------


async def test_a_patients_appointments_are_listed_in_time_order(
    scheduling: Stub, patients: Patients
) -> None:
    patient = await active_patient(patients)
    later = (await future_slots(scheduling, opens=(15, 0), capacity=2)).slot
    earlier = (await future_slots(scheduling, opens=(9, 0))).slot
    day_after = (await future_slots(scheduling, day=tomorrow() + dt.timedelta(days=1))).slot
    made = [await book(scheduling, patient, slot) for slot in (later, day_after, earlier)]
    await book(scheduling, await active_patient(patients), later.name)  # someone else's

    listed = await _appointments(scheduling, patient=patient)

    assert _names(listed) == [made[2].name, made[0].name, made[1].name]
    assert {a.patient for a in listed} == {patient}


async def test_appointments_are_filtered_by_status(scheduling: Stub, patients: Patients) -> None:
    patient = await active_patient(patients)
    schedule = await create_schedule(scheduling)
    slots = await generate(scheduling, schedule.name, closes=(9, 0))
    made = [await book(scheduling, patient, slot) for slot in slots]
    await scheduling.CancelAppointment(pb.CancelAppointmentRequest(name=made[1].name, reason="x"))
    await scheduling.CheckInAppointment(pb.CheckInAppointmentRequest(name=made[2].name))

    booked = await _appointments(
        scheduling, patient=patient, statuses=[pb.APPOINTMENT_STATUS_BOOKED]
    )
    cancelled = await _appointments(
        scheduling, patient=patient, statuses=[pb.APPOINTMENT_STATUS_CANCELLED]
    )
    active = await _appointments(
        scheduling,
        patient=patient,
        statuses=[pb.APPOINTMENT_STATUS_ARRIVED, pb.APPOINTMENT_STATUS_BOOKED],
    )
    repeated = await _appointments(
        scheduling,
        patient=patient,
        statuses=[pb.APPOINTMENT_STATUS_CANCELLED, pb.APPOINTMENT_STATUS_CANCELLED],
    )
    fulfilled = await _appointments(
        scheduling, patient=patient, statuses=[pb.APPOINTMENT_STATUS_FULFILLED]
    )
    every = await _appointments(scheduling, patient=patient)

    assert _names(booked) == [made[0].name, made[3].name]
    assert _names(cancelled) == [made[1].name]
    assert _names(active) == [made[0].name, made[2].name, made[3].name]
    assert _names(repeated) == [made[1].name]
    assert fulfilled == []
    assert _names(every) == _names(made)


async def test_a_practitioners_day_list_holds_that_day_only(
    scheduling: Stub, patients: Patients
) -> None:
    doctor = practitioner()
    schedule = await create_schedule(scheduling, practitioner_name=doctor)
    day = tomorrow()
    today_slots = await generate(scheduling, schedule.name, first=day, closes=(9, 0), capacity=2)
    next_day = await generate(
        scheduling, schedule.name, first=day + dt.timedelta(days=1), closes=(8, 15)
    )
    other = await create_schedule(scheduling, department_name=schedule.department)
    other_slot = (await generate(scheduling, other.name, first=day, closes=(8, 15)))[0]
    made = [
        await book(scheduling, await active_patient(patients), slot)
        for slot in (today_slots[3], today_slots[0], today_slots[0], next_day[0], other_slot)
    ]

    day_list = await _appointments(
        scheduling, practitioner=doctor, day=date(day), time_zone=TIME_ZONE
    )
    department_day = await _appointments(
        scheduling, department=schedule.department, day=date(day), time_zone=TIME_ZONE
    )
    everything = await _appointments(scheduling, practitioner=doctor)

    assert _names(day_list) == _ordered(made[:3])
    assert [instant(a.start_time) for a in day_list] == [
        local(day, 8),
        local(day, 8),
        local(day, 8, 45),
    ]
    assert _names(department_day) == _ordered([*made[:3], made[4]])
    assert _names(everything) == _ordered(made[:4])
    assert {a.practitioner for a in everything} == {doctor}


async def test_appointment_pages_yield_each_appointment_once(
    scheduling: Stub, patients: Patients
) -> None:
    doctor = practitioner()
    schedule = await create_schedule(scheduling, practitioner_name=doctor)
    slots = await generate(scheduling, schedule.name, closes=(8, 45), capacity=3)
    made = [
        await book(scheduling, await active_patient(patients), slot)
        for slot in slots
        for _ in range(2)
    ]
    pages: list[list[str]] = []
    token = ""

    while True:
        reply = await scheduling.ListAppointments(
            pb.ListAppointmentsRequest(practitioner=doctor, page_size=4, page_token=token)
        )
        pages.append(_names(list(reply.appointments)))
        token = reply.next_page_token
        if not token:
            break

    assert [len(page) for page in pages] == [4, 2]
    assert [name for page in pages for name in page] == _ordered(made)


async def test_a_patient_with_no_appointments_gets_an_empty_list(scheduling: Stub) -> None:
    reply = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=f"patients/{uuid.uuid4()}")
    )

    assert list(reply.appointments) == []
    assert reply.next_page_token == ""


async def test_an_appointment_page_token_only_works_with_its_own_filters(
    scheduling: Stub, patients: Patients
) -> None:
    patient = await active_patient(patients)
    schedule = await create_schedule(scheduling)
    for slot in await generate(scheduling, schedule.name, closes=(8, 30)):
        await book(scheduling, patient, slot)
    page = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=patient, page_size=1)
    )
    token = page.next_page_token
    assert token

    for request in (
        pb.ListAppointmentsRequest(patient=f"patients/{uuid.uuid4()}", page_token=token),
        pb.ListAppointmentsRequest(
            patient=patient, statuses=[pb.APPOINTMENT_STATUS_BOOKED], page_token=token
        ),
        pb.ListAppointmentsRequest(department=schedule.department, page_token=token),
    ):
        assert await invalid(scheduling.ListAppointments(request)) == ["page_token"]


_PATIENT = f"patients/{uuid.uuid4()}"
_DAY = types_pb2.Date(year=2027, month=1, day=4)

BAD_APPOINTMENT_FILTERS = [
    ("no patient practitioner or department", pb.ListAppointmentsRequest(), "patient"),
    ("only a day", pb.ListAppointmentsRequest(day=_DAY, time_zone=TIME_ZONE), "patient"),
    (
        "only statuses",
        pb.ListAppointmentsRequest(statuses=[pb.APPOINTMENT_STATUS_BOOKED]),
        "patient",
    ),
    ("bad patient", pb.ListAppointmentsRequest(patient="patients/me"), "patient"),
    ("bad practitioner", pb.ListAppointmentsRequest(practitioner="doctors/1"), "practitioner"),
    ("bad department", pb.ListAppointmentsRequest(department="departments/"), "department"),
    ("negative page size", pb.ListAppointmentsRequest(patient=_PATIENT, page_size=-1), "page_size"),
    ("garbage token", pb.ListAppointmentsRequest(patient=_PATIENT, page_token="xyz"), "page_token"),
    ("day without zone", pb.ListAppointmentsRequest(patient=_PATIENT, day=_DAY), "time_zone"),
    (
        "impossible day",
        pb.ListAppointmentsRequest(
            patient=_PATIENT, day=types_pb2.Date(year=2027, month=4, day=31), time_zone=TIME_ZONE
        ),
        "day",
    ),
    (
        "bad zone",
        pb.ListAppointmentsRequest(patient=_PATIENT, day=_DAY, time_zone="Europe/Atlantis"),
        "time_zone",
    ),
    (
        "unspecified status",
        pb.ListAppointmentsRequest(patient=_PATIENT, statuses=[pb.APPOINTMENT_STATUS_UNSPECIFIED]),
        "statuses[0]",
    ),
    (
        "unknown status",
        pb.ListAppointmentsRequest(patient=_PATIENT, statuses=[pb.APPOINTMENT_STATUS_BOOKED, 42]),  # type: ignore[list-item]
        "statuses[1]",
    ),
]


@pytest.mark.parametrize(
    ("request_", "field"),
    [(r, f) for _, r, f in BAD_APPOINTMENT_FILTERS],
    ids=[case for case, _, _ in BAD_APPOINTMENT_FILTERS],
)
async def test_a_malformed_appointment_list_is_invalid(
    scheduling: Stub, request_: pb.ListAppointmentsRequest, field: str
) -> None:
    assert await invalid(scheduling.ListAppointments(request_)) == [field]
