"""The FHIR Appointment status machine: check-in, completion, cancellation, no-show, etags."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest

from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import (
    UTC,
    Patients,
    Stub,
    active_patient,
    book,
    booked,
    current_slot,
    get_appointment,
    get_slot,
    instant,
    invalid,
    missing,
    not_found,
    precondition,
    refused,
)

BOOKED = pb.APPOINTMENT_STATUS_BOOKED
ARRIVED = pb.APPOINTMENT_STATUS_ARRIVED
FULFILLED = pb.APPOINTMENT_STATUS_FULFILLED
CANCELLED = pb.APPOINTMENT_STATUS_CANCELLED
NOSHOW = pb.APPOINTMENT_STATUS_NOSHOW


async def cancel(stub: Stub, name: str, etag: str = "", reason: str = "ill") -> pb.Appointment:
    return await stub.CancelAppointment(
        pb.CancelAppointmentRequest(name=name, reason=reason, etag=etag)
    )


async def check_in(stub: Stub, name: str, etag: str = "") -> pb.Appointment:
    return await stub.CheckInAppointment(pb.CheckInAppointmentRequest(name=name, etag=etag))


async def no_show(stub: Stub, name: str, etag: str = "") -> pb.Appointment:
    return await stub.MarkNoShow(pb.MarkNoShowRequest(name=name, etag=etag))


async def complete(stub: Stub, name: str, etag: str = "") -> pb.Appointment:
    return await stub.CompleteAppointment(pb.CompleteAppointmentRequest(name=name, etag=etag))


Transition = Callable[[Stub, str, str], Awaitable[pb.Appointment]]
TRANSITIONS: dict[str, Transition] = {
    "cancel": cancel,
    "check_in": check_in,
    "no_show": no_show,
    "complete": complete,
}
RESULT = {"cancel": CANCELLED, "check_in": ARRIVED, "no_show": NOSHOW, "complete": FULFILLED}
# How ILLEGAL_TRANSITION's metadata names the statuses.
WORD = {
    BOOKED: "booked",
    ARRIVED: "arrived",
    FULFILLED: "fulfilled",
    CANCELLED: "cancelled",
    NOSHOW: "noshow",
}


async def _in_state(
    stub: Stub, patients: Patients, status: pb.AppointmentStatus.ValueType
) -> tuple[pb.Appointment, pb.Slot]:
    """A fresh appointment brought to `status`, in a slot that has started (so NOSHOW works)."""
    slot = (await current_slot(stub)).slot
    appointment = await book(stub, await active_patient(patients), slot)
    if status in (ARRIVED, FULFILLED):
        appointment = await check_in(stub, appointment.name)
    if status == FULFILLED:
        appointment = await complete(stub, appointment.name)
    if status == CANCELLED:
        appointment = await cancel(stub, appointment.name)
    if status == NOSHOW:
        appointment = await no_show(stub, appointment.name)
    assert appointment.status == status
    return appointment, slot


# --- the allowed transitions -------------------------------------------------------------------


async def test_check_in_makes_a_booked_appointment_arrived(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, _ = await booked(scheduling, patients)
    before = dt.datetime.now(UTC)

    arrived = await check_in(scheduling, appointment.name, appointment.etag)

    assert arrived.status == ARRIVED
    assert before - dt.timedelta(seconds=5) <= instant(arrived.arrive_time)
    assert instant(arrived.arrive_time) <= dt.datetime.now(UTC)
    assert arrived.etag != appointment.etag
    assert instant(arrived.update_time) >= instant(appointment.update_time)
    assert (arrived.patient, arrived.slot, arrived.start_time) == (
        appointment.patient,
        appointment.slot,
        appointment.start_time,
    )
    assert await get_appointment(scheduling, appointment.name) == arrived


async def test_completing_an_arrived_appointment_fulfils_it(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, slot = await booked(scheduling, patients)
    arrived = await check_in(scheduling, appointment.name)

    fulfilled = await complete(scheduling, appointment.name, arrived.etag)

    assert fulfilled.status == FULFILLED
    assert fulfilled.arrive_time == arrived.arrive_time
    assert fulfilled.etag not in (appointment.etag, arrived.etag)
    assert await get_appointment(scheduling, appointment.name) == fulfilled
    # A fulfilled appointment keeps its place.
    assert (await get_slot(scheduling, slot.name)).booked_count == 1


async def test_cancelling_a_booked_appointment_gives_its_place_back(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, slot = await booked(scheduling, patients, capacity=1)
    assert (await get_slot(scheduling, slot.name)).status == pb.SLOT_STATUS_BUSY
    before = dt.datetime.now(UTC)

    cancelled = await cancel(scheduling, appointment.name, appointment.etag, " patient is ill ")

    assert cancelled.status == CANCELLED
    assert cancelled.cancel_reason == "patient is ill"
    assert before - dt.timedelta(seconds=5) <= instant(cancelled.cancel_time)
    assert cancelled.etag != appointment.etag
    after = await get_slot(scheduling, slot.name)
    assert (after.booked_count, after.status) == (0, pb.SLOT_STATUS_FREE)
    assert await get_appointment(scheduling, appointment.name) == cancelled


async def test_a_cancelled_place_can_be_booked_by_someone_else(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, slot = await booked(scheduling, patients, capacity=1)
    await cancel(scheduling, appointment.name)

    other = await book(scheduling, await active_patient(patients), slot)

    assert other.status == BOOKED
    assert (await get_slot(scheduling, slot.name)).booked_count == 1


async def test_cancelling_an_arrived_appointment_gives_its_place_back(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, slot = await booked(scheduling, patients, capacity=2)
    await book(scheduling, await active_patient(patients), slot)
    arrived = await check_in(scheduling, appointment.name)

    cancelled = await cancel(scheduling, appointment.name, arrived.etag)

    assert cancelled.status == CANCELLED
    assert cancelled.arrive_time == arrived.arrive_time
    after = await get_slot(scheduling, slot.name)
    assert (after.booked_count, after.status) == (1, pb.SLOT_STATUS_FREE)


async def test_cancelling_in_a_blocked_slot_gives_the_place_back_but_keeps_the_block(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, slot = await booked(scheduling, patients, capacity=1)
    await scheduling.BlockSlot(pb.BlockSlotRequest(name=slot.name, reason="leave"))

    await cancel(scheduling, appointment.name)

    after = await get_slot(scheduling, slot.name)
    assert (after.booked_count, after.status) == (0, pb.SLOT_STATUS_BUSY_UNAVAILABLE)


async def test_a_no_show_keeps_its_place_in_the_slot(scheduling: Stub, patients: Patients) -> None:
    slot = (await current_slot(scheduling, capacity=1)).slot
    appointment = await book(scheduling, await active_patient(patients), slot)

    marked = await no_show(scheduling, appointment.name, appointment.etag)

    assert marked.status == NOSHOW
    assert marked.etag != appointment.etag
    assert not marked.HasField("arrive_time")
    assert not marked.HasField("cancel_time")
    after = await get_slot(scheduling, slot.name)
    assert (after.booked_count, after.status) == (1, pb.SLOT_STATUS_BUSY)
    assert await get_appointment(scheduling, appointment.name) == marked


async def test_a_no_show_cannot_be_recorded_before_the_slot_starts(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, _ = await booked(scheduling, patients)

    await precondition(no_show(scheduling, appointment.name), "SLOT_NOT_STARTED")

    assert await get_appointment(scheduling, appointment.name) == appointment


async def test_a_no_show_frees_the_patient_for_an_overlapping_booking(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await current_slot(scheduling)).slot
    other = (await current_slot(scheduling)).slot
    patient = await active_patient(patients)
    appointment = await book(scheduling, patient, slot)
    await precondition(book(scheduling, patient, other), "PATIENT_DOUBLE_BOOKED")

    await no_show(scheduling, appointment.name)

    assert (await book(scheduling, patient, other)).status == BOOKED


# --- illegal transitions -----------------------------------------------------------------------

ILLEGAL = [
    (BOOKED, "complete"),
    (ARRIVED, "no_show"),
    (FULFILLED, "cancel"),
    (FULFILLED, "check_in"),
    (FULFILLED, "no_show"),
    (CANCELLED, "check_in"),
    (CANCELLED, "no_show"),
    (CANCELLED, "complete"),
    (NOSHOW, "cancel"),
    (NOSHOW, "check_in"),
    (NOSHOW, "complete"),
]


@pytest.mark.parametrize(
    ("status", "action"),
    ILLEGAL,
    ids=[f"{pb.AppointmentStatus.Name(s)}-{a}" for s, a in ILLEGAL],
)
async def test_an_illegal_transition_is_refused_and_changes_nothing(
    scheduling: Stub, patients: Patients, status: pb.AppointmentStatus.ValueType, action: str
) -> None:
    appointment, slot = await _in_state(scheduling, patients, status)
    slot_before = await get_slot(scheduling, slot.name)

    failure = await precondition(
        TRANSITIONS[action](scheduling, appointment.name, appointment.etag), "ILLEGAL_TRANSITION"
    )

    assert failure.metadata == {"status": WORD[status], "requested": WORD[RESULT[action]]}
    assert await get_appointment(scheduling, appointment.name) == appointment
    assert await get_slot(scheduling, slot.name) == slot_before


# --- repeats and etags -------------------------------------------------------------------------

REPEATS = [
    (BOOKED, "cancel"),
    (ARRIVED, "cancel"),
    (BOOKED, "check_in"),
    (BOOKED, "no_show"),
    (ARRIVED, "complete"),
]


@pytest.mark.parametrize(
    ("start", "action"),
    REPEATS,
    ids=[f"{pb.AppointmentStatus.Name(s)}-{a}" for s, a in REPEATS],
)
async def test_repeating_a_transition_changes_nothing_even_with_a_stale_etag(
    scheduling: Stub, patients: Patients, start: pb.AppointmentStatus.ValueType, action: str
) -> None:
    appointment, slot = await _in_state(scheduling, patients, start)
    done = await TRANSITIONS[action](scheduling, appointment.name, appointment.etag)
    slot_after = await get_slot(scheduling, slot.name)

    again = await TRANSITIONS[action](scheduling, appointment.name, appointment.etag)
    blind = await TRANSITIONS[action](scheduling, appointment.name, "")

    assert done.status == RESULT[action]
    assert again == done
    assert blind == done
    assert await get_slot(scheduling, slot.name) == slot_after


async def test_cancelling_twice_keeps_the_first_reason_and_gives_back_one_place(
    scheduling: Stub, patients: Patients
) -> None:
    appointment, slot = await booked(scheduling, patients, capacity=2)
    await book(scheduling, await active_patient(patients), slot)
    first = await cancel(scheduling, appointment.name, reason="first reason")

    again = await cancel(scheduling, appointment.name, reason="second reason")

    assert again == first
    assert again.cancel_reason == "first reason"
    assert (await get_slot(scheduling, slot.name)).booked_count == 1


STALE = [
    (ARRIVED, "complete"),
    (ARRIVED, "cancel"),
    (BOOKED, "check_in"),
    (BOOKED, "cancel"),
    (BOOKED, "no_show"),
]


@pytest.mark.parametrize(
    ("status", "action"),
    STALE,
    ids=[f"{pb.AppointmentStatus.Name(s)}-{a}" for s, a in STALE],
)
async def test_a_stale_etag_aborts_a_real_transition(
    scheduling: Stub, patients: Patients, status: pb.AppointmentStatus.ValueType, action: str
) -> None:
    appointment, slot = await _in_state(scheduling, patients, status)
    slot_before = await get_slot(scheduling, slot.name)
    stale = str(int(appointment.etag) + 7) if appointment.etag.isdigit() else "stale"

    failure = await refused(
        TRANSITIONS[action](scheduling, appointment.name, stale),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )

    assert failure.metadata == {"etag": appointment.etag}
    assert await get_appointment(scheduling, appointment.name) == appointment
    assert await get_slot(scheduling, slot.name) == slot_before


async def test_an_etag_from_before_a_change_is_stale(scheduling: Stub, patients: Patients) -> None:
    appointment, _ = await booked(scheduling, patients)
    arrived = await check_in(scheduling, appointment.name, appointment.etag)

    await refused(
        complete(scheduling, appointment.name, appointment.etag),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )

    assert (await complete(scheduling, appointment.name, arrived.etag)).status == FULFILLED


@pytest.mark.parametrize("etag", ["garbage", "0", " 1"])
async def test_a_garbage_etag_aborts(scheduling: Stub, patients: Patients, etag: str) -> None:
    appointment, _ = await booked(scheduling, patients)

    await refused(
        check_in(scheduling, appointment.name, etag), grpc.StatusCode.ABORTED, "ETAG_MISMATCH"
    )


# --- missing and malformed ---------------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(TRANSITIONS))
async def test_a_transition_of_a_missing_appointment_is_not_found(
    scheduling: Stub, action: str
) -> None:
    await not_found(TRANSITIONS[action](scheduling, missing("appointments"), ""))


@pytest.mark.parametrize("action", sorted(TRANSITIONS))
@pytest.mark.parametrize(
    "name", ["", "appointments/x", f"slots/{uuid.uuid4()}", f"appointments/{uuid.uuid4()}/"]
)
async def test_a_transition_with_a_malformed_name_is_invalid(
    scheduling: Stub, action: str, name: str
) -> None:
    assert await invalid(TRANSITIONS[action](scheduling, name, "")) == ["name"]


@pytest.mark.parametrize("reason", ["", "   ", "r" * 501, "bell\u0007"])
async def test_a_cancel_without_a_proper_reason_is_invalid(
    scheduling: Stub, patients: Patients, reason: str
) -> None:
    appointment, slot = await booked(scheduling, patients)

    fields = await invalid(cancel(scheduling, appointment.name, reason=reason))

    assert fields == ["reason"]
    assert await get_appointment(scheduling, appointment.name) == appointment
    assert (await get_slot(scheduling, slot.name)).booked_count == 1
