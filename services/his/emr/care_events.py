"""Encounters → the patient service's care relationships: the EncounterChanged event.

Every change of an encounter (opening, update, start, finish, cancellation, entered in error)
stores an `EncounterChanged` in emr's outbox in the same transaction; the relay delivers it to
PatientService.DeliverEvents, which keeps the newest revision per encounter as a care relationship
of the encounter's department and attending practitioner with its patient (his.patient.care), the
fact GetPatient decides a clinician's access from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from his.emr.mapping import encounter_to_proto
from his.emr.v1 import emr_service_pb2 as pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.inbox import delivery
from his.runtime.outbox import Outgoing, envelope
from his.runtime.relay import Deliver
from his_client import HisClients

# The outbox destination of encounter changes: the patient service.
PATIENT = "patient"


def encounter_changed(row: Any, *, event_id: str | None = None) -> Outgoing:
    """The event of an encounter (row) right after a change (`event_id`: a given id instead of
    a fresh one, for the backfill of migration 0002)."""
    encounter = encounter_to_proto(row)
    event = envelope(
        pb.EncounterChanged(encounter=encounter, revision=row.version),
        source="emr",
        event_id=event_id,
        subject=encounter.name,
        patient=encounter.patient,
        trace_id="" if event_id else None,
    )
    return Outgoing(PATIENT, event)


def deliverers(clients: HisClients) -> Mapping[str, Deliver]:
    """The EMR's outbox destinations besides audit: the patient service, each batch in one
    DeliverEvents call."""
    return {PATIENT: delivery(lambda: clients.patient, patient_pb.DeliverEventsRequest)}
