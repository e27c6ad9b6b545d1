"""Appointments → the patient service's care relationships: the AppointmentChanged event.

Every change of an appointment (booking, cancellation, check-in, no-show, completion) stores an
`AppointmentChanged` in scheduling's outbox in the same transaction; the relay delivers it to
PatientService.DeliverEvents, which keeps the newest revision per appointment as a care
relationship of the appointment's department and practitioner with its patient (his.patient.care),
the fact GetPatient decides a clinician's access from.
"""

from __future__ import annotations

from typing import Any

from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.inbox import delivery
from his.runtime.outbox import Outgoing, envelope
from his.runtime.relay import Deliver
from his.scheduling.mapping import appointment_to_proto
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his_client import HisClients

# The outbox destination of appointment changes: the patient service.
PATIENT = "patient"


def appointment_changed(row: Any, *, event_id: str | None = None) -> Outgoing:
    """The event of an appointment (row) right after a change (`event_id`: a given id instead
    of a fresh one, for the backfill of migration 0005)."""
    appointment = appointment_to_proto(row)
    event = envelope(
        pb.AppointmentChanged(appointment=appointment, revision=row.version),
        source="scheduling",
        event_id=event_id,
        subject=appointment.name,
        patient=appointment.patient,
        trace_id="" if event_id else None,
    )
    return Outgoing(PATIENT, event)


def patient_delivery(clients: HisClients) -> Deliver:
    """The relay's way to the patient service: each batch in one DeliverEvents call."""
    return delivery(lambda: clients.patient, patient_pb.DeliverEventsRequest)
