"""The pharmacy's side of the order loop: prescriptions in, dispenses out.

In: orders' relay delivers `MedicationRequestChanged` through DeliverEvents; each one is applied
once (his.runtime.inbox) to the pharmacy's copy of the prescription, newest revision winning.
Out: every change of a dispense stores `MedicationDispenseChanged` in the pharmacy's outbox in the
same transaction; the relay delivers them to OrdersService.DeliverEvents, which applies each once,
and the hand-overs and cancellations to BillingService.DeliverEvents too (the same event, one id),
which charges a handed-over drug once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from his.billing.v1 import billing_service_pb2 as billing_pb
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy import store
from his.pharmacy.mapping import dispense_to_proto
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.pharmacy.validation import prescription
from his.runtime.inbox import Consumes, consuming, delivery
from his.runtime.outbox import Outgoing, envelope
from his.runtime.relay import Deliver
from his_client import HisClients

SOURCE = "pharmacy"
# The outbox destination of dispense changes, and the one service pharmacy takes events from.
ORDERS = "orders"
# Billing charges the drug of a handed-over dispense (protos/his/billing/v1, the service comment).
BILLING = "billing"
# The dispense statuses billing acts on: a prepared dispense is not yet rendered (it may still be
# cancelled, its drug back on the shelf), so billing hears of the hand-over and the cancellation
# only, not of each preparation (an inbox row and a transaction of billing's for nothing).
BILLED_STATUSES = frozenset(
    {pb.MEDICATION_DISPENSE_STATUS_COMPLETED, pb.MEDICATION_DISPENSE_STATUS_CANCELLED}
)


def dispense_changed(row: Any) -> list[Outgoing]:
    """The event of a dispense (row, with its prescription's remaining quantity) just changed,
    for orders, and for billing too when billing acts on the new status: one envelope, so both
    deduplicate by one event id."""
    dispense = dispense_to_proto(row)
    event = envelope(
        pb.MedicationDispenseChanged(medication_dispense=dispense, revision=row.revision),
        source=SOURCE,
        subject=dispense.name,
        patient=dispense.patient,
    )
    outgoing = [Outgoing(ORDERS, event)]
    if dispense.status in BILLED_STATUSES:
        outgoing.append(Outgoing(BILLING, event))
    return outgoing


async def _apply_prescription(session: AsyncSession, _: EventEnvelope, payload: Message) -> None:
    assert isinstance(payload, orders_pb.MedicationRequestChanged)
    values = prescription(payload.medication_request)
    await store.apply_prescription(session, {**values, "revision": payload.revision})


CONSUMES = consuming(
    Consumes(ORDERS, orders_pb.MedicationRequestChanged, _apply_prescription),
)


def deliverers(clients: HisClients) -> Mapping[str, Deliver]:
    """Pharmacy's outbox destinations besides audit."""
    return {
        ORDERS: delivery(lambda: clients.orders, orders_pb.DeliverEventsRequest),
        BILLING: delivery(lambda: clients.billing, billing_pb.DeliverEventsRequest),
    }
