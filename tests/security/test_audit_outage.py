"""An audit outage is not a patient-care outage, and the trail still misses nothing.

Every read and write is audited in its service's own database (the outbox) before it answers;
with the audit service down, care goes on and the events wait; when it is back, the relays deliver
every event of the window, each chained once. The test runs its own audit server (on a fixed
port, over a database of its own, so it can be stopped, restarted and tampered with) and its own
patient and scheduling servers over a database of their own (so no other relay takes their
events to another audit service).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.audit.spec import SPEC as AUDIT
from his.audit.tables import events as events_table
from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.patient.spec import SPEC as PATIENT
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.patient.v1 import patient_service_pb2_grpc as patient_grpc
from his.runtime.audit_trail import AUDIT as AUDIT_DESTINATION
from his.runtime.config import ServiceConfig
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING
from his.runtime.server import RunningService, start
from his.scheduling.spec import SPEC as SCHEDULING
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his.scheduling.v1 import scheduling_service_pb2_grpc as scheduling_grpc
from tests.conftest import addresses, service_config
from tests.identity import REGISTRAR, channel_as
from tests.patient.helpers import make_patient, unique_phone
from tests.scheduling.helpers import active_patient, future_slots
from tests.security.helpers import AUDITOR, Audit, Patients, Scheduling
from tests.support import free_port, fresh_database, wait_for_health

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_DATABASE = "his_security_audit"
_OWN_DATABASE = "his_security_audited"


async def _audit_database(postgres: EmbeddedPostgres) -> str:
    """A new database in the session's PostgreSQL with only the audit schema, migrated."""
    return await fresh_database(postgres.url, _DATABASE, "audit")


@dataclass
class Servers:
    """This module's audit server (stoppable) and the patient server that audits through it."""

    audit_url: str
    audit_config: ServiceConfig
    audit: RunningService | None
    patient: RunningService
    scheduling: RunningService
    audit_db: AsyncEngine
    own_db: AsyncEngine

    async def stop_audit(self) -> None:
        """An audit outage (no grace: a crash, not a rollout)."""
        assert self.audit is not None
        await self.audit.stop(grace_s=0)
        self.audit = None

    async def start_audit(self) -> None:
        """The audit service back on the same port."""
        if self.audit is None:
            self.audit = await start(AUDIT, self.audit_config, self.audit_url)

    async def patients_named(self, family_name: str) -> int:
        """Rows of the patient table with this family name, counted behind the service's back."""
        async with self.own_db.connect() as connection:
            query = text("SELECT count(*) FROM patient.patients WHERE family_name = :f")
            return int((await connection.execute(query, {"f": family_name})).scalar_one())

    async def waiting(self, service: str) -> int:
        """Audit events in a service's outbox, not yet delivered."""
        async with self.own_db.connect() as connection:
            query = text(f"SELECT count(*) FROM {service}.outbox WHERE destination = :audit")
            return int((await connection.execute(query, {"audit": AUDIT_DESTINATION})).scalar_one())

    async def delivered(self) -> None:
        """Until the patient and scheduling relays delivered everything to the audit service."""
        for running in (self.patient, self.scheduling):
            assert running.relay is not None
            await running.relay.drain(30, (AUDIT_DESTINATION,))


@pytest.fixture(scope="module")
async def servers(
    postgres: EmbeddedPostgres,
    database_url: str,
    patient_service: RunningService,
    iam_service: RunningService,
) -> AsyncIterator[Servers]:
    """An audit server on a fixed free port, and patient and scheduling servers auditing through
    it (scheduling asks the session's patient and iam services)."""
    audit_url = await _audit_database(postgres)
    own_url = await fresh_database(postgres.url, _OWN_DATABASE, "patient", "scheduling")
    port = free_port()
    audit_config = service_config("audit", HIS_PORT=str(port))
    audit = await start(AUDIT, audit_config, audit_url)
    config = service_config("patient", HIS_AUDIT_ADDR=f"localhost:{port}")
    # A short breaker reset, so the test sees recovery within a second of the audit's return.
    clients = dataclasses.replace(config.clients, breaker_reset_s=0.5)
    patient = await start(PATIENT, dataclasses.replace(config, clients=clients), own_url)
    config = service_config(
        "scheduling",
        HIS_AUDIT_ADDR=f"localhost:{port}",
        **addresses(patient_service, iam_service),
    )
    clients = dataclasses.replace(config.clients, breaker_reset_s=0.5)
    scheduling = await start(SCHEDULING, dataclasses.replace(config, clients=clients), own_url)
    running = Servers(
        audit_url,
        audit_config,
        audit,
        patient,
        scheduling,
        create_async_engine(async_url(audit_url), poolclass=NullPool),
        create_async_engine(async_url(own_url), poolclass=NullPool),
    )
    try:
        yield running
    finally:
        await running.scheduling.stop(grace_s=0)
        await running.patient.stop(grace_s=0)
        if running.audit is not None:
            await running.audit.stop(grace_s=0)
        await running.audit_db.dispose()
        await running.own_db.dispose()


@pytest.fixture(scope="module")
async def own_patients(servers: Servers) -> AsyncIterator[Patients]:
    """This module's patient server as the session's registrar calls it."""
    async with channel_as(servers.patient.address, REGISTRAR) as channel:
        yield patient_grpc.PatientServiceStub(channel)


@pytest.fixture(scope="module")
async def own_scheduling(servers: Servers) -> AsyncIterator[Scheduling]:
    """This module's scheduling server as the session's registrar calls it."""
    async with channel_as(servers.scheduling.address, REGISTRAR) as channel:
        yield scheduling_grpc.SchedulingServiceStub(channel)


@pytest.fixture(scope="module")
async def own_auditor(servers: Servers) -> AsyncIterator[Audit]:
    """This module's audit server as an auditor calls it (it reconnects after a restart)."""
    address = f"localhost:{servers.audit_config.server.port}"
    async with channel_as(address, AUDITOR) as channel:
        yield audit_grpc.AuditServiceStub(channel)


async def _trail(auditor: Audit, patient: str) -> list[audit_pb.AuditEvent]:
    reply = await auditor.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(patient=patient, page_size=500)
    )
    return list(reply.audit_events)


def _once_each(trail: list[audit_pb.AuditEvent]) -> None:
    assert len({e.event_id for e in trail}) == len(trail)
    assert len({e.sequence_number for e in trail}) == len(trail)


async def test_patient_records_are_served_through_an_audit_outage_and_every_access_is_chained_after(
    servers: Servers, own_patients: Patients, own_auditor: Audit
) -> None:
    await servers.start_audit()
    registered = await own_patients.CreatePatient(
        patient_pb.CreatePatientRequest(patient=make_patient())
    )
    get = patient_pb.GetPatientRequest(name=registered.name)
    assert (await own_patients.GetPatient(get)).family_name == registered.family_name
    await servers.delivered()
    newcomer = make_patient()
    phone = unique_phone()
    update = patient_pb.UpdatePatientRequest(
        patient=patient_pb.Patient(name=registered.name, phone=phone),
        update_mask=FieldMask(paths=["phone"]),
    )

    await servers.stop_audit()
    try:
        assert (await own_patients.GetPatient(get)).name == registered.name
        listed = await own_patients.ListPatients(
            patient_pb.ListPatientsRequest(name_prefix=registered.family_name)
        )
        assert [p.name for p in listed.patients] == [registered.name]
        await own_patients.CreatePatient(patient_pb.CreatePatientRequest(patient=newcomer))
        assert (await own_patients.UpdatePatient(update)).phone == phone
        # Each access is on record in patient's own database, waiting for the audit service.
        assert await servers.waiting("patient") >= 4
        # ...and the patient service stays in rotation: a receiver's outage is not its own.
        await wait_for_health(servers.patient.address, PATIENT.grpc_service, SERVING, timeout_s=1)
    finally:
        await servers.start_audit()

    await servers.delivered()
    assert await servers.waiting("patient") == 0
    assert await servers.patients_named(newcomer.family_name) == 1
    trail = await _trail(own_auditor, registered.name)
    actions = [e.action for e in trail]
    # One clean-clone CI run chained the first two the other way round: `delivered()` drained
    # the relay beside its own pass, and two claims went out side by side. A relay now makes one
    # pass at a time per destination (test_audit_trail's in-order test).
    assert actions == [
        audit_pb.AUDIT_EVENT_ACTION_CREATE,
        audit_pb.AUDIT_EVENT_ACTION_READ,
        audit_pb.AUDIT_EVENT_ACTION_READ,
        audit_pb.AUDIT_EVENT_ACTION_READ,
        audit_pb.AUDIT_EVENT_ACTION_UPDATE,
    ]
    _once_each(trail)
    assert (await own_auditor.VerifyChain(audit_pb.VerifyChainRequest())).intact


async def test_appointments_are_read_and_booked_through_an_audit_outage_and_chained_after(
    servers: Servers, own_scheduling: Scheduling, patients: Patients, own_auditor: Audit
) -> None:
    await servers.start_audit()
    slots = (await future_slots(own_scheduling, count=2)).slots
    patient = await active_patient(patients)
    booked = await own_scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=patient, slot=slots[0].name)
    )
    get = pb.GetAppointmentRequest(name=booked.name)
    book = pb.BookAppointmentRequest(patient=patient, slot=slots[1].name)
    await servers.delivered()

    await servers.stop_audit()
    try:
        assert (await own_scheduling.GetAppointment(get)) == booked
        listed = await own_scheduling.ListAppointments(pb.ListAppointmentsRequest(patient=patient))
        assert booked.name in [a.name for a in listed.appointments]
        second = await own_scheduling.BookAppointment(book)
        slot = await own_scheduling.GetSlot(pb.GetSlotRequest(name=slots[1].name))
        assert slot.booked_count == 1
        assert await servers.waiting("scheduling") >= 3
    finally:
        await servers.start_audit()

    await servers.delivered()
    trail = await _trail(own_auditor, patient)
    names = [e.entity.resource_name for e in trail]
    assert names.count(second.name) == 1
    assert names.count(booked.name) >= 3  # booked, read, listed
    _once_each(trail)
    assert (await own_auditor.VerifyChain(audit_pb.VerifyChainRequest())).intact


async def _row(engine: AsyncEngine, sequence_number: int) -> dict[str, Any]:
    """Every column of one stored event, to put it back after tampering."""
    async with engine.connect() as connection:
        query = text("SELECT * FROM audit.events WHERE sequence_number = :n")
        row = (await connection.execute(query, {"n": sequence_number})).one()
    return dict(row._mapping)


async def _behind_the_service(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """A change as a database superuser could make it, round the append-only triggers."""
    async with engine.connect() as connection, connection.begin():
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await connection.execute(text(sql), params)


async def _put_back(engine: AsyncEngine, row: dict[str, Any]) -> None:
    """The event exactly as it was stored."""
    async with engine.connect() as connection, connection.begin():
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await connection.execute(
            text("DELETE FROM audit.events WHERE sequence_number = :n"),
            {"n": row["sequence_number"]},
        )
        await connection.execute(insert(events_table).values(**row))


async def test_verify_chain_names_an_altered_and_a_missing_event_of_real_patient_reads(
    servers: Servers, own_patients: Patients, own_auditor: Audit
) -> None:
    await servers.start_audit()
    registered = await own_patients.CreatePatient(
        patient_pb.CreatePatientRequest(patient=make_patient())
    )
    for _ in range(3):
        await own_patients.GetPatient(patient_pb.GetPatientRequest(name=registered.name))
    await servers.delivered()
    trail = (
        await own_auditor.ListAuditEvents(audit_pb.ListAuditEventsRequest(patient=registered.name))
    ).audit_events
    assert len(trail) == 4
    assert (await own_auditor.VerifyChain(audit_pb.VerifyChainRequest())).intact
    altered, deleted = trail[3].sequence_number, trail[1].sequence_number
    altered_row, deleted_row = (
        await _row(servers.audit_db, altered),
        await _row(servers.audit_db, deleted),
    )

    await _behind_the_service(
        servers.audit_db,
        "UPDATE audit.events SET agent_staff = :s WHERE sequence_number = :n",
        s="staff/00000000-0000-0000-0000-000000000000",
        n=altered,
    )
    try:
        reply = await own_auditor.VerifyChain(audit_pb.VerifyChainRequest())
        assert not reply.intact
        assert (reply.first_break.sequence_number, reply.first_break.reason) == (
            altered,
            audit_pb.CHAIN_BREAK_REASON_ALTERED,
        )

        await _behind_the_service(
            servers.audit_db, "DELETE FROM audit.events WHERE sequence_number = :n", n=deleted
        )
        reply = await own_auditor.VerifyChain(audit_pb.VerifyChainRequest())
        assert not reply.intact
        assert (reply.first_break.sequence_number, reply.first_break.reason) == (
            deleted,
            audit_pb.CHAIN_BREAK_REASON_MISSING,
        )
    finally:
        await _put_back(servers.audit_db, altered_row)
        await _put_back(servers.audit_db, deleted_row)
    assert (await own_auditor.VerifyChain(audit_pb.VerifyChainRequest())).intact
