"""Charges from the events of the services that render care (DeliverEvents).

Each event is applied once (his.runtime.inbox, in the delivery's transaction) and yields at most
one charge: scheduling's check-in a consultation fee, orders' completed laboratory order the test,
pharmacy's handed-over dispense the drug. A per-source record keeps the highest revision applied,
so an older event delivered late changes nothing; a reversal (an order revoked or entered in
error, a dispense cancelled) aborts the charge or, once billed, credits it. Billing keeps only the
code of what was rendered, never a reason, diagnosis, note or result.
"""

from __future__ import annotations

import decimal
import uuid
from functools import partial
from typing import Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from his.billing import store
from his.billing.validation import MAX_CODE, MAX_DISPLAY, MAX_UNIT
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.inbox import Consumes, consuming
from his.runtime.validation import Violations, reference
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb

SCHEDULING = "scheduling"
ORDERS = "orders"
PHARMACY = "pharmacy"
# A medication is billed by its formulary id (the pharmacy's `medications/{id}`).
MEDICATION_SYSTEM = "urn:his:medication"
# Whole dispense units: the event does not name the unit, the formulary does.
DISPENSE_UNIT = "{dispense_unit}"
ONE = "1"


def _code(v: Violations, field: str, system: str, code: str, display: str) -> dict[str, Any]:
    return {
        "code_system": v.text(f"{field}.system", system, max_len=MAX_CODE, required=True),
        "code": v.text(f"{field}.code", code, max_len=MAX_CODE, required=True),
        "code_display": display.strip()[:MAX_DISPLAY],
    }


def _charge(
    v: Violations,
    event: EventEnvelope,
    currency: str,
    *,
    source: str,
    quantity: int,
    unit: str,
    **values: Any,
) -> dict[str, Any]:
    values.update(
        source=source,
        quantity_value=decimal.Decimal(quantity),
        quantity_unit=unit[:MAX_UNIT],
        currency=currency,
        source_event=uuid.UUID(event.event_id),
    )
    v.raise_if_any()
    return values


async def _checked_in(
    currency: str, session: AsyncSession, event: EventEnvelope, payload: Message
) -> None:
    assert isinstance(payload, scheduling_pb.AppointmentCheckedIn)
    appointment = payload.appointment
    v = Violations()
    field = "appointment"
    appointment_id = v.resource_id(f"{field}.name", appointment.name, collection="appointments")
    if not appointment.HasField("arrive_time"):
        v.add(f"{field}.arrive_time", "is required")
    values = _charge(
        v,
        event,
        currency,
        source=f"appointments/{appointment_id}",
        quantity=1,
        unit=ONE,
        patient_id=v.resource_id(f"{field}.patient", appointment.patient, collection="patients"),
        encounter_id=None,
        department_id=reference(v, f"{field}.department", appointment.department, "departments"),
        occurrence_time=v.instant(f"{field}.arrive_time", appointment.arrive_time),
        **_code(
            v,
            f"{field}.service_type",
            appointment.service_type.system,
            appointment.service_type.code,
            appointment.service_type.display,
        ),
    )
    # A check-in happens once; a second event of it (another id) charges nothing more.
    if await store.newer_source(session, values["source"], 1, "arrived"):
        await store.charge_from_event(session, values)


_SR = orders_pb.ServiceRequestStatus
_REVERSED_ORDER = (_SR.SERVICE_REQUEST_STATUS_REVOKED, _SR.SERVICE_REQUEST_STATUS_ENTERED_IN_ERROR)


async def _order_changed(
    currency: str, session: AsyncSession, event: EventEnvelope, payload: Message
) -> None:
    assert isinstance(payload, orders_pb.ServiceRequestChanged)
    order = payload.service_request
    v = Violations()
    field = "service_request"
    order_id = v.resource_id(f"{field}.name", order.name, collection="serviceRequests")
    source = f"serviceRequests/{order_id}"
    if payload.revision < 1:
        v.add("revision", "must be 1 or more")
    completed = order.status == _SR.SERVICE_REQUEST_STATUS_COMPLETED
    if completed:
        if not order.HasField("update_time"):
            v.add(f"{field}.update_time", "is required")
        values = _charge(
            v,
            event,
            currency,
            source=source,
            quantity=1,
            unit=ONE,
            patient_id=v.resource_id(f"{field}.patient", order.patient, collection="patients"),
            encounter_id=reference(v, f"{field}.encounter", order.encounter, "encounters"),
            department_id=reference(v, f"{field}.performer", order.performer, "departments"),
            occurrence_time=v.instant(f"{field}.update_time", order.update_time),
            **_code(v, f"{field}.code", order.code.system, order.code.code, order.code.display),
        )
    v.raise_if_any()
    status = _SR.Name(order.status) if order.status in _SR.values() else "UNKNOWN"
    if not await store.newer_source(session, source, payload.revision, status):
        return
    if completed:
        await store.charge_from_event(session, values)
    elif order.status in _REVERSED_ORDER:
        why = "the order was revoked" if order.status == _REVERSED_ORDER[0] else "entered in error"
        await store.reverse_source(session, source, why, uuid.UUID(event.event_id))


_DS = pharmacy_pb.MedicationDispenseStatus


async def _dispense_changed(
    currency: str, session: AsyncSession, event: EventEnvelope, payload: Message
) -> None:
    assert isinstance(payload, pharmacy_pb.MedicationDispenseChanged)
    dispense = payload.medication_dispense
    v = Violations()
    field = "medication_dispense"
    dispense_id = v.resource_id(f"{field}.name", dispense.name, collection="medicationDispenses")
    source = f"medicationDispenses/{dispense_id}"
    if payload.revision < 1:
        v.add("revision", "must be 1 or more")
    completed = dispense.status == _DS.MEDICATION_DISPENSE_STATUS_COMPLETED
    if completed:
        medication_id = v.resource_id(
            f"{field}.medication", dispense.medication, collection="medications"
        )
        if not 1 <= dispense.quantity <= 1_000_000:
            v.add(f"{field}.quantity", "must be 1 to 1000000")
        if not dispense.HasField("handed_over_time"):
            v.add(f"{field}.handed_over_time", "is required")
        values = _charge(
            v,
            event,
            currency,
            source=source,
            quantity=dispense.quantity,
            unit=DISPENSE_UNIT,
            patient_id=v.resource_id(f"{field}.patient", dispense.patient, collection="patients"),
            encounter_id=reference(v, f"{field}.encounter", dispense.encounter, "encounters"),
            department_id=reference(v, f"{field}.location", dispense.location, "departments"),
            occurrence_time=v.instant(f"{field}.handed_over_time", dispense.handed_over_time),
            code_system=MEDICATION_SYSTEM,
            code=str(medication_id),
            code_display="",
        )
    v.raise_if_any()
    status = _DS.Name(dispense.status) if dispense.status in _DS.values() else "UNKNOWN"
    if not await store.newer_source(session, source, payload.revision, status):
        return
    if completed:
        await store.charge_from_event(session, values)
    elif dispense.status == _DS.MEDICATION_DISPENSE_STATUS_CANCELLED:
        await store.reverse_source(
            session, source, "the dispense was cancelled", uuid.UUID(event.event_id)
        )


def consumes(currency: str) -> dict[str, Consumes]:
    """The events billing takes, charging in the billing `currency`."""
    return consuming(
        Consumes(SCHEDULING, scheduling_pb.AppointmentCheckedIn, partial(_checked_in, currency)),
        Consumes(ORDERS, orders_pb.ServiceRequestChanged, partial(_order_changed, currency)),
        Consumes(
            PHARMACY, pharmacy_pb.MedicationDispenseChanged, partial(_dispense_changed, currency)
        ),
    )
