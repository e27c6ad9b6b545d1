"""What billing learns of lab orders: the ServiceRequestChanged events it acts on (completed,
revoked, entered in error), the same events the lab gets, and ListServiceRequests(complete_period),
the completed orders billing reconciles its laboratory charges with."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.common.v1 import types_pb2
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.orders.v1 import orders_service_pb2 as pb
from tests.orders.events import LAB, report_issued
from tests.orders.helpers import (
    DOMAIN,
    Emr,
    Hospital,
    Orders,
    Patients,
    changed_revisions,
    place_lab_order,
    visit,
)
from tests.support import invalid_in

CHANGED = "his.orders.v1.ServiceRequestChanged"
COMPLETED = pb.SERVICE_REQUEST_STATUS_COMPLETED


def _stamp(instant: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def _period(start: dt.datetime | None, end: dt.datetime | None) -> types_pb2.Period:
    return types_pb2.Period(
        start_time=_stamp(start) if start else None, end_time=_stamp(end) if end else None
    )


async def _envelopes(db: AsyncEngine, name: str) -> dict[str, list[EventEnvelope]]:
    """The ServiceRequestChanged envelopes of one order in orders' outbox, by destination."""
    async with db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT destination, envelope FROM orders.outbox WHERE event_type = :type "
                "ORDER BY id"
            ),
            {"type": CHANGED},
        )
        found: dict[str, list[EventEnvelope]] = {}
        for destination, raw in rows:
            item = EventEnvelope.FromString(raw)
            if item.subject == name:
                found.setdefault(destination, []).append(item)
    return found


@pytest.mark.usefixtures("orders_outbox_held")
async def test_billing_is_told_of_a_revocation_and_an_error_not_of_placing_or_holding(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    made = await place_lab_order(orders, hospital, await visit(patients, emr, hospital))
    await orders.HoldServiceRequest(
        pb.HoldServiceRequestRequest(name=made.name, reason="not fasting"), metadata=md
    )
    await orders.ResumeServiceRequest(pb.ResumeServiceRequestRequest(name=made.name), metadata=md)
    await orders.RevokeServiceRequest(
        pb.RevokeServiceRequestRequest(name=made.name, reason="ordered twice"), metadata=md
    )
    await orders.MarkServiceRequestEnteredInError(
        pb.MarkServiceRequestEnteredInErrorRequest(name=made.name, reason="wrong patient"),
        metadata=md,
    )
    assert await changed_revisions(orders_db, CHANGED, made.name) == [1, 2, 3, 4, 5]
    assert await changed_revisions(orders_db, CHANGED, made.name, "billing") == [4, 5]
    sent = await _envelopes(orders_db, made.name)
    # The same events, ids and all: each receiver deduplicates by the one id.
    assert sent["billing"] == sent["lab"][3:]


@pytest.mark.usefixtures("orders_outbox_held")
async def test_a_completed_order_is_told_to_billing_with_its_completion_time(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    by_report = await place_lab_order(orders, hospital, at)
    by_call = await place_lab_order(orders, hospital, at)
    # Completed by the lab's report event (DeliverEvents), and by the lab calling as itself.
    await orders.DeliverEvents(
        pb.DeliverEventsRequest(events=[report_issued(by_report.name)]), metadata=LAB
    )
    called = await orders.CompleteServiceRequest(
        pb.CompleteServiceRequestRequest(name=by_call.name), metadata=LAB
    )
    assert called.status == COMPLETED
    assert called.complete_time == called.update_time
    for order in (by_report, by_call):
        sent = await _envelopes(orders_db, order.name)
        assert [e.event_id for e in sent["billing"]] == [sent["lab"][1].event_id]
        event = pb.ServiceRequestChanged()
        assert sent["billing"][0].payload.Unpack(event)
        assert (event.revision, event.service_request.status) == (2, COMPLETED)
        assert event.service_request.HasField("complete_time")
        assert event.service_request.complete_time == event.service_request.update_time
        # Placed, it had none.
        assert not order.HasField("complete_time")


async def test_the_orders_completed_in_a_period_are_listed(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    at = await visit(patients, emr, hospital)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    done = await place_lab_order(orders, hospital, at)
    open_one = await place_lab_order(orders, hospital, at)
    await orders.CompleteServiceRequest(
        pb.CompleteServiceRequestRequest(name=done.name), metadata=LAB
    )
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    def listing(period: types_pb2.Period, **kw: object) -> pb.ListServiceRequestsRequest:
        return pb.ListServiceRequestsRequest(complete_period=period, **kw)  # type: ignore[arg-type]

    mine = await orders.ListServiceRequests(
        listing(_period(start, end), patient=at.patient), metadata=md
    )
    assert [o.name for o in mine.service_requests] == [done.name]
    assert mine.service_requests[0].HasField("complete_time")
    # Open-ended periods, and the whole hospital's (what billing asks: no patient).
    since = await orders.ListServiceRequests(listing(_period(start, None)), metadata=md)
    assert done.name in [o.name for o in since.service_requests]
    assert open_one.name not in [o.name for o in since.service_requests]
    assert all(o.status == COMPLETED for o in since.service_requests)
    until = await orders.ListServiceRequests(
        listing(_period(None, start), patient=at.patient), metadata=md
    )
    assert list(until.service_requests) == []
    later = await orders.ListServiceRequests(
        listing(_period(end, None), patient=at.patient), metadata=md
    )
    assert list(later.service_requests) == []
    # Statuses still apply: completed orders are not "active".
    active = await orders.ListServiceRequests(
        listing(
            _period(start, end), patient=at.patient, statuses=[pb.SERVICE_REQUEST_STATUS_ACTIVE]
        ),
        metadata=md,
    )
    assert list(active.service_requests) == []


async def test_a_backwards_complete_period_is_invalid(orders: Orders, hospital: Hospital) -> None:
    assert hospital.doctor is not None
    now = dt.datetime.now(dt.UTC)
    request = pb.ListServiceRequestsRequest(complete_period=_period(now, now))
    assert await invalid_in(
        DOMAIN, orders.ListServiceRequests(request, metadata=hospital.doctor.md)
    ) == ["complete_period.end_time"]
