"""A patient service outage: patients scheduling holds a copy of are still booked; the others
fail fast as UNAVAILABLE, reads go on, recovery is automatic.

The test runs its own patient server on a fixed port and its own scheduling server pointed at it
(with a small circuit breaker), so it can stop and restart the patient service without disturbing
the session's servers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.patient.spec import SPEC as PATIENT
from his.runtime.config import ServiceConfig
from his.runtime.health import SERVING, probe
from his.runtime.server import RunningService, start
from his.scheduling.spec import SPEC as SCHEDULING
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his.scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from tests.conftest import addresses, service_config
from tests.identity import registrar_channel
from tests.scheduling.helpers import (
    DOMAIN,
    Copied,
    Patients,
    Stub,
    active_patient,
    book,
    future_slots,
    get_appointment,
    request_id,
)
from tests.support import failure_of, free_port

BREAKER_FAIL_MAX = 2
BREAKER_RESET_S = 2.0
# The SDK's deadline for a call to the patient service when the caller gives none.
DEFAULT_DEADLINE_S = 5.0


@dataclasses.dataclass
class Servers:
    """This test's own patient and scheduling servers."""

    database_url: str
    patient_config: ServiceConfig
    patient: RunningService | None
    scheduling: RunningService

    async def stop_patient(self) -> None:
        """Take the patient service down (no grace: an outage, not a rollout)."""
        assert self.patient is not None
        await self.patient.stop(grace_s=0)
        self.patient = None

    async def restart_patient(self) -> None:
        """Bring the patient service back on the same port."""
        assert self.patient is None
        self.patient = await start(PATIENT, self.patient_config, self.database_url)

    def breaker(self, sample: str) -> float:
        """A sample of the scheduling server's client metrics for the patient upstream."""
        value = self.scheduling.metrics.registry.get_sample_value(sample, {"upstream": "patient"})
        return 0.0 if value is None else value


@pytest.fixture
async def servers(database_url: str, audit_service: RunningService) -> AsyncIterator[Servers]:
    """A patient server on a fixed free port and a scheduling server calling it."""
    port = free_port()
    patient_config = service_config("patient", HIS_PORT=str(port), **addresses(audit_service))
    patient = await start(PATIENT, patient_config, database_url)
    config = service_config("scheduling", **addresses(audit_service))
    clients = dataclasses.replace(
        config.clients,
        addresses={**config.clients.addresses, "patient": f"localhost:{port}"},
        breaker_fail_max=BREAKER_FAIL_MAX,
        breaker_reset_s=BREAKER_RESET_S,
    )
    assert clients.default_timeout_s == DEFAULT_DEADLINE_S
    scheduling = await start(SCHEDULING, dataclasses.replace(config, clients=clients), database_url)
    running = Servers(database_url, patient_config, patient, scheduling)
    try:
        yield running
    finally:
        await running.scheduling.stop(grace_s=0)
        if running.patient is not None:
            await running.patient.stop(grace_s=0)


@pytest.fixture
async def stub(servers: Servers) -> AsyncIterator[Stub]:
    """A stub of this test's scheduling server."""
    async with registrar_channel(servers.scheduling.address) as channel:
        yield pb_grpc.SchedulingServiceStub(channel)


async def _unavailable(call: Awaitable[pb.Appointment]) -> str:
    """Await a booking that must fail as the patient dependency being unavailable; its message."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        failure = failure_of(error)
    else:
        raise AssertionError(f"expected UNAVAILABLE, the booking returned {reply!r}")
    assert failure.code == grpc.StatusCode.UNAVAILABLE, failure
    assert (failure.reason, failure.domain) == ("DEPENDENCY_UNAVAILABLE", DOMAIN)
    assert failure.metadata["dependency"] == "patient"
    return failure.message


async def _uncopied(patients: Patients, states_copied: Copied, scheduling_db: AsyncEngine) -> str:
    """A registered patient scheduling has no copy of (as one registered before the copy
    existed): booking them asks the patient service."""
    patient = await active_patient(patients)
    await states_copied()
    async with scheduling_db.begin() as connection:
        await connection.execute(
            text("DELETE FROM scheduling.patient_states WHERE patient_id = :id"),
            {"id": patient.split("/")[1]},
        )
    return patient


async def test_a_patient_with_a_copy_is_booked_during_a_patient_outage(
    servers: Servers, stub: Stub, patients: Patients, states_copied: Copied
) -> None:
    patient = await active_patient(patients)
    await states_copied()
    slot = (await future_slots(stub, count=1, capacity=5)).slot

    await servers.stop_patient()

    # The patient service is down, so only scheduling's copy of patient states can have said
    # the patient is active.
    booked = await book(stub, patient, slot)
    assert booked.status == pb.APPOINTMENT_STATUS_BOOKED


async def test_bookings_fail_fast_during_a_patient_outage_and_recover_without_restart(
    servers: Servers,
    stub: Stub,
    patients: Patients,
    states_copied: Copied,
    scheduling_db: AsyncEngine,
) -> None:
    patient = await _uncopied(patients, states_copied, scheduling_db)
    # The first booking asks the patient service and keeps its answer in the copy.
    known = await _uncopied(patients, states_copied, scheduling_db)
    slots = (await future_slots(stub, count=4, capacity=5)).slots
    before = await book(stub, known, slots[0])
    assert before.status == pb.APPOINTMENT_STATUS_BOOKED
    assert servers.breaker("his_client_breaker_state") == 0  # closed

    await servers.stop_patient()

    assert (await book(stub, known, slots[3])).status == pb.APPOINTMENT_STATUS_BOOKED

    # The outage is reported as the dependency being unavailable, never INTERNAL.
    message = await _unavailable(book(stub, patient, slots[1]))
    assert "dependency patient is unavailable" in message
    # Failed attempts open the breaker (bounded: a few bookings at most).
    for _ in range(5):
        if servers.breaker("his_client_breaker_state") == 2:
            break
        await _unavailable(book(stub, patient, slots[1]))
    assert servers.breaker("his_client_breaker_state") == 2  # open

    rejected = servers.breaker("his_client_breaker_rejections_total")
    started = time.monotonic()
    message = await _unavailable(book(stub, patient, slots[1]))
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"an open breaker must fail fast, took {elapsed:.2f} s"
    assert elapsed < DEFAULT_DEADLINE_S / 5
    assert "circuit open" in message
    assert servers.breaker("his_client_breaker_rejections_total") == rejected + 1

    # Reads need no patient service.
    assert await get_appointment(stub, before.name) == before
    listed = await stub.ListAppointments(pb.ListAppointmentsRequest(patient=known))
    assert [a.slot for a in listed.appointments] == [slots[0].name, slots[3].name]
    slot = await stub.GetSlot(pb.GetSlotRequest(name=slots[1].name))
    assert slot.booked_count == 0
    # A dependency outage is not the scheduling service's failure: it keeps serving.
    async with registrar_channel(servers.scheduling.address) as channel:
        assert await probe(channel, "") == SERVING
        assert await probe(channel, "his.scheduling.v1.SchedulingService") == SERVING

    await servers.restart_patient()

    key = request_id()
    attempts = 0
    give_up = time.monotonic() + 15.0
    while True:
        attempts += 1
        try:
            after = await book(stub, patient, slots[1], request_id=key)
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, failure_of(error)
            assert time.monotonic() < give_up, "bookings did not recover within 15 s"
            await asyncio.sleep(0.2)

    assert (after.patient, after.slot, after.status) == (
        patient,
        slots[1].name,
        pb.APPOINTMENT_STATUS_BOOKED,
    )
    assert servers.breaker("his_client_breaker_state") == 0  # closed again
    assert (await book(stub, patient, slots[2])).status == pb.APPOINTMENT_STATUS_BOOKED
    listed = await stub.ListAppointments(pb.ListAppointmentsRequest(patient=patient))
    assert [a.slot for a in listed.appointments] == [s.name for s in slots[1:3]]
