"""Report issued → order completed: the DiagnosticReportIssued event and its delivery to orders.

FinalizeReport and AmendReport store the event in lab's outbox in the same transaction as the
change; the relay delivers it to the orders service afterwards, at least once and possibly out of
order (OrdersService.DeliverEvents applies each event once by its id, and keeps the newest
revision), so an orders service that is down when a report is issued learns of it when it is back.
"""

from __future__ import annotations

from collections.abc import Mapping

from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime.inbox import delivery
from his.runtime.outbox import Outgoing, envelope
from his.runtime.relay import Deliver
from his_client import HisClients

# The outbox destination of issued reports: the orders service.
ORDERS = "orders"


def issued(report: pb.DiagnosticReport, revision: int) -> Outgoing:
    """The event of a report that has just been finalized or amended."""
    event = pb.DiagnosticReportIssued(diagnostic_report=report, revision=revision)
    return Outgoing(
        ORDERS, envelope(event, source="lab", subject=report.name, patient=report.patient)
    )


def deliverers(clients: HisClients) -> Mapping[str, Deliver]:
    """Lab's outbox destinations besides audit."""
    return {ORDERS: delivery(lambda: clients.orders, orders_pb.DeliverEventsRequest)}
