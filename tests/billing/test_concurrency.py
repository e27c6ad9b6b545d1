"""Races, with real concurrent gRPC calls: one payment per request id, never more paid than due,
no charge on two invoices."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from his.billing.v1 import billing_service_pb2 as pb
from tests.billing.helpers import (
    CLERK,
    Billing,
    charge,
    cny,
    get_invoice,
    issued,
    pay,
    payment,
    request_id,
)
from tests.support import failure_of


async def _outcomes(calls: list[Any]) -> list[Any]:
    """Each call's answer, or its failure (code, reason)."""
    found = []
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, grpc.aio.AioRpcError):
            failure = failure_of(result)
            found.append((failure.code, failure.reason))
        elif isinstance(result, BaseException):
            raise result
        else:
            found.append(result)
    return found


async def test_fifty_concurrent_retries_of_one_payment_record_one(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 5000)
    ask = pb.RecordPaymentRequest(parent=made.name, payment=payment(1200), request_id=request_id())
    answers = await _outcomes([billing.RecordPayment(ask, metadata=CLERK) for _ in range(50)])
    assert {a.name for a in answers} == {answers[0].name}  # no failure, one payment
    listed = await billing.ListPayments(pb.ListPaymentsRequest(parent=made.name), metadata=CLERK)
    assert len(listed.payments) == 1
    assert (await get_invoice(billing, made.name)).amount_paid == cny(1200)


async def test_concurrent_payments_never_exceed_the_balance_due(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 1000)
    answers = await _outcomes([pay(billing, made.name, 300) for _ in range(10)])
    paid = [a for a in answers if isinstance(a, pb.Payment)]
    refused = [a for a in answers if not isinstance(a, pb.Payment)]
    assert len(paid) == 3
    assert set(refused) == {(grpc.StatusCode.FAILED_PRECONDITION, "OVERPAYMENT")}
    final = await get_invoice(billing, made.name)
    assert final.amount_paid == cny(900)
    assert final.balance_due == cny(100)


async def test_concurrent_invoices_never_bill_a_charge_twice(
    billing: Billing, patient: str
) -> None:
    items = [(await charge(billing, patient)).name for _ in range(3)]
    answers = await _outcomes(
        [
            billing.CreateInvoice(
                pb.CreateInvoiceRequest(invoice=pb.Invoice(patient=patient, charge_items=items)),
                metadata=CLERK,
            )
            for _ in range(8)
        ]
    )
    made = [a for a in answers if isinstance(a, pb.Invoice)]
    assert len(made) == 1
    # A loser either saw the charges billed (FAILED_PRECONDITION) or lost the race (ABORTED).
    assert {a[0] for a in answers if not isinstance(a, pb.Invoice)} <= {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
    }
    for name in items:
        item = await billing.GetChargeItem(pb.GetChargeItemRequest(name=name), metadata=CLERK)
        assert item.invoice == made[0].name


async def test_concurrent_partial_refunds_never_exceed_the_payment(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 1000)
    paid = await pay(billing, made.name, 1000)
    asks = [
        pb.RefundPaymentRequest(
            name=paid.name, reason="r", amount=cny(300), request_id=request_id()
        )
        for _ in range(6)
    ]
    answers = await _outcomes([billing.RefundPayment(a, metadata=CLERK) for a in asks])
    assert sum(isinstance(a, pb.Payment) for a in answers) == 3
    final = await get_invoice(billing, made.name)
    assert final.amount_paid == cny(100)


async def test_concurrent_retries_of_one_invoice_make_one(billing: Billing, patient: str) -> None:
    for _ in range(3):
        await charge(billing, patient)
    ask = pb.CreateInvoiceRequest(invoice=pb.Invoice(patient=patient), request_id=request_id())
    answers = await _outcomes([billing.CreateInvoice(ask, metadata=CLERK) for _ in range(20)])
    assert {a.name for a in answers} == {answers[0].name}  # no failure, one invoice
    listed = await billing.ListInvoices(pb.ListInvoicesRequest(patient=patient), metadata=CLERK)
    assert len(listed.invoices) == 1


async def test_concurrent_retries_of_one_partial_refund_refund_once(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 1000)
    paid = await pay(billing, made.name, 1000)
    ask = pb.RefundPaymentRequest(
        name=paid.name, reason="r", amount=cny(700), request_id=request_id()
    )
    answers = await _outcomes([billing.RefundPayment(ask, metadata=CLERK) for _ in range(20)])
    assert all(isinstance(a, pb.Payment) for a in answers), answers
    final = await billing.ListPayments(pb.ListPaymentsRequest(parent=made.name), metadata=CLERK)
    assert final.payments[0].refunded_amount == cny(700)
    assert len(final.payments[0].refunds) == 1
