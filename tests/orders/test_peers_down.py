"""With the lab and the pharmacy away, doctors still order tests: the lab's events wait in the
outbox until it is back. A prescription needs the formulary, so it is refused, nothing stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.orders.spec import SPEC as ORDERS
from his.orders.v1 import orders_service_pb2 as pb
from his.orders.v1 import orders_service_pb2_grpc as pb_grpc
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, start
from tests.conftest import addresses, service_config
from tests.identity import channel_as
from tests.orders.helpers import Emr, Hospital, Orders, Patients, lab_order, prescription, visit
from tests.security.helpers import ADMINISTRATOR
from tests.support import fails, free_port, fresh_database


@pytest.fixture
async def alone(
    postgres: EmbeddedPostgres,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    emr_service: RunningService,
) -> AsyncIterator[tuple[Orders, AsyncEngine]]:
    """An orders service of its own database whose lab, pharmacy and billing ports have no
    listener."""
    url = await fresh_database(postgres.url, "orders_alone", "orders")
    config = service_config(
        "orders",
        **addresses(patient_service, audit_service, iam_service, emr_service),
        HIS_LAB_ADDR=f"localhost:{free_port()}",
        HIS_PHARMACY_ADDR=f"localhost:{free_port()}",
        HIS_BILLING_ADDR=f"localhost:{free_port()}",
    )
    running = await start(ORDERS, config, url)
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with channel_as(running.address, ADMINISTRATOR) as channel:
            yield pb_grpc.OrdersServiceStub(channel), engine
    finally:
        await engine.dispose()
        await running.stop(grace_s=1)


async def _outbox(engine: AsyncEngine, destination: str) -> list[tuple[str, int, bool]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT event_type, attempts, dead_at IS NOT NULL FROM orders.outbox "
                "WHERE destination = :destination ORDER BY id"
            ),
            {"destination": destination},
        )
        return [(row[0], int(row[1]), bool(row[2])) for row in rows]


async def test_orders_are_placed_while_the_lab_is_away_and_its_events_wait(
    alone: tuple[Orders, AsyncEngine],
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
) -> None:
    assert hospital.doctor is not None
    orders, engine = alone
    at = await visit(patients, emr, hospital)
    made = []
    for _ in range(3):
        made.append(
            await orders.CreateServiceRequest(
                pb.CreateServiceRequestRequest(service_request=lab_order(at, hospital.lab)),
                metadata=hospital.doctor.md,
            )
        )
    await orders.HoldServiceRequest(
        pb.HoldServiceRequestRequest(name=made[0].name, reason="not fasting"),
        metadata=hospital.doctor.md,
    )
    # The relay has made its passes (the audit events of these calls are delivered) and the lab's
    # events wait: retried with backoff while the lab is away, none given up.
    async with asyncio.timeout(20):
        while True:
            tried = all(attempts > 0 for _, attempts, _ in await _outbox(engine, "lab"))
            if tried and not await _outbox(engine, "audit"):
                break
            await asyncio.sleep(0.1)
    waiting = await _outbox(engine, "lab")
    assert len(waiting) == 4
    assert {event_type for event_type, _, _ in waiting} == {"his.orders.v1.ServiceRequestChanged"}
    assert not any(dead for _, _, dead in waiting)
    # Placing and holding are of no concern to billing (it charges completed tests).
    assert await _outbox(engine, "billing") == []


async def test_a_prescription_while_the_pharmacy_is_away_is_unavailable_and_nothing_is_stored(
    alone: tuple[Orders, AsyncEngine],
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
) -> None:
    assert hospital.doctor is not None
    orders, engine = alone
    at = await visit(patients, emr, hospital)
    unknown = f"medications/{'1' * 8}-1111-4111-8111-{'1' * 12}"
    request = pb.CreateMedicationRequestRequest(medication_request=prescription(at, unknown))
    failure = await fails(orders.CreateMedicationRequest(request, metadata=hospital.doctor.md))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
    )
    assert failure.metadata["dependency"] == "pharmacy"
    async with engine.connect() as connection:
        stored = await connection.execute(text("SELECT count(*) FROM orders.medication_requests"))
        assert stored.scalar() == 0
    assert await _outbox(engine, "pharmacy") == []
