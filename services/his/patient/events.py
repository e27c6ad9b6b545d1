"""The patient service's domain events: a record's state, for the scheduling service's copy.

Every change of a record's state (registration, deactivation, reactivation, merge, unmerge)
stores a `PatientStateChanged` in the patient outbox in the same transaction; the relay delivers
it to SchedulingService.DeliverEvents, which keeps the newest version per patient and books from
it (his.scheduling.patient_states). The event carries no demographics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from his.patient.mapping import STATE
from his.patient.v1 import patient_service_pb2 as pb
from his.runtime.inbox import delivery
from his.runtime.outbox import Outgoing, envelope
from his.runtime.relay import Deliver
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from his_client import HisClients

SOURCE = "patient"
# The outbox destination of state changes: the scheduling service.
SCHEDULING = "scheduling"


def state_changed(row: Any) -> Outgoing:
    """The event of a patient record (row) whose state was just set."""
    name = f"patients/{row.id}"
    event = pb.PatientStateChanged(
        patient=name,
        state=STATE.number(row.state),  # type: ignore[arg-type]
        merged_into=f"patients/{row.merged_into}" if row.merged_into else "",
        revision=row.version,
    )
    return Outgoing(SCHEDULING, envelope(event, source=SOURCE, subject=name, patient=name))


def deliverers(clients: HisClients) -> Mapping[str, Deliver]:
    """The patient service's outbox destinations besides audit."""
    return {SCHEDULING: delivery(lambda: clients.scheduling, scheduling_pb.DeliverEventsRequest)}
