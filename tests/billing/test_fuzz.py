"""Random but well-typed billing traffic, concurrently: never INTERNAL or UNKNOWN, every refusal
names its reason, INVALID_ARGUMENT names a field, and the books balance afterwards (each invoice's
amount paid is the sum of its payments less their refunds, never more than its total)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import grpc

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as orders_pb
from tests.billing.helpers import (
    CLERK,
    ORDERS,
    Billing,
    charge,
    cny,
    deliver,
    get_invoice,
    issued,
    missing,
    order_changed,
    request_id,
    unique_code,
)
from tests.support import failure_of

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
ROUNDS = 12
CALLS_PER_ROUND = 16
ORDER_STATUSES = (
    orders_pb.SERVICE_REQUEST_STATUS_COMPLETED,
    orders_pb.SERVICE_REQUEST_STATUS_COMPLETED,
    orders_pb.SERVICE_REQUEST_STATUS_REVOKED,
    orders_pb.SERVICE_REQUEST_STATUS_ENTERED_IN_ERROR,
    orders_pb.SERVICE_REQUEST_STATUS_ACTIVE,
)


async def test_random_traffic_keeps_the_books(billing: Billing, patient: str) -> None:
    rng = random.Random(20261205)
    invoices = [(await issued(billing, patient, rng.randint(100, 5000))).name for _ in range(4)]
    charges = [(await charge(billing, patient)).name for _ in range(4)]
    payments: list[str] = []
    orders = [missing("serviceRequests") for _ in range(3)]
    code = unique_code()
    outcomes: Counter[str] = Counter()
    bad: list[str] = []

    def call() -> tuple[str, Any]:
        kind = rng.choice(("pay", "pay", "refund", "invoice", "cancel", "event", "charge"))
        if kind == "pay":
            amount = rng.choice((1, 50, 50, 300, 300, 999, 0, 10**16, -5))
            method = rng.choice((1, 1, 1, 2, 3, 4, 0, 9))
            return kind, billing.RecordPayment(
                pb.RecordPaymentRequest(
                    parent=rng.choice([*invoices, missing("invoices"), "invoices/x"]),
                    payment=pb.Payment(
                        amount=types_pb2.Money(
                            currency_code=rng.choice(("CNY", "CNY", "CNY", "CNY", "EUR", "")),
                            amount_minor=amount,
                        ),
                        method=method,  # type: ignore[arg-type]
                        external_reference=rng.choice(("T-1", "T-1", "T-1", "", "x" * 101)),
                    ),
                    request_id=rng.choice(("", "", request_id(), "same-key")),
                ),
                metadata=CLERK,
            )
        if kind == "refund" and payments:
            ask = pb.RefundPaymentRequest(
                name=rng.choice(payments),
                reason=rng.choice(("returned", "returned", "", "r" * 501)),
            )
            if rng.random() < 0.6:
                ask.amount.CopyFrom(cny(rng.choice((0, 1, 40, 200, 10**6))))
                ask.request_id = rng.choice((request_id(), request_id(), ""))
            ask.refund_reference = rng.choice(("R-1", "R-1", ""))
            return kind, billing.RefundPayment(ask, metadata=CLERK)
        if kind == "invoice":
            listed = rng.sample(charges, k=rng.randint(0, 2))
            return kind, billing.CreateInvoice(
                pb.CreateInvoiceRequest(
                    invoice=pb.Invoice(patient=patient, charge_items=listed),
                    request_id=rng.choice(("", request_id())),
                ),
                metadata=CLERK,
            )
        if kind == "cancel":
            return kind, billing.CancelInvoice(
                pb.CancelInvoiceRequest(
                    name=rng.choice(invoices),
                    reason=rng.choice(("", "x")),
                    etag=rng.choice(("", "1")),
                ),
                metadata=CLERK,
            )
        if kind == "event":
            return kind, deliver(
                billing,
                ORDERS,
                order_changed(
                    patient,
                    code,
                    revision=rng.randint(-1, 4),
                    status=rng.choice(ORDER_STATUSES),
                    name=rng.choice(orders),
                ),
            )
        return "charge", charge(
            billing, patient, amount=rng.choice((0, 10, -1)), quantity=rng.choice((0.5, 1, 0, 2e6))
        )

    for _ in range(ROUNDS):
        batch = [call() for _ in range(CALLS_PER_ROUND)]
        results = await asyncio.gather(*(c for _, c in batch), return_exceptions=True)
        for (kind, _), result in zip(batch, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                failure = failure_of(result)
                outcomes[f"{kind} {failure.code.name} {failure.reason}"] += 1
                if failure.code in NEVER or not failure.reason:
                    bad.append(f"{kind}: {failure}")
                if failure.code == grpc.StatusCode.INVALID_ARGUMENT and not failure.fields:
                    bad.append(f"{kind}: INVALID_ARGUMENT naming no field")
            elif isinstance(result, BaseException):
                raise result
            else:
                outcomes[f"{kind} OK"] += 1
                if kind == "pay":
                    payments.append(result.name)
                if kind == "charge":
                    charges.append(result.name)
    assert not bad, "\n".join(bad)
    assert outcomes["pay OK"] > 0 and outcomes["refund OK"] > 0, outcomes
    assert any(k.startswith("pay FAILED_PRECONDITION") for k in outcomes), outcomes

    for name in invoices:
        found = await get_invoice(billing, name)
        listed = await billing.ListPayments(
            pb.ListPaymentsRequest(parent=name, page_size=500), metadata=CLERK
        )
        counted = sum(
            p.amount.amount_minor - p.refunded_amount.amount_minor for p in listed.payments
        )
        assert found.amount_paid.amount_minor == counted, name
        assert 0 <= counted <= found.total_gross.amount_minor
        for p in listed.payments:
            assert sum(r.amount.amount_minor for r in p.refunds) == p.refunded_amount.amount_minor
    for source in orders:
        page = await billing.ListChargeItems(
            pb.ListChargeItemsRequest(source=source, page_size=100), metadata=CLERK
        )
        live = [
            c
            for c in page.charge_items
            if c.status != pb.CHARGE_ITEM_STATUS_ABORTED and not c.reverses
        ]
        assert len(live) <= 1, source
