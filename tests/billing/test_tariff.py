"""The price list: CreateTariffItem and ListTariffItems; GetPatientBalance."""

from __future__ import annotations

import datetime as dt

import grpc

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from tests.billing.helpers import (
    CLERK,
    LOINC,
    SCHEDULING,
    SERVICE_TYPES,
    Billing,
    charge,
    checked_in,
    cny,
    deliver,
    issued,
    missing,
    now,
    pay,
    price,
    request_id,
    stamp,
    unique_code,
)
from tests.support import fails


def item(code: types_pb2.Coding, amount: int, effective: dt.datetime) -> pb.TariffItem:
    return pb.TariffItem(code=code, unit_price=cny(amount), effective_time=stamp(effective))


async def test_the_migration_seeds_the_demo_price_list(billing: Billing) -> None:
    cbc = await billing.ListTariffItems(
        pb.ListTariffItemsRequest(code_system=LOINC, code="58410-2"), metadata=CLERK
    )
    assert [i.unit_price.amount_minor for i in cbc.tariff_items] == [4000]
    fees = await billing.ListTariffItems(
        pb.ListTariffItemsRequest(code_system=SERVICE_TYPES, effective_at=stamp(now())),
        metadata=CLERK,
    )
    assert {i.code.code for i in fees.tariff_items} >= {"17", "124", "353"}


async def test_a_later_item_ends_the_one_before_and_effective_at_picks_one(
    billing: Billing,
) -> None:
    code = unique_code()
    first = await price(billing, code, 100)
    later = now() + dt.timedelta(days=30)
    second = await billing.CreateTariffItem(
        pb.CreateTariffItemRequest(tariff_item=item(code, 120, later)), metadata=CLERK
    )
    listed = await billing.ListTariffItems(
        pb.ListTariffItemsRequest(code_system=code.system, code=code.code), metadata=CLERK
    )
    assert [i.name for i in listed.tariff_items] == [first.name, second.name]
    assert listed.tariff_items[0].end_time == second.effective_time
    assert not listed.tariff_items[1].HasField("end_time")
    today = await billing.ListTariffItems(
        pb.ListTariffItemsRequest(
            code_system=code.system, code=code.code, effective_at=stamp(now())
        ),
        metadata=CLERK,
    )
    assert [i.name for i in today.tariff_items] == [first.name]


async def test_prices_are_never_changed_retroactively_or_twice_at_one_time(
    billing: Billing,
) -> None:
    code = unique_code()
    since = now() + dt.timedelta(days=3)
    await billing.CreateTariffItem(
        pb.CreateTariffItemRequest(tariff_item=item(code, 100, since)), metadata=CLERK
    )
    failure = await fails(
        billing.CreateTariffItem(
            pb.CreateTariffItemRequest(tariff_item=item(code, 200, since)), metadata=CLERK
        )
    )
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    failure = await fails(
        billing.CreateTariffItem(
            pb.CreateTariffItemRequest(tariff_item=item(code, 200, now() - dt.timedelta(days=1))),
            metadata=CLERK,
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "PRICE_NOT_RETROACTIVE"


async def test_a_repeated_create_with_the_same_request_id_returns_the_first(
    billing: Billing,
) -> None:
    ask = pb.CreateTariffItemRequest(
        tariff_item=item(unique_code(), 10, now() - dt.timedelta(days=1)), request_id=request_id()
    )
    first = await billing.CreateTariffItem(ask, metadata=CLERK)
    again = await billing.CreateTariffItem(ask, metadata=CLERK)
    assert first == again


async def test_bad_tariff_items_are_refused_naming_the_field(billing: Billing) -> None:
    cases = {
        "tariff_item.unit_price.currency_code": pb.TariffItem(
            code=unique_code(),
            unit_price=types_pb2.Money(currency_code="EUR", amount_minor=1),
            effective_time=stamp(now()),
        ),
        "tariff_item.unit_price.amount_minor": item(unique_code(), -5, now()),
        "tariff_item.effective_time": pb.TariffItem(code=unique_code(), unit_price=cny(1)),
        "tariff_item.code.system": item(types_pb2.Coding(code="x"), 1, now()),
    }
    for field, given in cases.items():
        failure = await fails(
            billing.CreateTariffItem(pb.CreateTariffItemRequest(tariff_item=given), metadata=CLERK)
        )
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.fields == [field]
    failure = await fails(
        billing.ListTariffItems(pb.ListTariffItemsRequest(code="x"), metadata=CLERK)
    )
    assert failure.fields == ["code_system"]


async def test_the_balance_adds_unbilled_charges_and_issued_invoices_due(
    billing: Billing, patient: str
) -> None:
    made = await issued(billing, patient, 1000)
    await pay(billing, made.name, 250)
    await charge(billing, patient, amount=40)
    await deliver(billing, SCHEDULING, checked_in(patient, unique_code()))  # no price: planned
    found = await billing.GetPatientBalance(
        pb.GetPatientBalanceRequest(name=f"{patient}/billingBalance"), metadata=CLERK
    )
    assert found.name == f"{patient}/billingBalance"
    assert (found.unbilled, found.invoiced_due, found.total_due) == (cny(40), cny(750), cny(790))
    assert found.unpriced_charge_items == 1
    empty = await billing.GetPatientBalance(
        pb.GetPatientBalanceRequest(name=f"{missing('patients')}/billingBalance"), metadata=CLERK
    )
    assert empty.total_due == cny(0)
    failure = await fails(
        billing.GetPatientBalance(pb.GetPatientBalanceRequest(name=patient), metadata=CLERK)
    )
    assert failure.fields == ["name"]
