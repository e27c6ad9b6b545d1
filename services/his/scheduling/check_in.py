"""Check-in → encounter and registration charge: the AppointmentCheckedIn event and its delivery
to the emr and billing services.

CheckInAppointment stores the event in scheduling's outbox in the same transaction as the status
change, one row per receiver with the same event id; the relay delivers each afterwards, at least
once. emr gets it as CreateEncounter with the event id as request id, so it opens exactly one
encounter per check-in however often it is delivered; billing gets it through
BillingService.DeliverEvents and records the registration charge once per event id. A receiver
that is down at check-in time catches up when it is back, without holding the other one up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from his.billing.v1 import billing_service_pb2 as billing_pb
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.runtime.inbox import delivery
from his.runtime.outbox import Outgoing, envelope
from his.runtime.relay import Deliver, Undeliverable
from his.scheduling.care_events import PATIENT, patient_delivery
from his.scheduling.mapping import appointment_to_proto
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his_client import HisClients, UpstreamError

# The outbox destinations of check-ins: the emr service (the encounter) and billing (the charge).
EMR = "emr"
BILLING = "billing"
# One delivery call may take this long (emr asks patient and iam before it opens the encounter).
TIMEOUT_S = 10.0
# Encounters opened at once per delivered batch.
CONCURRENCY = 16


def checked_in(row: Any) -> list[Outgoing]:
    """The event of an appointment (row) that has just become ARRIVED, once per receiver: one
    envelope, so emr and billing each deduplicate by the same event id."""
    appointment = appointment_to_proto(row)
    event = envelope(
        pb.AppointmentCheckedIn(appointment=appointment),
        source="scheduling",
        subject=appointment.name,
        patient=appointment.patient,
    )
    return [Outgoing(EMR, event), Outgoing(BILLING, event)]


def encounter_request(item: EventEnvelope) -> emr_pb.CreateEncounterRequest:
    """The CreateEncounter call a check-in event asks for (its event id is the request id)."""
    event = pb.AppointmentCheckedIn()
    if not item.payload.Unpack(event):
        raise Undeliverable(f"outbox event {item.event_id} is not an AppointmentCheckedIn")
    appointment = event.appointment
    return emr_pb.CreateEncounterRequest(
        encounter=emr_pb.Encounter(
            patient=appointment.patient,
            encounter_class=emr_pb.ENCOUNTER_CLASS_AMBULATORY,
            status=emr_pb.ENCOUNTER_STATUS_ARRIVED,
            department=appointment.department,
            attending_practitioner=appointment.practitioner,
            appointment=appointment.name,
        ),
        request_id=item.event_id,
    )


def emr_delivery(clients: HisClients) -> Deliver:
    """The relay's way to emr: one CreateEncounter per check-in, a few at a time. An encounter
    of the appointment that already exists (opened by hand) is the effect the event asked for."""

    async def deliver(envelopes: Sequence[EventEnvelope]) -> None:
        requests = [encounter_request(item) for item in envelopes]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def open_one(request: emr_pb.CreateEncounterRequest) -> None:
            async with gate:
                try:
                    await clients.emr.CreateEncounter(request, timeout=TIMEOUT_S)
                except UpstreamError as error:
                    if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                        raise

        await asyncio.gather(*(open_one(request) for request in requests))

    return deliver


def deliverers(clients: HisClients) -> Mapping[str, Deliver]:
    """Scheduling's outbox destinations besides audit (the patient service's: care_events.py)."""
    return {
        EMR: emr_delivery(clients),
        BILLING: delivery(lambda: clients.billing, billing_pb.DeliverEventsRequest),
        PATIENT: patient_delivery(clients),
    }
