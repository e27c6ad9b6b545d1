"""Report issued → order completed: the DiagnosticReportIssued event and its delivery to orders.

FinalizeReport and AmendReport store the event in lab's outbox in the same transaction as the
change; the relay delivers it to the orders service afterwards, at least once and possibly out of
order (OrdersService.DeliverEvents applies each event once by its id, and keeps the newest
revision), so an orders service that is down when a report is issued learns of it when it is back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime.outbox import Outgoing, envelope
from his.runtime.relay import Deliver
from his_client import HisClients

# The outbox destination of issued reports: the orders service.
ORDERS = "orders"
# One delivery call may take this long (a batch is applied one event per transaction).
TIMEOUT_S = 10.0


def issued(report: pb.DiagnosticReport, revision: int) -> Outgoing:
    """The event of a report that has just been finalized or amended."""
    event = pb.DiagnosticReportIssued(diagnostic_report=report, revision=revision)
    return Outgoing(
        ORDERS, envelope(event, source="lab", subject=report.name, patient=report.patient)
    )


def orders_delivery(clients: HisClients) -> Deliver:
    """The relay's way to orders: the whole batch in one DeliverEvents call."""

    async def deliver(batch: Sequence[EventEnvelope]) -> None:
        await clients.orders.DeliverEvents(
            orders_pb.DeliverEventsRequest(events=batch), timeout=TIMEOUT_S
        )

    return deliver


def deliverers(clients: HisClients) -> Mapping[str, Deliver]:
    """Lab's outbox destinations besides audit."""
    return {ORDERS: orders_delivery(clients)}
