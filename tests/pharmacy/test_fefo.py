"""First expiry, first out, and expired lots never used."""

from __future__ import annotations

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.pharmacy.helpers import (
    PHARMACIST,
    Pharmacy,
    create_medication,
    dispensing,
    on_hand,
    prescribe,
    receive,
)
from tests.support import fails


async def _expire(db: AsyncEngine, stock_item: str) -> None:
    """Let a lot reach its expiry date (ReceiveStock accepts only lots that expire later)."""
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE pharmacy.stock_items SET expiry_date = current_date WHERE id = :id"),
            {"id": stock_item.rsplit("/", 1)[1]},
        )


async def test_without_a_stock_item_the_earliest_usable_lot_is_taken(
    pharmacy: Pharmacy, pharmacy_location: str, other_pharmacy: str
) -> None:
    medication = await create_medication(pharmacy)
    late = await receive(pharmacy, medication.name, pharmacy_location, 10, expires_in_days=200)
    small = await receive(pharmacy, medication.name, pharmacy_location, 2, expires_in_days=10)
    early = await receive(pharmacy, medication.name, pharmacy_location, 10, expires_in_days=30)
    elsewhere = await receive(pharmacy, medication.name, other_pharmacy, 10, expires_in_days=5)
    order = await prescribe(pharmacy, medication.name, quantity=100)
    first = await pharmacy.DispenseMedication(
        dispensing(order.name, 2, location=pharmacy_location), metadata=PHARMACIST
    )
    assert first.stock_item == small.name
    # The small lot is empty now; 6 units come whole from the next lot to expire.
    second = await pharmacy.DispenseMedication(
        dispensing(order.name, 6, location=pharmacy_location), metadata=PHARMACIST
    )
    assert (second.stock_item, second.lot_number) == (early.name, early.lot_number)
    # 5 do not fit in what is left of the early lot (4): the late lot holds them.
    third = await pharmacy.DispenseMedication(
        dispensing(order.name, 5, location=pharmacy_location), metadata=PHARMACIST
    )
    assert third.stock_item == late.name
    assert await on_hand(pharmacy, elsewhere.name) == 10


async def test_a_named_lot_is_refused_while_an_earlier_usable_one_exists(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    late = await receive(pharmacy, medication.name, pharmacy_location, 10, expires_in_days=200)
    early = await receive(pharmacy, medication.name, pharmacy_location, 3, expires_in_days=20)
    order = await prescribe(pharmacy, medication.name, quantity=100)
    failure = await fails(
        pharmacy.DispenseMedication(
            dispensing(order.name, 2, stock_item=late.name), metadata=PHARMACIST
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_FIRST_EXPIRY",
    )
    assert failure.metadata["stock_item"] == early.name
    # The early lot cannot hold 5: then the later lot is the first usable one.
    taken = await pharmacy.DispenseMedication(
        dispensing(order.name, 5, stock_item=late.name), metadata=PHARMACIST
    )
    assert taken.stock_item == late.name
    assert await on_hand(pharmacy, early.name) == 3


async def test_an_expired_lot_is_never_used(
    pharmacy: Pharmacy, pharmacy_location: str, pharmacy_db: AsyncEngine
) -> None:
    medication = await create_medication(pharmacy)
    expiring = await receive(pharmacy, medication.name, pharmacy_location, 10, expires_in_days=3)
    fresh = await receive(pharmacy, medication.name, pharmacy_location, 10, expires_in_days=90)
    order = await prescribe(pharmacy, medication.name, quantity=100)
    await _expire(pharmacy_db, expiring.name)
    named = await fails(
        pharmacy.DispenseMedication(
            dispensing(order.name, 1, stock_item=expiring.name), metadata=PHARMACIST
        )
    )
    assert named.reason == "LOT_EXPIRED"
    chosen = await pharmacy.DispenseMedication(
        dispensing(order.name, 1, location=pharmacy_location), metadata=PHARMACIST
    )
    assert chosen.stock_item == fresh.name
    # The expired lot does not count as an earlier one either.
    direct = await pharmacy.DispenseMedication(
        dispensing(order.name, 1, stock_item=fresh.name), metadata=PHARMACIST
    )
    assert direct.stock_item == fresh.name
    assert await on_hand(pharmacy, expiring.name) == 10
    await _expire(pharmacy_db, fresh.name)
    none_left = await fails(
        pharmacy.DispenseMedication(
            dispensing(order.name, 1, location=pharmacy_location), metadata=PHARMACIST
        )
    )
    assert none_left.reason == "OUT_OF_STOCK"
