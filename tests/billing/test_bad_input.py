"""Bad input to every rpc is INVALID_ARGUMENT naming the field, decided before anything exists."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from tests.billing.helpers import CLERK, Billing, cny
from tests.support import fails

CASES: list[tuple[str, Message, list[str] | None]] = [
    ("CreateChargeItem", pb.CreateChargeItemRequest(), ["charge_item"]),
    ("GetChargeItem", pb.GetChargeItemRequest(name="chargeItems/"), ["name"]),
    ("ListChargeItems", pb.ListChargeItemsRequest(status=9), ["status"]),  # type: ignore[arg-type]
    ("ListChargeItems", pb.ListChargeItemsRequest(encounter="visits/1"), ["encounter"]),
    ("CancelChargeItem", pb.CancelChargeItemRequest(name="x", reason="r"), ["name"]),
    ("CreateInvoice", pb.CreateInvoiceRequest(), ["invoice"]),
    ("CreateInvoice", pb.CreateInvoiceRequest(invoice=pb.Invoice()), ["invoice.patient"]),
    ("GetInvoice", pb.GetInvoiceRequest(name="invoices/1"), ["name"]),
    ("ListInvoices", pb.ListInvoicesRequest(page_size=-2), ["page_size"]),
    ("IssueInvoice", pb.IssueInvoiceRequest(name="chargeItems/1"), ["name"]),
    ("CancelInvoice", pb.CancelInvoiceRequest(name="invoices/1", reason="r"), ["name"]),
    ("RecordPayment", pb.RecordPaymentRequest(parent="invoices/1"), ["parent", "payment"]),
    ("ListPayments", pb.ListPaymentsRequest(parent="payments"), ["parent"]),
    (
        "RefundPayment",
        pb.RefundPaymentRequest(name="invoices/1/payments/2", reason="r"),
        ["name"],
    ),
    ("CreateTariffItem", pb.CreateTariffItemRequest(), ["tariff_item"]),
    (
        "CreateTariffItem",
        pb.CreateTariffItemRequest(
            tariff_item=pb.TariffItem(
                code=types_pb2.Coding(system="s", code="c"), unit_price=cny(1)
            )
        ),
        ["tariff_item.effective_time"],
    ),
    ("ListTariffItems", pb.ListTariffItemsRequest(page_token="nope"), ["page_token"]),
    ("GetPatientBalance", pb.GetPatientBalanceRequest(name="patients/x/billingBalance"), ["name"]),
    ("ReconcileCharges", pb.ReconcileChargesRequest(period=types_pb2.Period()), None),
    ("DeliverEvents", pb.DeliverEventsRequest(), ["events"]),
]


@pytest.mark.parametrize(("rpc", "request_", "fields"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_names_the_field(
    billing: Billing, rpc: str, request_: Message, fields: list[str] | None
) -> None:
    method: Any = getattr(billing, rpc)
    failure = await fails(method(request_, metadata=CLERK))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    if fields is None:
        assert failure.fields, failure
    else:
        assert set(fields) <= set(failure.fields), failure.fields
