"""The lab's and the pharmacy's events as their relays deliver them to orders."""

from __future__ import annotations

import uuid

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.lab.v1 import lab_service_pb2 as lab_pb
from his.orders.v1 import orders_service_pb2 as pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.outbox import envelope
from tests.identity import ISSUER, metadata

LAB = metadata(ISSUER.service("lab"))
PHARMACY = metadata(ISSUER.service("pharmacy"))


def report_issued(order: str, report: str = "", *, revision: int = 1) -> EventEnvelope:
    """The lab's DiagnosticReportIssued for `order` (a new report unless named)."""
    issued = lab_pb.DiagnosticReportIssued(
        diagnostic_report=lab_pb.DiagnosticReport(
            name=report or f"diagnosticReports/{uuid.uuid4()}",
            service_request=order,
            status=lab_pb.DIAGNOSTIC_REPORT_STATUS_FINAL,
        ),
        revision=revision,
    )
    return envelope(issued, source="lab")


def dispense_changed(
    order: str,
    dispense: str,
    quantity: int,
    status: pharmacy_pb.MedicationDispenseStatus.ValueType,
    revision: int,
) -> EventEnvelope:
    """The pharmacy's MedicationDispenseChanged of one dispense at `revision`."""
    changed = pharmacy_pb.MedicationDispenseChanged(
        medication_dispense=pharmacy_pb.MedicationDispense(
            name=dispense, medication_request=order, quantity=quantity, status=status
        ),
        revision=revision,
    )
    return envelope(changed, source="pharmacy")


def deliver(*events: EventEnvelope) -> pb.DeliverEventsRequest:
    """One DeliverEvents call carrying `events`."""
    return pb.DeliverEventsRequest(events=list(events))


def new_dispense() -> str:
    """A dispense name."""
    return f"medicationDispenses/{uuid.uuid4()}"
