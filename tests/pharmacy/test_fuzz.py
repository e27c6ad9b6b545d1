"""Random but well-typed pharmacy traffic, concurrently: never INTERNAL or UNKNOWN, every refusal
names its reason, and the books balance afterwards (stock = received + adjusted - dispensed and
not cancelled; no prescription dispensed beyond its total)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import grpc

from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from tests.pharmacy.helpers import (
    PHARMACIST,
    Pharmacy,
    changed,
    create_medication,
    deliver,
    dispensing,
    medication_request,
    missing,
    receive,
)
from tests.support import failure_of

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
ROUNDS = 16
CALLS_PER_ROUND = 16
STATUSES = (
    orders_pb.MEDICATION_REQUEST_STATUS_ACTIVE,
    orders_pb.MEDICATION_REQUEST_STATUS_ACTIVE,
    orders_pb.MEDICATION_REQUEST_STATUS_CANCELLED,
    orders_pb.MEDICATION_REQUEST_STATUS_COMPLETED,
)


async def test_random_traffic_keeps_the_books(
    pharmacy: Pharmacy, pharmacy_location: str, other_pharmacy: str
) -> None:
    rng = random.Random(20261205)
    medication = await create_medication(pharmacy)
    other = await create_medication(pharmacy)
    received: Counter[str] = Counter()
    lots: list[str] = []
    for days, quantity in ((30, 5), (90, 40), (400, 60)):
        item = await receive(
            pharmacy, medication.name, pharmacy_location, quantity, expires_in_days=days
        )
        lots.append(item.name)
        received[item.name] += quantity
    far = await receive(pharmacy, medication.name, other_pharmacy, 20)
    lots.append(far.name)
    received[far.name] += 20
    wrong = await receive(pharmacy, other.name, pharmacy_location, 20)
    orders = [
        medication_request(medication.name, quantity=rng.randint(2, 12), refills=rng.randint(0, 2))
        for _ in range(4)
    ]
    revisions = {order.name: 1 for order in orders}
    await deliver(pharmacy, *(changed(order, 1) for order in orders))
    # A few dispenses from the start, so hand-overs and cancels have something to work on.
    dispenses: list[str] = [
        (
            await pharmacy.DispenseMedication(
                dispensing(order.name, 1, location=pharmacy_location), metadata=PHARMACIST
            )
        ).name
        for order in orders
        for _ in range(2)
    ]
    adjusted: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    bad: list[str] = []

    def call() -> tuple[str, Any]:
        kind = rng.choice(
            ("dispense", "dispense", "dispense", "hand_over", "cancel", "adjust", "deliver")
        )
        if kind == "dispense":
            order = rng.choice([*[o.name for o in orders], missing("medicationRequests")])
            quantity = rng.choice((0, 1, 2, 3, 5, 8, 13, 100_001, -4))
            where = rng.random()
            if where < 0.4:
                request = dispensing(
                    order, quantity, location=rng.choice((pharmacy_location, other_pharmacy))
                )
            elif where < 0.9:
                request = dispensing(order, quantity, stock_item=rng.choice([*lots, wrong.name]))
            else:
                request = dispensing(order, quantity, stock_item=f"{medication.name}/stockItems/x")
            return kind, pharmacy.DispenseMedication(request, metadata=PHARMACIST)
        if kind in ("hand_over", "cancel") and dispenses:
            name = rng.choice(dispenses)
            if kind == "hand_over":
                return kind, pharmacy.HandOverMedicationDispense(
                    pb.HandOverMedicationDispenseRequest(name=name), metadata=PHARMACIST
                )
            return kind, pharmacy.CancelMedicationDispense(
                pb.CancelMedicationDispenseRequest(
                    name=name, reason=rng.choice(("", "x", "x", "x", "y" * 501))
                ),
                metadata=PHARMACIST,
            )
        if kind == "deliver":
            prescription = rng.choice(orders)
            revision = revisions[prescription.name] + rng.choice((-1, 0, 1, 1))
            prescription.status = rng.choice(STATUSES)
            return kind, deliver(pharmacy, changed(prescription, max(revision, 1)))
        lot = rng.choice(lots)

        async def adjust() -> Any:
            item = await pharmacy.GetStockItem(
                pb.GetStockItemRequest(name=lot), metadata=PHARMACIST
            )
            change = rng.choice((-3, -1, 2, 7, 0, -10_000))
            reply = await pharmacy.AdjustStock(
                pb.AdjustStockRequest(
                    name=lot,
                    quantity_change=change,
                    reason=rng.choice((0, 1, 2, 3, 6, 42)),  # type: ignore[arg-type]
                    note=rng.choice(("", "count")),
                    etag=rng.choice((item.etag, item.etag, "0", "x")),
                ),
                metadata=PHARMACIST,
            )
            adjusted[lot] += change
            return reply

        return "adjust", adjust()

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
                if kind == "dispense":
                    dispenses.append(result.name)
        for order in orders:
            revisions[order.name] += 1
    assert not bad, "\n".join(bad)
    assert outcomes["dispense OK"] > 0 and outcomes["cancel OK"] > 0, outcomes

    taken: Counter[str] = Counter()
    for order in orders:
        page = await pharmacy.ListMedicationDispenses(
            pb.ListMedicationDispensesRequest(medication_request=order.name, page_size=500),
            metadata=PHARMACIST,
        )
        live = [
            d
            for d in page.medication_dispenses
            if d.status != pb.MEDICATION_DISPENSE_STATUS_CANCELLED
        ]
        total = int(order.dispense_quantity.value) * (1 + order.refills)
        assert sum(d.quantity for d in live) <= total
        for d in live:
            taken[d.stock_item] += d.quantity
    for lot in lots:
        item = await pharmacy.GetStockItem(pb.GetStockItemRequest(name=lot), metadata=PHARMACIST)
        assert item.quantity_on_hand == received[lot] + adjusted[lot] - taken[lot], lot
        assert item.quantity_on_hand >= 0
    untouched = await pharmacy.GetStockItem(
        pb.GetStockItemRequest(name=wrong.name), metadata=PHARMACIST
    )
    assert untouched.quantity_on_hand == 20
