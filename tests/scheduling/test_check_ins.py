"""What billing learns of check-ins: the AppointmentCheckedIn event in scheduling's outbox for emr
and for billing (one event id), and ListAppointments(arrive_period), the check-ins of a period
that billing reconciles its registration charges with."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.common.v1 import types_pb2
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import (
    UTC,
    Patients,
    Stub,
    active_patient,
    book,
    current_slot,
    future_slots,
    instant,
    invalid,
    timestamp,
)
from tests.support import relay_paused

ARRIVED = pb.APPOINTMENT_STATUS_ARRIVED
FULFILLED = pb.APPOINTMENT_STATUS_FULFILLED


def _period(start: dt.datetime | None, end: dt.datetime | None) -> types_pb2.Period:
    period = types_pb2.Period()
    if start is not None:
        period.start_time.CopyFrom(timestamp(start))
    if end is not None:
        period.end_time.CopyFrom(timestamp(end))
    return period


async def _all_pages(stub: Stub, request: pb.ListAppointmentsRequest) -> list[pb.Appointment]:
    """Every appointment the request lists, page after page (the period is the session's)."""
    found: list[pb.Appointment] = []
    while True:
        reply = await stub.ListAppointments(request)
        found += reply.appointments
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


async def test_a_check_in_stores_one_event_for_emr_and_the_same_for_billing(
    scheduling: Stub,
    patients: Patients,
    scheduling_service: RunningService,
    scheduling_db: AsyncEngine,
) -> None:
    made = await future_slots(scheduling)
    appointment = await book(scheduling, await active_patient(patients), made.slot)
    async with relay_paused(scheduling_service):
        arrived = await scheduling.CheckInAppointment(
            pb.CheckInAppointmentRequest(name=appointment.name)
        )
        # Already arrived: no second event for anyone.
        await scheduling.CheckInAppointment(pb.CheckInAppointmentRequest(name=appointment.name))
        async with scheduling_db.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT destination, event_id::text, envelope FROM scheduling.outbox "
                        "WHERE event_type = 'his.scheduling.v1.AppointmentCheckedIn' "
                        "AND envelope LIKE :subject ORDER BY destination"
                    ),
                    {"subject": f"%{appointment.name}%".encode()},
                )
            ).all()
    assert [row[0] for row in rows] == ["billing", "emr"]
    envelopes = [EventEnvelope.FromString(row[2]) for row in rows]
    # One event: billing keys the registration charge by the id emr keys the encounter by.
    assert envelopes[0] == envelopes[1]
    assert rows[0][1] == rows[1][1] == envelopes[0].event_id
    event = pb.AppointmentCheckedIn()
    assert envelopes[0].payload.Unpack(event)
    assert event.appointment == arrived
    assert (envelopes[0].source, envelopes[0].patient) == ("scheduling", arrived.patient)


async def test_the_check_ins_of_a_period_are_listed_whoever_the_department(
    scheduling: Stub, patients: Patients
) -> None:
    # Appointments under way now (each in a department of its own): two checked in, one of them
    # then fulfilled, and one never checked in.
    arrived_one, fulfilled_one, waiting = [
        await book(
            scheduling, await active_patient(patients), (await current_slot(scheduling)).slot
        )
        for _ in range(3)
    ]
    start = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    for appointment in (arrived_one, fulfilled_one):
        await scheduling.CheckInAppointment(pb.CheckInAppointmentRequest(name=appointment.name))
    await scheduling.CompleteAppointment(pb.CompleteAppointmentRequest(name=fulfilled_one.name))
    end = dt.datetime.now(UTC) + dt.timedelta(seconds=1)

    listed = await _all_pages(
        scheduling,
        pb.ListAppointmentsRequest(
            arrive_period=_period(start, end), statuses=[ARRIVED, FULFILLED], page_size=7
        ),
    )
    names = [a.name for a in listed]
    assert arrived_one.name in names and fulfilled_one.name in names
    assert waiting.name not in names
    assert len(set(names)) == len(names)
    for appointment in listed:
        assert start <= instant(appointment.arrive_time) < end
        assert appointment.status in (ARRIVED, FULFILLED)
    statuses = {a.name: a.status for a in listed}
    assert (statuses[arrived_one.name], statuses[fulfilled_one.name]) == (ARRIVED, FULFILLED)
    # Start inclusive, end exclusive: a period that ends before the check-ins lists none of them.
    before = await _all_pages(
        scheduling,
        pb.ListAppointmentsRequest(arrive_period=_period(start - dt.timedelta(hours=1), start)),
    )
    assert not {arrived_one.name, fulfilled_one.name} & {a.name for a in before}
    # With a department too, only that department's.
    mine = await _all_pages(
        scheduling,
        pb.ListAppointmentsRequest(
            arrive_period=_period(start, end), department=arrived_one.department
        ),
    )
    assert [a.name for a in mine] == [arrived_one.name]


_START = dt.datetime(2027, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "field"),
    [
        (_period(_START, None), "arrive_period.end_time"),
        (_period(None, _START), "arrive_period.start_time"),
        (_period(_START, _START), "arrive_period.end_time"),
        (_period(_START, _START - dt.timedelta(days=1)), "arrive_period.end_time"),
        (_period(_START, _START + dt.timedelta(days=31, seconds=1)), "arrive_period.end_time"),
        (
            types_pb2.Period(start_time=Timestamp(seconds=-(10**12)), end_time=timestamp(_START)),
            "arrive_period.start_time",
        ),
    ],
    ids=["no end", "no start", "empty", "backwards", "over 31 days", "out of range"],
)
async def test_a_malformed_arrive_period_is_invalid(
    scheduling: Stub, period: types_pb2.Period, field: str
) -> None:
    assert await invalid(
        scheduling.ListAppointments(pb.ListAppointmentsRequest(arrive_period=period))
    ) == [field]


async def test_a_month_of_check_ins_is_a_valid_period(scheduling: Stub) -> None:
    reply = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(
            arrive_period=_period(_START, _START + dt.timedelta(days=31)), page_size=1
        )
    )
    assert list(reply.appointments) == []  # nobody checked in in March 2027 yet
