"""Rows of the orders schema as proto messages, and the events that carry them to other services."""

from __future__ import annotations

import uuid
from typing import Any

from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as pb
from his.runtime import wire
from his.runtime.enums import EnumText
from his.runtime.outbox import Outgoing, envelope

PRIORITY = EnumText(pb.RequestPriority.DESCRIPTOR)
SERVICE_REQUEST_STATUS = EnumText(pb.ServiceRequestStatus.DESCRIPTOR)
MEDICATION_REQUEST_STATUS = EnumText(pb.MedicationRequestStatus.DESCRIPTOR)

SOURCE = "orders"
# Outbox destinations of the Changed events: the services that fulfil the orders ...
LAB = "lab"
PHARMACY = "pharmacy"
# ... and billing, which charges a laboratory test when its order is completed and reverses the
# charge when it is revoked or entered in error (protos/his/billing/v1, the service comment).
BILLING = "billing"
# The service request statuses billing acts on. The other changes (placed, held, resumed) are of
# no concern to it: each one delivered would cost billing an inbox row and a transaction for
# nothing.
BILLED_STATUSES = frozenset(
    {
        pb.SERVICE_REQUEST_STATUS_COMPLETED,
        pb.SERVICE_REQUEST_STATUS_REVOKED,
        pb.SERVICE_REQUEST_STATUS_ENTERED_IN_ERROR,
    }
)


def service_request_name(ident: uuid.UUID) -> str:
    """`serviceRequests/{id}`."""
    return f"serviceRequests/{ident}"


def medication_request_name(ident: uuid.UUID) -> str:
    """`medicationRequests/{id}`."""
    return f"medicationRequests/{ident}"


def _coding(system: str | None, code: str | None, display: str | None) -> types_pb2.Coding | None:
    return wire.coding(system, code, display or "") if system and code else None


def service_request_to_proto(row: Any) -> pb.ServiceRequest:
    """An `orders.service_requests` row as a ServiceRequest."""
    return pb.ServiceRequest(
        name=service_request_name(row.id),
        patient=f"patients/{row.patient_id}",
        encounter=f"encounters/{row.encounter_id}",
        requester=f"staff/{row.requester_id}",
        code=wire.coding(row.code_system, row.code, row.code_display),
        priority=PRIORITY.number(row.priority),  # type: ignore[arg-type]
        status=SERVICE_REQUEST_STATUS.number(row.status),  # type: ignore[arg-type]
        reason=_coding(row.reason_system, row.reason_code, row.reason_display),
        note=row.note,
        revoke_reason=row.revoke_reason or "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        performer=f"departments/{row.performer_id}",
        etag=str(row.revision),
        status_reason=row.status_reason or "",
        report=f"diagnosticReports/{row.report_id}" if row.report_id else "",
        # A completed service request never changes again (store.completed_in): its last change
        # was its completion.
        complete_time=wire.timestamp(row.update_time) if row.status == "completed" else None,
    )


def total_quantity(row: Any) -> float:
    """What a prescription allows in all: dispense_quantity x (1 + refills)."""
    return float(row.dispense_value) * (1 + int(row.refills))


def remaining(row: Any) -> float:
    """What may still be dispensed: nothing once the prescription is over, else the total less
    what was dispensed, never below 0."""
    if row.status not in ("active", "on_hold"):
        return 0.0
    return max(0.0, total_quantity(row) - float(row.dispensed))


def medication_request_to_proto(row: Any) -> pb.MedicationRequest:
    """An `orders.medication_requests` row as a MedicationRequest."""
    unit = row.dispense_unit
    return pb.MedicationRequest(
        name=medication_request_name(row.id),
        patient=f"patients/{row.patient_id}",
        encounter=f"encounters/{row.encounter_id}",
        prescriber=f"staff/{row.prescriber_id}",
        medication=f"medications/{row.medication_id}",
        medication_code=wire.coding(row.atc_system, row.atc_code, row.atc_display),
        dosage=pb.Dosage(
            dose=types_pb2.Quantity(value=row.dose_value, unit=row.dose_unit),
            route=wire.coding(row.route_system, row.route_code, row.route_display),
            frequency_per_day=row.frequency_per_day,
            duration_days=row.duration_days,
            instructions=row.instructions,
        ),
        dispense_quantity=types_pb2.Quantity(value=row.dispense_value, unit=unit),
        refills=row.refills,
        unit_price=types_pb2.Money(currency_code=row.price_currency, amount_minor=row.price_minor),
        status=MEDICATION_REQUEST_STATUS.number(row.status),  # type: ignore[arg-type]
        cancel_reason=row.cancel_reason or "",
        create_time=wire.timestamp(row.create_time),
        update_time=wire.timestamp(row.update_time),
        etag=str(row.revision),
        dispensed_quantity=types_pb2.Quantity(value=row.dispensed, unit=unit),
        remaining_quantity=types_pb2.Quantity(value=remaining(row), unit=unit),
        status_reason=row.status_reason or "",
    )


def service_request_changed(row: Any) -> list[Outgoing]:
    """The event of a service request (row) that has just changed, for the lab, and for billing
    too when billing acts on the new status: one envelope, so both deduplicate by one event id."""
    message = service_request_to_proto(row)
    event = envelope(
        pb.ServiceRequestChanged(service_request=message, revision=row.revision),
        source=SOURCE,
        subject=message.name,
        patient=message.patient,
    )
    outgoing = [Outgoing(LAB, event)]
    if message.status in BILLED_STATUSES:
        outgoing.append(Outgoing(BILLING, event))
    return outgoing


def medication_request_changed(row: Any) -> list[Outgoing]:
    """The event of a medication request (row) that has just changed, for the pharmacy (billing
    charges the dispenses, which it hears of from the pharmacy)."""
    message = medication_request_to_proto(row)
    event = pb.MedicationRequestChanged(medication_request=message, revision=row.revision)
    return [
        Outgoing(
            PHARMACY,
            envelope(event, source=SOURCE, subject=message.name, patient=message.patient),
        )
    ]
