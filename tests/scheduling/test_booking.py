"""BookAppointment and GetAppointment: places, patients, replays and overlapping bookings."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from his.patient.v1 import patient_service_pb2 as patient_pb
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import (
    UTC,
    Copied,
    Patients,
    Stub,
    active_patient,
    book,
    create_schedule,
    future_slots,
    generate,
    get_appointment,
    get_slot,
    instant,
    invalid,
    missing,
    not_found,
    past_slots,
    precondition,
    request_id,
    tomorrow,
)


async def _patient_appointments(stub: Stub, patient: str) -> list[pb.Appointment]:
    reply = await stub.ListAppointments(pb.ListAppointmentsRequest(patient=patient))
    return list(reply.appointments)


async def _cancel(stub: Stub, name: str) -> pb.Appointment:
    return await stub.CancelAppointment(
        pb.CancelAppointmentRequest(name=name, reason="patient called")
    )


# --- happy path --------------------------------------------------------------------------------


async def test_booking_creates_a_booked_appointment_copied_from_the_slot(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=1)).slot
    patient = await active_patient(patients)
    before = dt.datetime.now(UTC)

    appointment = await book(scheduling, patient, slot)

    appointment_id = appointment.name.removeprefix("appointments/")
    assert f"appointments/{uuid.UUID(appointment_id)}" == appointment.name
    assert appointment.patient == patient
    assert appointment.slot == slot.name
    assert appointment.status == pb.APPOINTMENT_STATUS_BOOKED
    assert appointment.practitioner == slot.practitioner
    assert appointment.department == slot.department
    assert appointment.service_type == slot.service_type
    assert appointment.start_time == slot.start_time
    assert appointment.end_time == slot.end_time
    assert not appointment.HasField("arrive_time")
    assert not appointment.HasField("cancel_time")
    assert appointment.cancel_reason == ""
    assert appointment.etag
    created = instant(appointment.create_time)
    assert before - dt.timedelta(seconds=5) <= created <= dt.datetime.now(UTC)
    assert await get_appointment(scheduling, appointment.name) == appointment


async def test_booking_the_last_place_makes_the_slot_busy(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=1)).slot

    await book(scheduling, await active_patient(patients), slot)

    after = await get_slot(scheduling, slot.name)
    assert (after.booked_count, after.status) == (1, pb.SLOT_STATUS_BUSY)
    assert instant(after.update_time) >= instant(slot.update_time)


async def test_a_slot_stays_free_until_every_place_is_taken(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=3)).slot

    seen = []
    for _ in range(3):
        await book(scheduling, await active_patient(patients), slot)
        current = await get_slot(scheduling, slot.name)
        seen.append((current.booked_count, current.status))

    assert seen == [
        (1, pb.SLOT_STATUS_FREE),
        (2, pb.SLOT_STATUS_FREE),
        (3, pb.SLOT_STATUS_BUSY),
    ]


async def test_a_department_slot_books_an_appointment_without_practitioner(
    scheduling: Stub, patients: Patients
) -> None:
    schedule = await create_schedule(scheduling, practitioner_name="")
    slot = (await generate(scheduling, schedule.name, closes=(8, 15)))[0]

    appointment = await book(scheduling, await active_patient(patients), slot)

    assert appointment.practitioner == ""
    assert appointment.department == schedule.department


async def test_a_replayed_booking_returns_the_first_appointment_and_books_once(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=2)).slot
    patient = await active_patient(patients)
    key = request_id()
    first = await book(scheduling, patient, slot, request_id=key)

    again = await book(scheduling, patient, slot, request_id=key)

    assert again == first
    assert await _patient_appointments(scheduling, patient) == [first]
    assert (await get_slot(scheduling, slot.name)).booked_count == 1


async def test_a_request_id_reused_for_another_patient_is_rejected(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=2)).slot
    first_patient = await active_patient(patients)
    other_patient = await active_patient(patients)
    key = request_id()
    first = await book(scheduling, first_patient, slot, request_id=key)

    fields = await invalid(
        scheduling.BookAppointment(
            pb.BookAppointmentRequest(patient=other_patient, slot=slot.name, request_id=key)
        )
    )

    # The other patient is neither booked nor shown the first patient's appointment.
    assert fields == ["request_id"]
    assert await _patient_appointments(scheduling, other_patient) == []
    assert (await get_slot(scheduling, slot.name)).booked_count == 1
    assert await _patient_appointments(scheduling, first_patient) == [first]


async def test_a_replay_is_answered_even_once_the_slot_is_full(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=1)).slot
    key = request_id()
    first = await book(scheduling, await active_patient(patients), slot, request_id=key)

    again = await book(scheduling, first.patient, slot, request_id=key)

    assert again == first


async def test_a_replay_is_answered_even_once_the_slot_is_blocked(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=2)).slot
    key = request_id()
    first = await book(scheduling, await active_patient(patients), slot, request_id=key)
    await scheduling.BlockSlot(pb.BlockSlotRequest(name=slot.name, reason="leave"))

    assert await book(scheduling, first.patient, slot, request_id=key) == first


# --- the slot ----------------------------------------------------------------------------------


async def test_a_full_slot_cannot_be_booked(scheduling: Stub, patients: Patients) -> None:
    slot = (await future_slots(scheduling, capacity=1)).slot
    await book(scheduling, await active_patient(patients), slot)
    patient = await active_patient(patients)

    await precondition(book(scheduling, patient, slot), "SLOT_FULL")

    assert await _patient_appointments(scheduling, patient) == []
    assert (await get_slot(scheduling, slot.name)).booked_count == 1


async def test_a_blocked_slot_cannot_be_booked(scheduling: Stub, patients: Patients) -> None:
    slot = (await future_slots(scheduling, capacity=2)).slot
    await scheduling.BlockSlot(pb.BlockSlotRequest(name=slot.name, reason="leave"))
    patient = await active_patient(patients)

    await precondition(book(scheduling, patient, slot), "SLOT_BLOCKED")

    assert await _patient_appointments(scheduling, patient) == []
    assert (await get_slot(scheduling, slot.name)).booked_count == 0


async def test_a_blocked_full_slot_says_it_is_blocked(scheduling: Stub, patients: Patients) -> None:
    slot = (await future_slots(scheduling, capacity=1)).slot
    await book(scheduling, await active_patient(patients), slot)
    await scheduling.BlockSlot(pb.BlockSlotRequest(name=slot.name, reason="leave"))

    await precondition(book(scheduling, await active_patient(patients), slot), "SLOT_BLOCKED")


async def test_an_unblocked_slot_can_be_booked_again(scheduling: Stub, patients: Patients) -> None:
    slot = (await future_slots(scheduling)).slot
    await scheduling.BlockSlot(pb.BlockSlotRequest(name=slot.name, reason="leave"))
    await scheduling.UnblockSlot(pb.UnblockSlotRequest(name=slot.name))

    appointment = await book(scheduling, await active_patient(patients), slot)

    assert appointment.status == pb.APPOINTMENT_STATUS_BOOKED


async def test_an_ended_slot_cannot_be_booked(scheduling: Stub, patients: Patients) -> None:
    slot = (await past_slots(scheduling, capacity=5)).slot
    patient = await active_patient(patients)

    await precondition(book(scheduling, patient, slot), "SLOT_ENDED")

    assert await _patient_appointments(scheduling, patient) == []
    assert (await get_slot(scheduling, slot.name)).booked_count == 0


async def test_booking_a_missing_slot_is_not_found(scheduling: Stub, patients: Patients) -> None:
    patient = await active_patient(patients)

    await not_found(book(scheduling, patient, missing("slots")))


# --- the patient -------------------------------------------------------------------------------


async def test_a_patient_who_does_not_exist_cannot_be_booked(scheduling: Stub) -> None:
    slot = (await future_slots(scheduling)).slot
    patient = missing("patients")

    failure = await precondition(book(scheduling, patient, slot), "PATIENT_NOT_FOUND")

    assert failure.metadata == {"patient": patient}
    assert (await get_slot(scheduling, slot.name)).booked_count == 0


async def test_an_inactive_patient_cannot_be_booked(
    scheduling: Stub, patients: Patients, states_copied: Copied
) -> None:
    slot = (await future_slots(scheduling)).slot
    patient = await active_patient(patients)
    await patients.DeactivatePatient(patient_pb.DeactivatePatientRequest(name=patient))
    await states_copied()

    await precondition(book(scheduling, patient, slot), "PATIENT_INACTIVE")

    assert (await get_slot(scheduling, slot.name)).booked_count == 0


async def test_a_reactivated_patient_can_be_booked_again(
    scheduling: Stub, patients: Patients, states_copied: Copied
) -> None:
    slot = (await future_slots(scheduling)).slot
    patient = await active_patient(patients)
    await patients.DeactivatePatient(patient_pb.DeactivatePatientRequest(name=patient))
    await patients.ReactivatePatient(patient_pb.ReactivatePatientRequest(name=patient))
    await states_copied()

    appointment = await book(scheduling, patient, slot)

    assert appointment.patient == patient


async def test_a_merged_patient_cannot_be_booked_and_the_survivor_is_named(
    scheduling: Stub, patients: Patients, states_copied: Copied
) -> None:
    slot = (await future_slots(scheduling)).slot
    survivor = await active_patient(patients)
    duplicate = await active_patient(patients)
    await patients.MergePatients(
        patient_pb.MergePatientsRequest(name=duplicate, survivor=survivor, reason="same person")
    )
    await states_copied()

    failure = await precondition(book(scheduling, duplicate, slot), "PATIENT_MERGED")

    assert failure.metadata == {"merged_into": survivor}
    assert (await book(scheduling, survivor, slot)).patient == survivor


# --- overlapping bookings of one patient -------------------------------------------------------


async def test_a_patient_cannot_hold_two_overlapping_appointments(
    scheduling: Stub, patients: Patients
) -> None:
    # Two practitioners' schedules; their slots overlap by 15 minutes.
    first = (await future_slots(scheduling, opens=(9, 0), length=30)).slot
    second = (await future_slots(scheduling, opens=(9, 15), length=30)).slot
    patient = await active_patient(patients)
    held = await book(scheduling, patient, first)

    await precondition(book(scheduling, patient, second), "PATIENT_DOUBLE_BOOKED")

    assert await _patient_appointments(scheduling, patient) == [held]
    assert (await get_slot(scheduling, second.name)).booked_count == 0


async def test_after_cancelling_the_first_the_overlapping_slot_can_be_booked(
    scheduling: Stub, patients: Patients
) -> None:
    first = (await future_slots(scheduling, opens=(9, 0), length=30)).slot
    second = (await future_slots(scheduling, opens=(9, 15), length=30)).slot
    patient = await active_patient(patients)
    held = await book(scheduling, patient, first)
    await precondition(book(scheduling, patient, second), "PATIENT_DOUBLE_BOOKED")

    await _cancel(scheduling, held.name)
    moved = await book(scheduling, patient, second)

    assert moved.status == pb.APPOINTMENT_STATUS_BOOKED
    assert [a.status for a in await _patient_appointments(scheduling, patient)] == [
        pb.APPOINTMENT_STATUS_CANCELLED,
        pb.APPOINTMENT_STATUS_BOOKED,
    ]


async def test_an_arrived_appointment_still_blocks_an_overlapping_booking(
    scheduling: Stub, patients: Patients
) -> None:
    first = (await future_slots(scheduling, opens=(10, 0), length=60)).slot
    second = (await future_slots(scheduling, opens=(10, 30), length=15)).slot
    patient = await active_patient(patients)
    held = await book(scheduling, patient, first)
    await scheduling.CheckInAppointment(pb.CheckInAppointmentRequest(name=held.name))

    await precondition(book(scheduling, patient, second), "PATIENT_DOUBLE_BOOKED")


async def test_a_fulfilled_appointment_does_not_block_an_overlapping_booking(
    scheduling: Stub, patients: Patients
) -> None:
    first = (await future_slots(scheduling, opens=(10, 0), length=60)).slot
    second = (await future_slots(scheduling, opens=(10, 30), length=15)).slot
    patient = await active_patient(patients)
    held = await book(scheduling, patient, first)
    await scheduling.CheckInAppointment(pb.CheckInAppointmentRequest(name=held.name))
    await scheduling.CompleteAppointment(pb.CompleteAppointmentRequest(name=held.name))

    assert (await book(scheduling, patient, second)).status == pb.APPOINTMENT_STATUS_BOOKED


async def test_a_patient_cannot_take_two_places_of_one_slot(
    scheduling: Stub, patients: Patients
) -> None:
    slot = (await future_slots(scheduling, capacity=2)).slot
    patient = await active_patient(patients)
    await book(scheduling, patient, slot)

    await precondition(book(scheduling, patient, slot), "PATIENT_DOUBLE_BOOKED")

    assert (await get_slot(scheduling, slot.name)).booked_count == 1


async def test_back_to_back_appointments_do_not_overlap(
    scheduling: Stub, patients: Patients
) -> None:
    made = await future_slots(scheduling, count=2)
    patient = await active_patient(patients)

    first = await book(scheduling, patient, made.slots[0])
    second = await book(scheduling, patient, made.slots[1])

    assert first.end_time == second.start_time
    assert await _patient_appointments(scheduling, patient) == [first, second]


async def test_other_patients_overlapping_bookings_do_not_interfere(
    scheduling: Stub, patients: Patients
) -> None:
    first = (await future_slots(scheduling, opens=(9, 0), length=30, day=tomorrow())).slot
    second = (await future_slots(scheduling, opens=(9, 0), length=30, day=tomorrow())).slot

    await book(scheduling, await active_patient(patients), first)
    appointment = await book(scheduling, await active_patient(patients), second)

    assert appointment.status == pb.APPOINTMENT_STATUS_BOOKED


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient", "slot", "key", "fields"),
    [
        ("", None, "", ["patient"]),
        ("patients/123", None, "", ["patient"]),
        (f"staff/{uuid.uuid4()}", None, "", ["patient"]),
        (None, "", "", ["slot"]),
        (None, "slots/abc", "", ["slot"]),
        (None, f"schedules/{uuid.uuid4()}", "", ["slot"]),
        (None, None, "k" * 65, ["request_id"]),
        ("", "", "", ["patient", "slot"]),
    ],
    ids=[
        "no patient",
        "patient id not a uuid",
        "not a patient",
        "no slot",
        "slot id not a uuid",
        "not a slot",
        "long request id",
        "nothing",
    ],
)
async def test_a_bad_booking_request_is_invalid(
    scheduling: Stub,
    patients: Patients,
    patient: str | None,
    slot: str | None,
    key: str,
    fields: list[str],
) -> None:
    made = (await future_slots(scheduling)).slot
    request = pb.BookAppointmentRequest(
        patient=await active_patient(patients) if patient is None else patient,
        slot=made.name if slot is None else slot,
        request_id=key,
    )

    assert await invalid(scheduling.BookAppointment(request)) == fields
    assert (await get_slot(scheduling, made.name)).booked_count == 0


# --- GetAppointment ----------------------------------------------------------------------------


async def test_getting_a_missing_appointment_is_not_found(scheduling: Stub) -> None:
    await not_found(
        scheduling.GetAppointment(pb.GetAppointmentRequest(name=missing("appointments")))
    )


@pytest.mark.parametrize(
    "name", ["", "appointments/", "appointments/7", f"slots/{uuid.uuid4()}", "appointments/a/b"]
)
async def test_get_appointment_with_a_malformed_name_is_invalid(
    scheduling: Stub, name: str
) -> None:
    failure = await invalid(scheduling.GetAppointment(pb.GetAppointmentRequest(name=name)))

    assert failure == ["name"]
