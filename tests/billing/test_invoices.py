"""Invoices: created from billable charges, issued (then frozen), cancelled (charges released)."""

from __future__ import annotations

import grpc
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.billing.v1 import billing_service_pb2 as pb
from tests.billing.helpers import (
    CLERK,
    Billing,
    charge,
    cny,
    get_invoice,
    invoice,
    issued,
    missing,
    pay,
    request_id,
)
from tests.support import fails


async def test_an_invoice_bills_every_billable_charge_of_the_patient(
    billing: Billing, patient: str
) -> None:
    a = await charge(billing, patient, amount=1000)
    b = await charge(billing, patient, amount=250, quantity=2)
    made = await invoice(billing, patient)
    assert made.status == pb.INVOICE_STATUS_DRAFT
    assert set(made.charge_items) == {a.name, b.name}
    assert made.total_gross == made.total_net == cny(1500)
    assert made.balance_due == cny(1500)
    got = await billing.GetChargeItem(pb.GetChargeItemRequest(name=a.name), metadata=CLERK)
    assert got.status == pb.CHARGE_ITEM_STATUS_BILLED
    assert got.invoice == made.name
    failure = await fails(invoice(billing, patient))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "NO_BILLABLE_CHARGES"


async def test_listed_charges_must_be_billable_and_the_patients(
    billing: Billing, patient: str
) -> None:
    other = await charge(billing, patient)
    await invoice(billing, patient, other.name)
    failure = await fails(invoice(billing, patient, other.name))
    assert failure.reason == "CHARGE_ITEM_NOT_BILLABLE"
    failure = await fails(
        invoice(billing, missing("patients"), (await charge(billing, patient)).name)
    )
    assert failure.reason == "CHARGE_ITEM_OTHER_PATIENT"
    failure = await fails(invoice(billing, patient, missing("chargeItems")))
    assert failure.reason == "CHARGE_ITEM_NOT_FOUND"
    item = await charge(billing, patient)
    failure = await fails(invoice(billing, patient, item.name, item.name))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["invoice.charge_items[1]"]


async def test_a_repeated_create_with_the_same_request_id_invoices_once(
    billing: Billing, patient: str
) -> None:
    await charge(billing, patient)
    key = request_id()
    first = await invoice(billing, patient, request_id=key)
    again = await invoice(billing, patient, request_id=key)
    assert first == again


async def test_issue_then_pay_in_full_balances_and_zero_balances_at_once(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 800)
    assert made.status == pb.INVOICE_STATUS_ISSUED
    assert made.issue_time.seconds > 0
    again = await billing.IssueInvoice(pb.IssueInvoiceRequest(name=made.name), metadata=CLERK)
    assert again == made
    await pay(billing, made.name, 800)
    paid = await get_invoice(billing, made.name)
    assert paid.status == pb.INVOICE_STATUS_BALANCED
    assert paid.balance_due == cny(0)
    free = await issued(billing, patient, 0)
    assert free.status == pb.INVOICE_STATUS_BALANCED


async def test_issue_with_a_stale_etag_or_of_a_cancelled_invoice_is_refused(
    billing: Billing, patient: str
) -> None:
    draft = await invoice(billing, patient, (await charge(billing, patient)).name)
    failure = await fails(
        billing.IssueInvoice(pb.IssueInvoiceRequest(name=draft.name, etag="7"), metadata=CLERK)
    )
    assert failure.code == grpc.StatusCode.ABORTED
    await billing.CancelInvoice(
        pb.CancelInvoiceRequest(name=draft.name, reason="wrong patient"), metadata=CLERK
    )
    failure = await fails(
        billing.IssueInvoice(pb.IssueInvoiceRequest(name=draft.name), metadata=CLERK)
    )
    assert failure.reason == "INVOICE_CANCELLED"
    failure = await fails(
        billing.IssueInvoice(pb.IssueInvoiceRequest(name=missing("invoices")), metadata=CLERK)
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_cancel_releases_the_charges_and_keeps_the_lines(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 300, 400)
    cancelled = await billing.CancelInvoice(
        pb.CancelInvoiceRequest(name=made.name, reason="prices were wrong"), metadata=CLERK
    )
    assert cancelled.status == pb.INVOICE_STATUS_CANCELLED
    assert list(cancelled.charge_items) == list(made.charge_items)
    for name in made.charge_items:
        item = await billing.GetChargeItem(pb.GetChargeItemRequest(name=name), metadata=CLERK)
        assert item.status == pb.CHARGE_ITEM_STATUS_BILLABLE and not item.invoice
    again = await billing.CancelInvoice(
        pb.CancelInvoiceRequest(name=made.name, reason="again"), metadata=CLERK
    )
    assert again == cancelled
    reissued = await invoice(billing, patient, *made.charge_items)
    assert reissued.total_gross == cny(700)
    failure = await fails(
        billing.CancelInvoice(pb.CancelInvoiceRequest(name=made.name), metadata=CLERK)
    )
    assert failure.fields == ["reason"]


async def test_an_invoice_with_a_payment_or_balanced_cannot_be_cancelled(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 1000)
    await pay(billing, made.name, 100)
    ask = pb.CancelInvoiceRequest(name=made.name, reason="x")
    failure = await fails(billing.CancelInvoice(ask, metadata=CLERK))
    assert failure.reason == "INVOICE_HAS_PAYMENTS"
    await pay(billing, made.name, 900)
    failure = await fails(billing.CancelInvoice(ask, metadata=CLERK))
    assert failure.reason == "INVOICE_BALANCED"


async def test_an_issued_invoice_cannot_change_even_behind_the_services_back(
    billing: Billing, patient: str, billing_db: AsyncEngine
) -> None:
    made = await issued(billing, patient, 500)
    invoice_id = made.name.removeprefix("invoices/")
    for statement in (
        "UPDATE billing.invoices SET total_minor = 1 WHERE id = :id",
        "UPDATE billing.invoices SET status = 'draft', issue_time = NULL WHERE id = :id",
        "DELETE FROM billing.invoices WHERE id = :id",
    ):
        async with billing_db.connect() as connection:
            refused = False
            try:
                await connection.execute(text(statement), {"id": invoice_id})
            except DBAPIError as error:
                refused = "cannot be changed" in str(error) or "never deleted" in str(error)
            await connection.rollback()
        assert refused, statement
    assert (await get_invoice(billing, made.name)).total_gross == cny(500)


async def test_list_invoices_by_patient_and_status(billing: Billing, patient: str) -> None:
    draft = await invoice(billing, patient, (await charge(billing, patient)).name)
    made = await issued(billing, patient, 10)
    listed = await billing.ListInvoices(
        pb.ListInvoicesRequest(patient=patient, status=pb.INVOICE_STATUS_ISSUED), metadata=CLERK
    )
    assert [i.name for i in listed.invoices] == [made.name]
    every = await billing.ListInvoices(pb.ListInvoicesRequest(patient=patient), metadata=CLERK)
    assert [i.name for i in every.invoices] == [made.name, draft.name]
    failure = await fails(
        billing.ListInvoices(pb.ListInvoicesRequest(status=99), metadata=CLERK)  # type: ignore[arg-type]
    )
    assert failure.fields == ["status"]
