"""Scheduling's copy of patient states: a booking asks its own database, not the patient service.

The patient service stores a `PatientStateChanged` event (state, survivor, record version) with
every change of a record's state and its relay delivers it here (DeliverEvents, applied once by
event id, his.runtime.inbox); the copy keeps the highest version. BookAppointment reads the copy;
a patient it has no copy of yet (registered a moment ago, or before the events existed) is asked
of the patient service once, and that answer, carrying the record's version too, fills the copy.

What the copy costs: a state change reaches it after the relay's delivery delay (tens of
milliseconds when both services are up), so a booking made inside that window sees the previous
state. A booking changes nothing that a merge cannot move afterwards, which is why this service
may take that window and the hop out of every booking; while the patient service is down,
patients with a copy can still be booked.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.database import Database
from his.runtime.enums import EnumText
from his.runtime.inbox import Consumes, consuming
from his.runtime.validation import Violations, reference
from his.scheduling.tables import SCHEMA
from his_client import HisClients
from his_client.patient import require_existing, require_state

# The service whose events feed the copy.
PATIENT = "patient"
STATE = EnumText(patient_pb.PatientState.DESCRIPTOR)

_TABLE = f'"{SCHEMA}".patient_states'
# Newest version wins, whatever order the events (or a fallback answer) arrive in.
_UPSERT = text(
    f"INSERT INTO {_TABLE} (patient_id, state, merged_into, revision) "  # noqa: S608
    "VALUES (:patient_id, :state, :merged_into, :revision) "
    "ON CONFLICT (patient_id) DO UPDATE SET state = excluded.state, "
    "merged_into = excluded.merged_into, revision = excluded.revision, "
    f"update_time = now() WHERE {_TABLE}.revision < excluded.revision"
)
_FIND = f"SELECT state, merged_into FROM {_TABLE} WHERE patient_id = $1"  # noqa: S608


def _values(event: patient_pb.PatientStateChanged) -> tuple[object, ...]:
    v = Violations()
    patient_id = v.resource_id("patient", event.patient, collection="patients")
    if event.state not in (
        patient_pb.PATIENT_STATE_ACTIVE,
        patient_pb.PATIENT_STATE_INACTIVE,
        patient_pb.PATIENT_STATE_MERGED,
    ):
        v.add("state", "must be ACTIVE, INACTIVE or MERGED")
    if event.revision < 1:
        v.add("revision", "must be at least 1")
    merged_into = reference(v, "merged_into", event.merged_into, "patients")
    v.raise_if_any()
    return patient_id, STATE.text(event.state), merged_into, event.revision


async def _store(session: AsyncSession, values: tuple[object, ...]) -> None:
    patient_id, state, merged_into, revision = values
    await session.execute(
        _UPSERT,
        {
            "patient_id": patient_id,
            "state": state,
            "merged_into": merged_into,
            "revision": revision,
        },
    )


async def _apply(session: AsyncSession, _: EventEnvelope, payload: Message) -> None:
    assert isinstance(payload, patient_pb.PatientStateChanged)
    await _store(session, _values(payload))


CONSUMES: Mapping[str, Consumes] = consuming(
    Consumes(PATIENT, patient_pb.PatientStateChanged, _apply),
)


async def require_bookable(
    database: Database, clients: HisClients, patient_id: uuid.UUID, name: str
) -> None:
    """FAILED_PRECONDITION unless the patient exists and is active, as `require_active` says,
    from the copy when there is one; else from the patient service, whose answer fills the copy."""
    async with database.driver() as connection:
        record = await connection.fetchrow(_FIND, patient_id)
    when_merged = "book the surviving record"
    if record is not None:
        survivor = record["merged_into"]
        require_state(
            STATE.number(record["state"]),
            f"patients/{survivor}" if survivor else "",
            when_merged=when_merged,
        )
        return
    patient = await require_existing(clients, name)
    if patient.etag.isdigit():
        # The etag is the record's version: the same order the events carry.
        answer = patient_pb.PatientStateChanged(
            patient=name,
            state=patient.state,
            merged_into=patient.merged_into,
            revision=int(patient.etag),
        )
        async with database.transaction() as session:
            await _store(session, _values(answer))
    require_state(patient.state, patient.merged_into, when_merged=when_merged)
