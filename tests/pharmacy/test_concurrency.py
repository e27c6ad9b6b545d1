"""Invariants under real concurrency: parallel gRPC calls against one lot, one prescription, one
dispense. The database decides (conditional UPDATEs and CHECKs), never a read-then-write."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from tests.pharmacy.helpers import (
    PHARMACIST,
    Pharmacy,
    create_medication,
    dispensing,
    on_hand,
    prescribe,
    receive,
)
from tests.support import failure_of


async def _outcomes(calls: Sequence[Any]) -> tuple[list[pb.MedicationDispense], Counter[str]]:
    """The dispenses made and the refusals' (code, reason) counted."""
    made: list[pb.MedicationDispense] = []
    refused: Counter[str] = Counter()
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            failure = failure_of(result)
            refused[f"{failure.code.name} {failure.reason}"] += 1
        elif isinstance(result, BaseException):
            raise result
        else:
            made.append(result)
    return made, refused


async def test_a_hundred_dispenses_against_a_lot_of_ten_take_exactly_ten(
    pharmacy: Pharmacy, pharmacy_location: str, pharmacy_db: AsyncEngine
) -> None:
    medication = await create_medication(pharmacy)
    lot = await receive(pharmacy, medication.name, pharmacy_location, 10)
    orders = [await prescribe(pharmacy, medication.name, quantity=5) for _ in range(10)]
    calls = [
        pharmacy.DispenseMedication(
            dispensing(orders[index % 10].name, 1, stock_item=lot.name), metadata=PHARMACIST
        )
        for index in range(100)
    ]
    made, refused = await _outcomes(calls)
    assert sum(d.quantity for d in made) == 10
    assert refused == Counter({"FAILED_PRECONDITION OUT_OF_STOCK": 90})
    assert await on_hand(pharmacy, lot.name) == 0
    async with pharmacy_db.connect() as connection:
        taken = await connection.scalar(
            text(
                "SELECT sum(quantity) FROM pharmacy.dispenses WHERE stock_item_id = :id "
                "AND status <> 'cancelled'"
            ),
            {"id": lot.name.rsplit("/", 1)[1]},
        )
    assert taken == 10


async def test_concurrent_dispenses_never_exceed_the_prescription(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    await receive(pharmacy, medication.name, pharmacy_location, 1000)
    order = await prescribe(pharmacy, medication.name, quantity=6, refills=1)
    calls = [
        pharmacy.DispenseMedication(
            dispensing(order.name, 2, location=pharmacy_location), metadata=PHARMACIST
        )
        for _ in range(40)
    ]
    made, refused = await _outcomes(calls)
    assert sum(d.quantity for d in made) == 12
    assert refused == Counter({"FAILED_PRECONDITION EXCEEDS_PRESCRIPTION": 34})
    assert min(d.prescription_remaining_quantity for d in made) == 0


async def test_concurrent_cancels_return_the_stock_once(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    lot = await receive(pharmacy, medication.name, pharmacy_location, 10)
    order = await prescribe(pharmacy, medication.name, quantity=10)
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 7, stock_item=lot.name), metadata=PHARMACIST
    )
    cancels = [
        pharmacy.CancelMedicationDispense(
            pb.CancelMedicationDispenseRequest(name=dispense.name, reason=f"try {i}"),
            metadata=PHARMACIST,
        )
        for i in range(20)
    ]
    results = await asyncio.gather(*cancels)
    assert {r.status for r in results} == {pb.MEDICATION_DISPENSE_STATUS_CANCELLED}
    assert len({r.cancel_reason for r in results}) == 1
    assert await on_hand(pharmacy, lot.name) == 10
    again = await pharmacy.DispenseMedication(
        dispensing(order.name, 10, stock_item=lot.name), metadata=PHARMACIST
    )
    assert again.prescription_remaining_quantity == 0


async def test_hand_over_racing_cancel_has_one_winner(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    lot = await receive(pharmacy, medication.name, pharmacy_location, 10)
    order = await prescribe(pharmacy, medication.name, quantity=10)
    for _ in range(5):
        dispense = await pharmacy.DispenseMedication(
            dispensing(order.name, 1, stock_item=lot.name), metadata=PHARMACIST
        )
        calls = [
            pharmacy.HandOverMedicationDispense(
                pb.HandOverMedicationDispenseRequest(name=dispense.name), metadata=PHARMACIST
            ),
            pharmacy.CancelMedicationDispense(
                pb.CancelMedicationDispenseRequest(name=dispense.name, reason="race"),
                metadata=PHARMACIST,
            ),
        ]
        made, refused = await _outcomes(calls)
        assert len(made) == 1
        assert sum(refused.values()) == 1
        assert set(refused) <= {
            "FAILED_PRECONDITION DISPENSE_CANCELLED",
            "FAILED_PRECONDITION DISPENSE_COMPLETED",
        }
    final = await pharmacy.ListMedicationDispenses(
        pb.ListMedicationDispensesRequest(medication_request=order.name), metadata=PHARMACIST
    )
    completed = sum(
        d.quantity
        for d in final.medication_dispenses
        if d.status == pb.MEDICATION_DISPENSE_STATUS_COMPLETED
    )
    assert await on_hand(pharmacy, lot.name) == 10 - completed


async def test_concurrent_replays_make_one_dispense(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    lot = await receive(pharmacy, medication.name, pharmacy_location, 50)
    order = await prescribe(pharmacy, medication.name, quantity=50)
    request = dispensing(order.name, 3, stock_item=lot.name)
    request.request_id = "replayed-dispense-" + order.name.rsplit("/", 1)[1]
    results = await asyncio.gather(
        *(pharmacy.DispenseMedication(request, metadata=PHARMACIST) for _ in range(20))
    )
    assert len({r.name for r in results}) == 1
    assert await on_hand(pharmacy, lot.name) == 47
