"""Scheduling's copy of patient states: fed by the patient service's events, read by bookings.

Each event is applied once, the newest record version wins, only the patient service delivers,
and a patient with no copy yet is asked of the patient service, whose answer fills the copy.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.outbox import envelope
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.identity import ISSUER, metadata
from tests.scheduling.helpers import (
    DOMAIN,
    Copied,
    Patients,
    Stub,
    active_patient,
    book,
    future_slots,
    get_slot,
    precondition,
)
from tests.support import fails, invalid_in

PATIENT_RELAY = metadata(ISSUER.service("patient"))


def changed(patient: str, state: int, revision: int, merged_into: str = "") -> EventEnvelope:
    """The envelope the patient outbox holds for this version of the record."""
    event = patient_pb.PatientStateChanged(
        patient=patient,
        state=state,  # type: ignore[arg-type]
        merged_into=merged_into,
        revision=revision,
    )
    return envelope(event, source="patient", subject=patient, patient=patient)


async def deliver(scheduling: Stub, *events: EventEnvelope) -> pb.DeliverEventsResponse:
    """DeliverEvents as the patient service's relay."""
    return await scheduling.DeliverEvents(
        pb.DeliverEventsRequest(events=list(events)), metadata=PATIENT_RELAY
    )


async def copy_of(scheduling_db: AsyncEngine, patient: str) -> Any:
    """The copy's row of `patient`, or None."""
    async with scheduling_db.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT state, merged_into, revision FROM scheduling.patient_states "
                "WHERE patient_id = :id"
            ),
            {"id": patient.split("/")[1]},
        )
        return result.first()


async def test_the_patient_services_changes_reach_the_copy_with_the_records_version(
    patients: Patients, states_copied: Copied, scheduling_db: AsyncEngine
) -> None:
    patient = await active_patient(patients)
    await states_copied()
    assert tuple(await copy_of(scheduling_db, patient)) == ("active", None, 1)

    await patients.DeactivatePatient(patient_pb.DeactivatePatientRequest(name=patient))
    await states_copied()
    assert tuple(await copy_of(scheduling_db, patient)) == ("inactive", None, 2)


async def test_a_booking_reads_the_copy_not_the_patient_service(
    scheduling: Stub, patients: Patients, states_copied: Copied
) -> None:
    slot = (await future_slots(scheduling)).slot
    survivor = await active_patient(patients)
    patient = await active_patient(patients)
    await states_copied()
    # Only the copy says merged (the record is active): the booking follows the copy.
    await deliver(scheduling, changed(patient, patient_pb.PATIENT_STATE_MERGED, 5, survivor))

    failure = await precondition(book(scheduling, patient, slot), "PATIENT_MERGED")

    assert failure.metadata == {"merged_into": survivor}
    assert (await get_slot(scheduling, slot.name)).booked_count == 0


async def test_a_repeated_delivery_changes_nothing(scheduling: Stub) -> None:
    event = changed(f"patients/{uuid.uuid4()}", patient_pb.PATIENT_STATE_ACTIVE, 1)
    assert (await deliver(scheduling, event)).applied == 1
    again = await deliver(scheduling, event, event)
    assert (again.applied, again.duplicates) == (0, 2)


async def test_an_older_version_arriving_late_changes_nothing(
    scheduling: Stub, scheduling_db: AsyncEngine
) -> None:
    patient = f"patients/{uuid.uuid4()}"
    reply = await deliver(
        scheduling,
        changed(patient, patient_pb.PATIENT_STATE_INACTIVE, 3),
        changed(patient, patient_pb.PATIENT_STATE_ACTIVE, 2),
    )
    assert (reply.applied, reply.duplicates) == (2, 0)
    assert tuple(await copy_of(scheduling_db, patient)) == ("inactive", None, 3)


async def test_a_patient_without_a_copy_is_asked_for_and_the_answer_is_kept(
    scheduling: Stub, patients: Patients, states_copied: Copied, scheduling_db: AsyncEngine
) -> None:
    slot = (await future_slots(scheduling)).slot
    patient = await active_patient(patients)
    await patients.DeactivatePatient(patient_pb.DeactivatePatientRequest(name=patient))
    await states_copied()
    # As for a patient registered before the copy existed.
    async with scheduling_db.begin() as connection:
        await connection.execute(
            text("DELETE FROM scheduling.patient_states WHERE patient_id = :id"),
            {"id": patient.split("/")[1]},
        )

    await precondition(book(scheduling, patient, slot), "PATIENT_INACTIVE")

    assert tuple(await copy_of(scheduling_db, patient)) == ("inactive", None, 2)


async def test_only_the_patient_service_delivers(scheduling: Stub) -> None:
    event = changed(f"patients/{uuid.uuid4()}", patient_pb.PATIENT_STATE_ACTIVE, 1)
    for token in (ISSUER.service("emr"), ISSUER.staff("REGISTRAR"), ISSUER.staff("ADMINISTRATOR")):
        failure = await fails(
            scheduling.DeliverEvents(
                pb.DeliverEventsRequest(events=[event]), metadata=metadata(token)
            )
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("patient", "state", "revision", "merged_into", "field"),
    [
        ("people/1", patient_pb.PATIENT_STATE_ACTIVE, 1, "", "patient"),
        ("", patient_pb.PATIENT_STATE_ACTIVE, 1, "", "patient"),
        (None, patient_pb.PATIENT_STATE_UNSPECIFIED, 1, "", "state"),
        (None, 42, 1, "", "state"),
        (None, patient_pb.PATIENT_STATE_ACTIVE, 0, "", "revision"),
        (None, patient_pb.PATIENT_STATE_MERGED, 1, "patients/not-a-uuid", "merged_into"),
    ],
)
async def test_a_state_that_makes_no_sense_is_refused_and_named(
    scheduling: Stub,
    patient: str | None,
    state: int,
    revision: int,
    merged_into: str,
    field: str,
) -> None:
    good = changed(f"patients/{uuid.uuid4()}", patient_pb.PATIENT_STATE_ACTIVE, 1)
    who = f"patients/{uuid.uuid4()}" if patient is None else patient
    bad = changed(who, state, revision, merged_into)
    fields = await invalid_in(DOMAIN, deliver(scheduling, good, bad))
    assert f"events[1].payload.{field}" in fields
    # The event before the refused one stays applied; the refused one is not recorded.
    assert (await deliver(scheduling, good)).duplicates == 1


async def test_envelopes_that_are_not_patient_states_are_named(scheduling: Stub) -> None:
    good = changed(f"patients/{uuid.uuid4()}", patient_pb.PATIENT_STATE_ACTIVE, 1)
    wrong_source = EventEnvelope()
    wrong_source.CopyFrom(good)
    wrong_source.source = "iam"
    other_type = EventEnvelope()
    other_type.CopyFrom(good)
    other_type.event_type = "his.scheduling.v1.AppointmentCheckedIn"
    cases = [
        ([], "events"),
        ([good] * 501, "events"),
        ([wrong_source], "events[0].source"),
        ([other_type], "events[0].event_type"),
    ]
    for events, field in cases:
        fields = await invalid_in(DOMAIN, deliver(scheduling, *events))
        assert field in fields
