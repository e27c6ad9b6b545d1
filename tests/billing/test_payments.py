"""Payments and refunds: the balance due never goes below zero, refunds never exceed the payment,
a partial refund is made once per request id."""

from __future__ import annotations

import datetime as dt

import grpc

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from tests.billing.helpers import (
    CLERK,
    Billing,
    charge,
    cny,
    get_invoice,
    invoice,
    issued,
    missing,
    now,
    pay,
    payment,
    request_id,
    stamp,
)
from tests.support import fails


def refund(
    name: str, amount: int | None = None, key: str = "", **kw: str
) -> pb.RefundPaymentRequest:
    ask = pb.RefundPaymentRequest(name=name, reason=kw.get("reason", "returned"), request_id=key)
    if amount is not None:
        ask.amount.CopyFrom(cny(amount))
    ask.refund_reference = kw.get("reference", "")
    return ask


async def test_payments_lower_the_balance_until_balanced(billing: Billing, patient: str) -> None:
    made = await issued(billing, patient, 1000)
    first = await pay(billing, made.name, 400)
    assert first.status == pb.PAYMENT_STATUS_COMPLETED
    assert first.cashier.startswith("staff/")
    assert first.name.startswith(made.name + "/payments/")
    assert (await get_invoice(billing, made.name)).balance_due == cny(600)
    failure = await fails(pay(billing, made.name, 601))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "OVERPAYMENT"
    await pay(billing, made.name, 600)
    done = await get_invoice(billing, made.name)
    assert done.status == pb.INVOICE_STATUS_BALANCED
    assert done.amount_paid == cny(1000)
    failure = await fails(pay(billing, made.name, 1))
    assert failure.reason == "INVOICE_NOT_ISSUED"


async def test_a_draft_or_missing_invoice_takes_no_payment(billing: Billing, patient: str) -> None:
    draft = await invoice(billing, patient, (await charge(billing, patient)).name)
    failure = await fails(pay(billing, draft.name, 1))
    assert failure.reason == "INVOICE_NOT_ISSUED"
    failure = await fails(pay(billing, missing("invoices"), 1))
    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_bad_payments_are_refused_naming_the_field(billing: Billing, patient: str) -> None:
    made = await issued(billing, patient, 100)
    cases = {
        "payment.amount.amount_minor": payment(0),
        "payment.amount.currency_code": pb.Payment(
            amount=types_pb2.Money(currency_code="USD", amount_minor=1),
            method=pb.PAYMENT_METHOD_CASH,
        ),
        "payment.method": pb.Payment(amount=cny(1)),
        "payment.external_reference": payment(1, pb.PAYMENT_METHOD_CARD),
        "payment.received_time": pb.Payment(
            amount=cny(1),
            method=pb.PAYMENT_METHOD_CASH,
            received_time=stamp(now().replace(year=now().year + 1)),
        ),
    }
    for field, given in cases.items():
        failure = await fails(
            billing.RecordPayment(
                pb.RecordPaymentRequest(parent=made.name, payment=given), metadata=CLERK
            )
        )
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert failure.fields == [field]


async def test_a_repeated_payment_with_the_same_request_id_pays_once(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 1000)
    key = request_id()
    first = await pay(billing, made.name, 300, request_id=key)
    again = await pay(billing, made.name, 300, request_id=key)
    assert first.name == again.name
    assert (await get_invoice(billing, made.name)).amount_paid == cny(300)
    failure = await fails(pay(billing, made.name, 301, request_id=key))
    assert failure.fields == ["request_id"]


async def test_a_full_refund_reopens_the_invoice_and_is_idempotent(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 500)
    paid = await pay(billing, made.name, 500)
    refunded = await billing.RefundPayment(refund(paid.name), metadata=CLERK)
    assert refunded.status == pb.PAYMENT_STATUS_REFUNDED
    assert refunded.refunded_amount == cny(500)
    assert refunded.refund_reason == "returned"
    again = await billing.RefundPayment(refund(paid.name), metadata=CLERK)
    assert again == refunded
    reopened = await get_invoice(billing, made.name)
    assert reopened.status == pb.INVOICE_STATUS_ISSUED
    assert reopened.balance_due == cny(500)
    await billing.CancelInvoice(pb.CancelInvoiceRequest(name=made.name, reason="x"), metadata=CLERK)


async def test_partial_refunds_add_up_once_per_request_and_never_beyond_the_payment(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 1000)
    paid = await pay(billing, made.name, 1000)
    key = request_id()
    first = await billing.RefundPayment(refund(paid.name, 300, key), metadata=CLERK)
    again = await billing.RefundPayment(refund(paid.name, 300, key), metadata=CLERK)
    assert first.refunded_amount == again.refunded_amount == cny(300)
    assert first.status == pb.PAYMENT_STATUS_COMPLETED
    assert len(again.refunds) == 1
    failure = await fails(
        billing.RefundPayment(refund(paid.name, 701, request_id()), metadata=CLERK)
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "REFUND_EXCEEDS_PAYMENT"
    last = await billing.RefundPayment(refund(paid.name, 700, request_id()), metadata=CLERK)
    assert last.status == pb.PAYMENT_STATUS_REFUNDED
    assert [r.amount.amount_minor for r in last.refunds] == [300, 700]
    assert (await get_invoice(billing, made.name)).balance_due == cny(1000)


async def test_bad_refunds_are_refused(billing: Billing, patient: str) -> None:
    made = await issued(billing, patient, 100)
    paid = await pay(billing, made.name, 100)
    failure = await fails(billing.RefundPayment(refund(paid.name, 10), metadata=CLERK))
    assert failure.fields == ["request_id"]
    failure = await fails(billing.RefundPayment(refund(paid.name, 0, "k"), metadata=CLERK))
    assert failure.fields == ["amount.amount_minor"]
    failure = await fails(billing.RefundPayment(refund(paid.name, reason=""), metadata=CLERK))
    assert failure.fields == ["reason"]
    failure = await fails(billing.RefundPayment(refund(made.name), metadata=CLERK))
    assert failure.fields == ["name"]
    failure = await fails(
        billing.RefundPayment(refund(f"{made.name}/payments/{missing('x')[2:]}"), metadata=CLERK)
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_a_card_refund_needs_its_reference(billing: Billing, patient: str) -> None:
    made = await issued(billing, patient, 100)
    paid = await billing.RecordPayment(
        pb.RecordPaymentRequest(
            parent=made.name, payment=payment(100, pb.PAYMENT_METHOD_CARD, "T1")
        ),
        metadata=CLERK,
    )
    failure = await fails(billing.RefundPayment(refund(paid.name), metadata=CLERK))
    assert failure.fields == ["refund_reference"]
    done = await billing.RefundPayment(refund(paid.name, reference="R1"), metadata=CLERK)
    assert done.refund_reference == "R1"


async def test_list_payments_of_an_invoice_and_of_all(billing: Billing, patient: str) -> None:
    made = await issued(billing, patient, 1000)
    first = await pay(billing, made.name, 100)
    second = await pay(billing, made.name, 200)
    listed = await billing.ListPayments(pb.ListPaymentsRequest(parent=made.name), metadata=CLERK)
    assert [p.name for p in listed.payments] == [first.name, second.name]
    window = types_pb2.Period(
        start_time=stamp(now() - dt.timedelta(days=1)),
        end_time=stamp(now() + dt.timedelta(minutes=1)),
    )
    every = await billing.ListPayments(
        pb.ListPaymentsRequest(parent="invoices/-", received_period=window, page_size=500),
        metadata=CLERK,
    )
    assert {first.name, second.name} <= {p.name for p in every.payments}
    failure = await fails(
        billing.ListPayments(pb.ListPaymentsRequest(parent="invoices/-"), metadata=CLERK)
    )
    assert set(failure.fields) == {"received_period.start_time", "received_period.end_time"}
    failure = await fails(
        billing.ListPayments(pb.ListPaymentsRequest(parent=missing("invoices")), metadata=CLERK)
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND
