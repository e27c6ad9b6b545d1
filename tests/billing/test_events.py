"""DeliverEvents: each charging event of scheduling, orders and pharmacy yields one charge, priced
by the tariff item in force when the service was rendered, whatever the delivery count and order."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from tests.billing.helpers import (
    CLERK,
    MEDICATION,
    ORDERS,
    PHARMACY,
    SCHEDULING,
    Billing,
    charges_of,
    checked_in,
    deliver,
    dispense_changed,
    invoice,
    missing,
    now,
    order_changed,
    price,
    source_of,
    stamp,
    unique_code,
)
from tests.support import fails


async def test_a_check_in_charges_the_consultation_fee_of_its_service_type(
    billing: Billing, patient: str
) -> None:
    code = unique_code()
    await price(billing, code, 2500)
    event = checked_in(patient, code)
    reply = await deliver(billing, SCHEDULING, event)
    assert (reply.applied, reply.duplicates) == (1, 0)
    [item] = await charges_of(billing, source_of(event))
    assert item.status == pb.CHARGE_ITEM_STATUS_BILLABLE
    assert item.code.code == code.code
    assert item.total_price.amount_minor == 2500
    assert item.patient == patient
    assert item.source_event == event.event_id
    assert item.occurrence_time.seconds > 0


async def test_a_completed_lab_order_charges_its_test_and_keeps_no_clinical_content(
    billing: Billing, patient: str, billing_db: AsyncEngine
) -> None:
    code = unique_code()
    await price(billing, code, 4000)
    event = order_changed(patient, code, revision=3)
    await deliver(billing, ORDERS, event)
    [item] = await charges_of(billing, source_of(event))
    assert item.total_price.amount_minor == 4000
    assert item.department.startswith("departments/")
    async with billing_db.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT * FROM billing.charge_items WHERE source = :s"),
                {"s": source_of(event)},
            )
        ).one()
    assert "I10" not in repr(row) and "clinical note" not in repr(row)


async def test_a_handed_over_dispense_charges_the_medication_by_quantity(
    billing: Billing, patient: str
) -> None:
    medication = missing("medications")
    code = types_pb2.Coding(system=MEDICATION, code=medication.removeprefix("medications/"))
    await price(billing, code, 25)
    event = dispense_changed(patient, medication, 12, revision=2)
    await deliver(billing, PHARMACY, event)
    [item] = await charges_of(billing, source_of(event))
    assert item.code.system == MEDICATION
    assert item.quantity.value == 12
    assert item.total_price.amount_minor == 300


async def test_other_statuses_charge_nothing(billing: Billing, patient: str) -> None:
    code = unique_code()
    await price(billing, code, 100)
    active = order_changed(
        patient, code, revision=1, status=orders_pb.SERVICE_REQUEST_STATUS_ACTIVE
    )
    cancelled = dispense_changed(
        patient,
        missing("medications"),
        1,
        revision=2,
        status=pharmacy_pb.MEDICATION_DISPENSE_STATUS_CANCELLED,
    )
    await deliver(billing, ORDERS, active)
    await deliver(billing, PHARMACY, cancelled)
    assert await charges_of(billing, source_of(active)) == []
    assert await charges_of(billing, source_of(cancelled)) == []


async def test_the_same_event_twice_charges_once(billing: Billing, patient: str) -> None:
    event = order_changed(patient, unique_code(), revision=1)
    first = await deliver(billing, ORDERS, event)
    again = await deliver(billing, ORDERS, event)
    assert (first.applied, again.applied, again.duplicates) == (1, 0, 1)
    assert len(await charges_of(billing, source_of(event))) == 1


async def test_twenty_concurrent_deliveries_of_one_event_charge_once(
    billing: Billing, patient: str
) -> None:
    event = checked_in(patient, unique_code())
    replies = await asyncio.gather(*(deliver(billing, SCHEDULING, event) for _ in range(20)))
    assert sum(r.applied for r in replies) == 1
    assert sum(r.duplicates for r in replies) == 19
    assert len(await charges_of(billing, source_of(event))) == 1


async def test_a_second_event_of_the_same_source_charges_nothing_more(
    billing: Billing, patient: str
) -> None:
    code = unique_code()
    first = order_changed(patient, code, revision=2)
    # The same completed order again, as a later revision (another event id).
    second = order_changed(patient, code, revision=3, name=source_of(first))
    await deliver(billing, ORDERS, first)
    await deliver(billing, ORDERS, second)
    assert len(await charges_of(billing, source_of(first))) == 1


async def test_an_older_revision_delivered_late_changes_nothing(
    billing: Billing, patient: str
) -> None:
    code = unique_code()
    name = missing("serviceRequests")
    revoked = order_changed(
        patient, code, revision=4, name=name, status=orders_pb.SERVICE_REQUEST_STATUS_REVOKED
    )
    completed = order_changed(patient, code, revision=3, name=name)
    await deliver(billing, ORDERS, revoked)
    reply = await deliver(billing, ORDERS, completed)
    assert reply.applied == 1  # applied: recorded, and it changed nothing
    assert await charges_of(billing, name) == []


async def test_a_revoked_order_aborts_its_unbilled_charge(billing: Billing, patient: str) -> None:
    code = unique_code()
    name = missing("serviceRequests")
    await deliver(billing, ORDERS, order_changed(patient, code, revision=1, name=name))
    await deliver(
        billing,
        ORDERS,
        order_changed(
            patient, code, revision=2, name=name, status=orders_pb.SERVICE_REQUEST_STATUS_REVOKED
        ),
    )
    [item] = await charges_of(billing, name)
    assert item.status == pb.CHARGE_ITEM_STATUS_ABORTED
    assert item.cancel_reason


async def test_an_order_entered_in_error_after_billing_is_credited(
    billing: Billing, patient: str
) -> None:
    code = unique_code()
    await price(billing, code, 700)
    name = missing("serviceRequests")
    await deliver(billing, ORDERS, order_changed(patient, code, revision=1, name=name))
    [item] = await charges_of(billing, name)
    await invoice(billing, patient, item.name)
    error = orders_pb.SERVICE_REQUEST_STATUS_ENTERED_IN_ERROR
    await deliver(
        billing, ORDERS, order_changed(patient, code, revision=2, name=name, status=error)
    )
    found = {c.name: c for c in await charges_of(billing, name)}
    assert found[item.name].status == pb.CHARGE_ITEM_STATUS_BILLED
    [credit] = [c for c in found.values() if c.reverses]
    assert credit.reverses == item.name
    assert credit.total_price.amount_minor == -700
    assert credit.status == pb.CHARGE_ITEM_STATUS_BILLABLE


async def test_a_charge_is_priced_by_the_tariff_item_in_force_when_it_occurred(
    billing: Billing, patient: str
) -> None:
    code = unique_code()
    start = now() - dt.timedelta(days=100)
    await price(billing, code, 1000, since=start)
    await billing.CreateTariffItem(
        pb.CreateTariffItemRequest(
            tariff_item=pb.TariffItem(
                code=code,
                unit_price=types_pb2.Money(currency_code="CNY", amount_minor=1500),
                effective_time=stamp(now() + dt.timedelta(days=1)),
            )
        ),
        metadata=CLERK,
    )
    old = order_changed(patient, code, revision=1, when=start + dt.timedelta(days=10))
    await deliver(billing, ORDERS, old)
    [item] = await charges_of(billing, source_of(old))
    assert item.unit_price.amount_minor == 1000


async def test_a_charge_without_a_price_is_planned_until_a_tariff_item_prices_it(
    billing: Billing, patient: str
) -> None:
    code = unique_code()
    event = checked_in(patient, code, arrived=now() - dt.timedelta(hours=2))
    await deliver(billing, SCHEDULING, event)
    [item] = await charges_of(billing, source_of(event))
    assert item.status == pb.CHARGE_ITEM_STATUS_PLANNED
    assert not item.HasField("total_price")
    await price(billing, code, 3300, since=now() - dt.timedelta(days=1))
    [priced] = await charges_of(billing, source_of(event))
    assert priced.status == pb.CHARGE_ITEM_STATUS_BILLABLE
    assert priced.total_price.amount_minor == 3300


async def test_events_from_another_service_are_refused(billing: Billing, patient: str) -> None:
    event = order_changed(patient, unique_code(), revision=1)
    failure = await fails(deliver(billing, PHARMACY, event))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    failure = await fails(deliver(billing, CLERK, event))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert await charges_of(billing, source_of(event)) == []


async def test_a_malformed_event_is_refused_naming_it(billing: Billing, patient: str) -> None:
    event = order_changed("not-a-patient", unique_code(), revision=1)
    failure = await fails(deliver(billing, ORDERS, event))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.fields == ["events[0].payload.service_request.patient"]
    failure = await fails(deliver(billing, ORDERS))
    assert failure.fields == ["events"]
