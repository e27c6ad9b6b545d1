"""The billing records of the security matrix, made through the public API by a billing clerk: a
charge of the world's patient, an issued invoice of another charge, and a payment of it. Fresh
records serve the callers allowed to change one; the requests of the matrix's billing rows."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime.outbox import envelope
from tests.identity import ISSUER, metadata
from tests.security.helpers import World, missing

CLERK = metadata(ISSUER.staff("BILLING_CLERK"))


def _money(amount: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code="CNY", amount_minor=amount)


def charge_item(patient: str) -> pb.ChargeItem:
    """A manual charge of a code of its own."""
    return pb.ChargeItem(
        patient=patient,
        code=types_pb2.Coding(system="urn:test:matrix", code=uuid.uuid4().hex[:12]),
        quantity=types_pb2.Quantity(value=1, unit="1"),
        unit_price=_money(500),
    )


async def fresh_charge(world: World) -> str:
    made = await world.billing.CreateChargeItem(
        pb.CreateChargeItemRequest(charge_item=charge_item(world.patient)), metadata=CLERK
    )
    return str(made.name)


async def fresh_invoice(world: World, *, issue: bool) -> str:
    """A draft (or issued) invoice of a new charge of the world's patient."""
    draft = await world.billing.CreateInvoice(
        pb.CreateInvoiceRequest(
            invoice=pb.Invoice(patient=world.patient, charge_items=[await fresh_charge(world)])
        ),
        metadata=CLERK,
    )
    if not issue:
        return str(draft.name)
    issued = await world.billing.IssueInvoice(
        pb.IssueInvoiceRequest(name=draft.name), metadata=CLERK
    )
    return str(issued.name)


async def fresh_payment(world: World) -> str:
    """A cash payment of part of a new issued invoice."""
    paid = await world.billing.RecordPayment(
        pb.RecordPaymentRequest(
            parent=await fresh_invoice(world, issue=True),
            payment=pb.Payment(amount=_money(100), method=pb.PAYMENT_METHOD_CASH),
        ),
        metadata=CLERK,
    )
    return str(paid.name)


async def build(world: World, billing: Any) -> None:
    """Make the world's billing records."""
    world.billing = billing
    world.charge_item = await fresh_charge(world)
    world.invoice = await fresh_invoice(world, issue=True)
    world.payment = await fresh_payment(world)


def order_completed() -> pb.DeliverEventsRequest:
    """A completed lab order of an unknown patient: charged (PLANNED: its code has no price)."""
    done = Timestamp()
    done.FromDatetime(dt.datetime.now(dt.UTC))
    order = orders_pb.ServiceRequest(
        name=missing("serviceRequests"),
        patient=missing("patients"),
        code=types_pb2.Coding(system="urn:test:matrix", code=uuid.uuid4().hex[:12]),
        status=orders_pb.SERVICE_REQUEST_STATUS_COMPLETED,
        update_time=done,
    )
    event = orders_pb.ServiceRequestChanged(service_request=order, revision=1)
    return pb.DeliverEventsRequest(events=[envelope(event, source="orders")])


def tariff_item() -> pb.CreateTariffItemRequest:
    """A price of a code of its own, in force from yesterday."""
    since = Timestamp()
    since.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    return pb.CreateTariffItemRequest(
        tariff_item=pb.TariffItem(
            code=types_pb2.Coding(system="urn:test:matrix", code=uuid.uuid4().hex[:12]),
            unit_price=_money(100),
            effective_time=since,
        )
    )


def period() -> types_pb2.Period:
    """The last day."""
    window = types_pb2.Period()
    window.start_time.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    window.end_time.FromDatetime(dt.datetime.now(dt.UTC))
    return window


def missing_payment() -> str:
    return f"{missing('invoices')}/payments/{uuid.uuid4()}"


async def charge_request(world: World, allowed: bool) -> Message:
    return pb.CreateChargeItemRequest(charge_item=charge_item(world.patient))
