"""Nothing remote under a lock: a booking holds its slot's row lock only for its own statements.

The audit event of a booking is written into scheduling's own outbox inside the transaction; the
audit service hears of it afterwards. So a slow audit service cannot slow bookings, and while a
booking waits inside its transaction no call leaves scheduling at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.audit.service import AuditService
from his.audit.spec import SPEC as AUDIT
from his.runtime.database import async_url
from his.runtime.server import RunningService, ServiceSpec, start
from his.scheduling.spec import SPEC as SCHEDULING
from his.scheduling.v1 import scheduling_service_pb2 as pb
from his.scheduling.v1 import scheduling_service_pb2_grpc as pb_grpc
from tests.conftest import addresses, service_config
from tests.identity import REGISTRAR, channel_as
from tests.scheduling.helpers import Patients, active_patient, future_slots
from tests.support import blocked_on_a_lock, delivered, fresh_database

AUDIT_DELAY_S = 2.0


class _SlowAuditService(AuditService):
    """An audit service that takes two seconds to store anything."""

    async def WriteAuditEvents(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(AUDIT_DELAY_S)
        return await super().WriteAuditEvents(request, context)


def _slow_audit_spec() -> ServiceSpec:
    return dataclasses.replace(AUDIT, make_servicer=_SlowAuditService)


@pytest.fixture(scope="module")
async def slow_hospital(
    postgres: Any,
    database_url: str,
    patient_service: RunningService,
    iam_service: RunningService,
) -> AsyncIterator[tuple[RunningService, RunningService]]:
    """A slow audit service, and a scheduling service auditing through it (asking the
    session's patient and iam)."""
    audit_url = await fresh_database(postgres.url, "his_slow_audit", "audit")
    audit = await start(_slow_audit_spec(), service_config("audit"), audit_url)
    scheduling = await start(
        SCHEDULING,
        service_config("scheduling", **addresses(audit, patient_service, iam_service)),
        database_url,
    )
    yield audit, scheduling
    await scheduling.stop(grace_s=0)
    await audit.stop(grace_s=0)


def _started(running: RunningService) -> float:
    """Calls a server has begun, over all its methods."""
    total = 0.0
    for metric in running.metrics.started.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    return total


async def test_a_slow_audit_service_does_not_slow_bookings(
    slow_hospital: tuple[RunningService, RunningService], patients: Patients
) -> None:
    audit, scheduling = slow_hospital
    async with channel_as(scheduling.address, REGISTRAR) as channel:
        stub = pb_grpc.SchedulingServiceStub(channel)
        made = await future_slots(stub, capacity=5)
        who = [await active_patient(patients) for _ in range(5)]
        started = time.monotonic()
        booked = await asyncio.gather(
            *(
                stub.BookAppointment(pb.BookAppointmentRequest(patient=p, slot=made.slot.name))
                for p in who
            )
        )
        took = time.monotonic() - started
    assert len({b.name for b in booked}) == 5
    # Five bookings of one slot serialise on its row lock: had any of them waited for the audit
    # service inside its transaction, they would have taken five times its delay.
    assert took < AUDIT_DELAY_S, f"5 bookings took {took:.2f} s with a {AUDIT_DELAY_S} s audit"
    # ...and their events still reach the (slow) audit service.
    assert scheduling.relay is not None
    await scheduling.relay.drain(30)
    assert _started(audit) > 0


async def test_no_call_leaves_scheduling_while_a_booking_waits_inside_its_transaction(
    database_url: str,
    scheduling_service: RunningService,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    patients: Patients,
) -> None:
    async with channel_as(scheduling_service.address, REGISTRAR) as channel:
        stub = pb_grpc.SchedulingServiceStub(channel)
        made = await future_slots(stub)
        patient = await active_patient(patients)
        slot_id = made.slot.name.split("/")[1]
        engine = create_async_engine(async_url(database_url), poolclass=NullPool)
        upstreams = (patient_service, audit_service, iam_service)
        try:
            async with engine.connect() as holder:
                await holder.execute(
                    text("SELECT 1 FROM scheduling.slots WHERE id = :id FOR UPDATE"),
                    {"id": slot_id},
                )
                booking = asyncio.ensure_future(
                    stub.BookAppointment(
                        pb.BookAppointmentRequest(patient=patient, slot=made.slot.name),
                        timeout=30,
                    )
                )
                await blocked_on_a_lock(database_url, "his-scheduling")
                # What other services still owe the audit service (patient's event of the read
                # the booking asked for before its transaction) goes first: only scheduling's
                # own calls are counted below.
                await delivered()
                before = [_started(u) for u in upstreams]
                await asyncio.sleep(0.5)
                # Inside its transaction, waiting for the slot: not one call to anyone.
                assert [_started(u) for u in upstreams] == before
                await holder.rollback()
            appointment = await booking
        finally:
            await engine.dispose()
    assert appointment.slot == made.slot.name
