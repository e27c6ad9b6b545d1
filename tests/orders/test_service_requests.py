"""Lab orders: placing, reading, listing, and the status changes of their life."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.orders.v1 import orders_service_pb2 as pb
from tests.orders.helpers import (
    GLUCOSE,
    Emr,
    Hospital,
    Orders,
    Patients,
    lab_order,
    place_lab_order,
    request_id,
    visit,
)


async def _changed_events(db: AsyncEngine, name: str) -> list[int]:
    """Revisions of the ServiceRequestChanged events for the lab in orders' outbox, in order."""
    async with db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT envelope FROM orders.outbox WHERE destination = 'lab' "
                "AND event_type = 'his.orders.v1.ServiceRequestChanged' ORDER BY id"
            )
        )
        envelopes = [row[0] for row in rows]
    from his.events.v1.event_envelope_pb2 import EventEnvelope  # noqa: PLC0415

    revisions = []
    for raw in envelopes:
        event = pb.ServiceRequestChanged()
        EventEnvelope.FromString(raw).payload.Unpack(event)
        if event.service_request.name == name:
            revisions.append(event.revision)
    return revisions


async def test_a_doctor_orders_a_test_and_the_lab_is_told(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    made = await place_lab_order(orders, hospital, at, note="fasting sample")
    assert made.name.startswith("serviceRequests/")
    assert made.status == pb.SERVICE_REQUEST_STATUS_ACTIVE
    assert made.requester == hospital.doctor.name
    assert made.performer == hospital.lab
    assert made.code == GLUCOSE
    assert made.etag == "1"
    got = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert got == made
    assert await _changed_events(orders_db, made.name) == [1]
