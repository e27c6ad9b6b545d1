"""Manual charges: CreateChargeItem, GetChargeItem, ListChargeItems and CancelChargeItem."""

from __future__ import annotations

import grpc

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from tests.billing.helpers import (
    CLERK,
    Billing,
    charge,
    charge_item,
    cny,
    invoice,
    missing,
    request_id,
    unique_code,
)
from tests.support import fails


async def test_a_manual_charge_is_billable_and_totalled_half_away_from_zero(
    billing: Billing, patient: str
) -> None:
    made = await charge(billing, patient, amount=333, quantity=1.5)
    assert made.status == pb.CHARGE_ITEM_STATUS_BILLABLE
    assert made.total_price == cny(500)  # 499.5 rounds up
    got = await billing.GetChargeItem(pb.GetChargeItemRequest(name=made.name), metadata=CLERK)
    assert got == made


async def test_a_repeated_create_with_the_same_request_id_charges_once(
    billing: Billing, patient: str
) -> None:
    ask = pb.CreateChargeItemRequest(charge_item=charge_item(patient), request_id=request_id())
    first = await billing.CreateChargeItem(ask, metadata=CLERK)
    again = await billing.CreateChargeItem(ask, metadata=CLERK)
    assert first.name == again.name
    ask.charge_item.quantity.value = 2
    failure = await fails(billing.CreateChargeItem(ask, metadata=CLERK))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["request_id"]


async def test_a_source_is_charged_once_per_code(billing: Billing, patient: str) -> None:
    code = unique_code()
    source = missing("serviceRequests")
    first = await charge(billing, patient, code=code, source=source)
    failure = await fails(charge(billing, patient, code=code, source=source))
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "SOURCE_ALREADY_CHARGED"
    await billing.CancelChargeItem(
        pb.CancelChargeItemRequest(name=first.name, reason="wrong"), metadata=CLERK
    )
    again = await charge(billing, patient, code=code, source=source)
    assert again.status == pb.CHARGE_ITEM_STATUS_BILLABLE


async def test_charging_an_unknown_patient_is_a_failed_precondition(billing: Billing) -> None:
    failure = await fails(charge(billing, missing("patients")))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "PATIENT_NOT_FOUND"


async def test_bad_charges_are_refused_naming_the_field(billing: Billing, patient: str) -> None:
    cases = {
        "charge_item.patient": charge_item("people/1"),
        "charge_item.quantity.value": charge_item(patient, quantity=0),
        "charge_item.unit_price.currency_code": pb.ChargeItem(
            patient=patient,
            code=unique_code(),
            quantity=types_pb2.Quantity(value=1, unit="1"),
            unit_price=types_pb2.Money(currency_code="EUR", amount_minor=1),
        ),
        "charge_item.unit_price.amount_minor": charge_item(patient, amount=-1),
        "charge_item.code.code": charge_item(patient, code=types_pb2.Coding(system="urn:x")),
    }
    for field, item in cases.items():
        failure = await fails(
            billing.CreateChargeItem(pb.CreateChargeItemRequest(charge_item=item), metadata=CLERK)
        )
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in failure.fields, (field, failure.fields)


async def test_get_of_a_missing_or_malformed_name(billing: Billing) -> None:
    failure = await fails(
        billing.GetChargeItem(pb.GetChargeItemRequest(name=missing("chargeItems")), metadata=CLERK)
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND
    failure = await fails(
        billing.GetChargeItem(pb.GetChargeItemRequest(name="chargeItems/x"), metadata=CLERK)
    )
    assert failure.fields == ["name"]


async def test_list_filters_and_pages_newest_first(billing: Billing, patient: str) -> None:
    made = [await charge(billing, patient) for _ in range(3)]
    first = await billing.ListChargeItems(
        pb.ListChargeItemsRequest(patient=patient, page_size=2), metadata=CLERK
    )
    rest = await billing.ListChargeItems(
        pb.ListChargeItemsRequest(patient=patient, page_size=2, page_token=first.next_page_token),
        metadata=CLERK,
    )
    names = [c.name for c in [*first.charge_items, *rest.charge_items]]
    assert names == [m.name for m in reversed(made)]
    assert rest.next_page_token == ""
    failure = await fails(
        billing.ListChargeItems(
            pb.ListChargeItemsRequest(
                patient=missing("patients"), page_token=first.next_page_token
            ),
            metadata=CLERK,
        )
    )
    assert failure.fields == ["page_token"]
    failure = await fails(
        billing.ListChargeItems(pb.ListChargeItemsRequest(page_size=-1), metadata=CLERK)
    )
    assert failure.fields == ["page_size"]


async def test_cancel_aborts_once_and_refuses_a_billed_charge(
    billing: Billing, patient: str
) -> None:
    made = await charge(billing, patient)
    ask = pb.CancelChargeItemRequest(name=made.name, reason="entered by mistake", etag="99")
    failure = await fails(billing.CancelChargeItem(ask, metadata=CLERK))
    assert failure.code == grpc.StatusCode.ABORTED
    ask.etag = made.etag
    cancelled = await billing.CancelChargeItem(ask, metadata=CLERK)
    assert cancelled.status == pb.CHARGE_ITEM_STATUS_ABORTED
    ask.etag = ""
    again = await billing.CancelChargeItem(ask, metadata=CLERK)
    assert again == cancelled
    billed = await charge(billing, patient)
    await invoice(billing, patient, billed.name)
    failure = await fails(
        billing.CancelChargeItem(
            pb.CancelChargeItemRequest(name=billed.name, reason="x"), metadata=CLERK
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "CHARGE_ITEM_BILLED"
    failure = await fails(
        billing.CancelChargeItem(pb.CancelChargeItemRequest(name=made.name), metadata=CLERK)
    )
    assert failure.fields == ["reason"]
    failure = await fails(
        billing.CancelChargeItem(
            pb.CancelChargeItemRequest(name=missing("chargeItems"), reason="x"), metadata=CLERK
        )
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND
