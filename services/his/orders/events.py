"""The lab's and the pharmacy's events applied to orders (DeliverEvents), and orders' own
Changed events delivered to them, and to billing (the relay's deliverers).

Applying happens inside his.runtime.inbox's transaction for the event, so a repeated delivery
changes nothing; a dispense is kept at its highest revision, so deliveries out of order change
nothing either. Every change of an order made here bumps its revision and stores its Changed
event with it, as an rpc's change does, and is audited as the fulfilling service's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from his.billing.v1 import billing_service_pb2 as billing_pb
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.lab.v1 import lab_service_pb2 as lab_pb
from his.orders import store
from his.orders.mapping import (
    BILLING,
    LAB,
    PHARMACY,
    medication_request_changed,
    medication_request_name,
    service_request_changed,
    service_request_name,
)
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.access import ALLOWED, Access, Permit
from his.runtime.inbox import Consumes, consuming, delivery
from his.runtime.outbox import Outbox, Outgoing
from his.runtime.relay import Deliver
from his.runtime.validation import Violations
from his_client import HisClients

_DISPENSE_STATUS = {
    pharmacy_pb.MEDICATION_DISPENSE_STATUS_IN_PROGRESS: "in_progress",
    pharmacy_pb.MEDICATION_DISPENSE_STATUS_COMPLETED: "completed",
    pharmacy_pb.MEDICATION_DISPENSE_STATUS_CANCELLED: "cancelled",
}


def _ids(v: Violations, pairs: Sequence[tuple[str, str, str]]) -> list[uuid.UUID]:
    found = [v.resource_id(field, name, collection=collection) for field, name, collection in pairs]
    v.raise_if_any()
    return [ident for ident in found if ident is not None]


def consumes(access: Access, outbox: Outbox) -> Mapping[str, Consumes]:
    """What DeliverEvents takes: the lab's reports and the pharmacy's dispenses."""

    async def changed(
        session: AsyncSession, outgoing: Sequence[Outgoing], row: Any, name: str
    ) -> None:
        # One event, however many receivers: its type names the resource audited.
        await outbox.add_in(session, outgoing)
        await access.record(
            "update",
            Permit(ALLOWED),
            patient=f"patients/{row.patient_id}",
            resource_name=name,
            resource_type=outgoing[0].envelope.event_type.removesuffix("Changed"),
        )

    async def report_issued(session: AsyncSession, _: EventEnvelope, payload: Message) -> None:
        assert isinstance(payload, lab_pb.DiagnosticReportIssued)
        report = payload.diagnostic_report
        order_id, report_id = _ids(
            Violations(),
            [
                (
                    "diagnostic_report.service_request",
                    report.service_request,
                    "serviceRequests",
                ),
                ("diagnostic_report.name", report.name, "diagnosticReports"),
            ],
        )
        row = await store.complete_by_report(session, order_id, report_id)
        if row is not None:
            await changed(session, service_request_changed(row), row, service_request_name(row.id))

    async def dispense_changed(session: AsyncSession, _: EventEnvelope, payload: Message) -> None:
        assert isinstance(payload, pharmacy_pb.MedicationDispenseChanged)
        dispense = payload.medication_dispense
        v = Violations()
        status = _DISPENSE_STATUS.get(dispense.status)
        if status is None:
            v.add("medication_dispense.status", "must be a known dispense status")
        if dispense.quantity < 0:
            v.add("medication_dispense.quantity", "must not be negative")
        if payload.revision < 1:
            v.add("revision", "must be at least 1")
        dispense_id, order_id = _ids(
            v,
            [
                ("medication_dispense.name", dispense.name, "medicationDispenses"),
                (
                    "medication_dispense.medication_request",
                    dispense.medication_request,
                    "medicationRequests",
                ),
            ],
        )
        assert status is not None
        kept = await store.record_dispense(
            session,
            dispense_id=dispense_id,
            order_id=order_id,
            quantity=dispense.quantity,
            status=status,
            revision=payload.revision,
        )
        row = await store.recount(session, order_id) if kept else None
        if row is not None:
            name = medication_request_name(row.id)
            await changed(session, medication_request_changed(row), row, name)

    return consuming(
        Consumes(LAB, lab_pb.DiagnosticReportIssued, report_issued),
        Consumes(PHARMACY, pharmacy_pb.MedicationDispenseChanged, dispense_changed),
    )


def deliverers(clients: HisClients) -> Mapping[str, Deliver]:
    """Orders' outbox destinations besides audit: each batch in one DeliverEvents call."""
    return {
        LAB: delivery(lambda: clients.lab, lab_pb.DeliverEventsRequest),
        PHARMACY: delivery(lambda: clients.pharmacy, pharmacy_pb.DeliverEventsRequest),
        BILLING: delivery(lambda: clients.billing, billing_pb.DeliverEventsRequest),
    }
