"""ReceiveStock, GetStockItem, ListStockItems and AdjustStock: stock by lot and location."""

from __future__ import annotations

import datetime as dt

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from tests.identity import ISSUER, metadata
from tests.pharmacy.helpers import (
    DOMAIN,
    PHARMACIST,
    Pharmacy,
    create_medication,
    date,
    missing,
    receive,
    request_id,
    today,
)
from tests.support import fails, invalid_in


async def test_a_delivery_makes_a_stock_item_and_the_next_adds_to_it(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    first = await receive(pharmacy, medication.name, pharmacy_location, 30, lot="A1")
    assert first.name.startswith(f"{medication.name}/stockItems/")
    assert (first.lot_number, first.location, first.quantity_on_hand) == (
        "A1",
        pharmacy_location,
        30,
    )
    second = await receive(pharmacy, medication.name, pharmacy_location, 20, lot="A1")
    assert second.name == first.name
    assert second.quantity_on_hand == 50
    assert second.etag != first.etag
    got = await pharmacy.GetStockItem(pb.GetStockItemRequest(name=first.name), metadata=PHARMACIST)
    assert got == second


async def test_a_replayed_delivery_adds_nothing(pharmacy: Pharmacy, pharmacy_location: str) -> None:
    medication = await create_medication(pharmacy)
    request = pb.ReceiveStockRequest(
        parent=medication.name,
        location=pharmacy_location,
        lot_number="R1",
        expiry_date=date(today() + dt.timedelta(days=90)),
        quantity=12,
        request_id=request_id(),
    )
    first = await pharmacy.ReceiveStock(request, metadata=PHARMACIST)
    again = await pharmacy.ReceiveStock(request, metadata=PHARMACIST)
    assert (again.name, again.quantity_on_hand) == (first.name, 12)
    request.quantity = 13
    fields = await invalid_in(DOMAIN, pharmacy.ReceiveStock(request, metadata=PHARMACIST))
    assert fields == ["request_id"]


async def test_receive_refusals(
    pharmacy: Pharmacy, pharmacy_location: str, clinic_department: str
) -> None:
    medication = await create_medication(pharmacy)
    await receive(pharmacy, medication.name, pharmacy_location, 5, lot="E1", expires_in_days=30)
    other_expiry = await fails(
        receive(pharmacy, medication.name, pharmacy_location, 5, lot="E1", expires_in_days=60)
    )
    assert (other_expiry.code, other_expiry.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "EXPIRY_MISMATCH",
    )
    not_pharmacy = await fails(receive(pharmacy, medication.name, clinic_department, 5))
    assert not_pharmacy.reason == "LOCATION_NOT_PHARMACY"
    nowhere = await fails(receive(pharmacy, medication.name, missing("departments"), 5))
    assert nowhere.reason == "DEPARTMENT_NOT_FOUND"
    unknown = await fails(receive(pharmacy, missing("medications"), pharmacy_location, 5))
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    await pharmacy.UpdateMedication(
        pb.UpdateMedicationRequest(
            medication=pb.Medication(name=medication.name, active=False),
            update_mask=FieldMask(paths=["active"]),
        ),
        metadata=PHARMACIST,
    )
    inactive = await fails(receive(pharmacy, medication.name, pharmacy_location, 5))
    assert inactive.reason == "MEDICATION_INACTIVE"


async def test_bad_deliveries_name_the_field(pharmacy: Pharmacy) -> None:
    good = pb.ReceiveStockRequest(
        parent=missing("medications"),
        location=missing("departments"),
        lot_number="L",
        expiry_date=date(today() + dt.timedelta(days=9)),
        quantity=1,
    )
    cases: list[tuple[dict[str, object], str]] = [
        ({"parent": "medications/-"}, "parent"),
        ({"location": "wards/1"}, "location"),
        ({"lot_number": ""}, "lot_number"),
        ({"lot_number": "x" * 51}, "lot_number"),
        ({"expiry_date": date(today())}, "expiry_date"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": 1_000_001}, "quantity"),
    ]
    for change, field in cases:
        request = pb.ReceiveStockRequest()
        request.CopyFrom(good)
        for key, value in change.items():
            if key == "expiry_date":
                request.expiry_date.CopyFrom(value)  # type: ignore[arg-type]
            else:
                setattr(request, key, value)
        fields = await invalid_in(DOMAIN, pharmacy.ReceiveStock(request, metadata=PHARMACIST))
        assert fields == [field], change
    no_expiry = pb.ReceiveStockRequest()
    no_expiry.CopyFrom(good)
    no_expiry.ClearField("expiry_date")
    assert await invalid_in(DOMAIN, pharmacy.ReceiveStock(no_expiry, metadata=PHARMACIST)) == [
        "expiry_date"
    ]


async def test_adjust_corrects_with_a_reason_and_never_below_zero(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, pharmacy_location, 10)
    broken = await pharmacy.AdjustStock(
        pb.AdjustStockRequest(
            name=item.name,
            quantity_change=-3,
            reason=pb.STOCK_ADJUSTMENT_REASON_DAMAGED,
            etag=item.etag,
        ),
        metadata=PHARMACIST,
    )
    assert broken.quantity_on_hand == 7
    replay = await fails(
        pharmacy.AdjustStock(
            pb.AdjustStockRequest(
                name=item.name,
                quantity_change=-3,
                reason=pb.STOCK_ADJUSTMENT_REASON_DAMAGED,
                etag=item.etag,
            ),
            metadata=PHARMACIST,
        )
    )
    assert (replay.code, replay.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    for etag in ("²", "99999999999999999999", "x"):  # no version number: a stale etag
        odd = await fails(
            pharmacy.AdjustStock(
                pb.AdjustStockRequest(
                    name=item.name,
                    quantity_change=1,
                    reason=pb.STOCK_ADJUSTMENT_REASON_DAMAGED,
                    etag=etag,
                ),
                metadata=PHARMACIST,
            )
        )
        assert odd.code == grpc.StatusCode.ABORTED, etag
    below = await fails(
        pharmacy.AdjustStock(
            pb.AdjustStockRequest(
                name=item.name,
                quantity_change=-8,
                reason=pb.STOCK_ADJUSTMENT_REASON_COUNT_CORRECTION,
                etag=broken.etag,
            ),
            metadata=PHARMACIST,
        )
    )
    assert (below.code, below.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STOCK_WOULD_BE_NEGATIVE",
    )
    found = await pharmacy.AdjustStock(
        pb.AdjustStockRequest(
            name=item.name,
            quantity_change=2,
            reason=pb.STOCK_ADJUSTMENT_REASON_OTHER,
            note="found behind the shelf",
            etag=broken.etag,
        ),
        metadata=PHARMACIST,
    )
    assert found.quantity_on_hand == 9
    absent = f"{medication.name}/stockItems/{missing('x').split('/')[1]}"
    gone = await fails(
        pharmacy.AdjustStock(
            pb.AdjustStockRequest(
                name=absent,
                quantity_change=1,
                reason=pb.STOCK_ADJUSTMENT_REASON_OTHER,
                note="n",
                etag="1",
            ),
            metadata=PHARMACIST,
        )
    )
    assert gone.code == grpc.StatusCode.NOT_FOUND


async def test_bad_adjustments_name_the_field(pharmacy: Pharmacy) -> None:
    name = f"{missing('medications')}/stockItems/{missing('x').split('/')[1]}"
    good = {
        "name": name,
        "quantity_change": 1,
        "reason": pb.STOCK_ADJUSTMENT_REASON_DAMAGED,
        "etag": "1",
    }
    for change, field in (
        ({"name": "medications/1"}, "name"),
        ({"quantity_change": 0}, "quantity_change"),
        ({"quantity_change": -1_000_001}, "quantity_change"),
        ({"reason": 0}, "reason"),
        ({"reason": 99}, "reason"),
        ({"reason": pb.STOCK_ADJUSTMENT_REASON_OTHER}, "note"),
        ({"etag": ""}, "etag"),
    ):
        request = pb.AdjustStockRequest(**{**good, **change})  # type: ignore[arg-type]
        fields = await invalid_in(DOMAIN, pharmacy.AdjustStock(request, metadata=PHARMACIST))
        assert fields == [field], change


async def test_list_orders_by_expiry_and_filters(
    pharmacy: Pharmacy, pharmacy_location: str, other_pharmacy: str
) -> None:
    medication = await create_medication(pharmacy)
    late = await receive(pharmacy, medication.name, pharmacy_location, 5, expires_in_days=300)
    early = await receive(pharmacy, medication.name, pharmacy_location, 5, expires_in_days=20)
    middle = await receive(pharmacy, medication.name, other_pharmacy, 5, expires_in_days=100)
    empty = await receive(pharmacy, medication.name, pharmacy_location, 1, expires_in_days=50)
    await pharmacy.AdjustStock(
        pb.AdjustStockRequest(
            name=empty.name,
            quantity_change=-1,
            reason=pb.STOCK_ADJUSTMENT_REASON_EXPIRED,
            etag=empty.etag,
        ),
        metadata=PHARMACIST,
    )

    async def names(**kw: object) -> list[str]:
        seen: list[str] = []
        token = ""
        while True:
            page = await pharmacy.ListStockItems(
                pb.ListStockItemsRequest(
                    parent=medication.name,
                    page_size=1,
                    page_token=token,
                    **kw,  # type: ignore[arg-type]
                ),
                metadata=PHARMACIST,
            )
            seen += [item.name for item in page.stock_items]
            token = page.next_page_token
            if not token:
                return seen

    assert await names() == [early.name, middle.name, late.name]
    assert await names(include_empty=True) == [early.name, empty.name, middle.name, late.name]
    assert await names(location=pharmacy_location) == [early.name, late.name]
    soon = date(today() + dt.timedelta(days=60))
    assert await names(expiring_before=soon) == [early.name]
    every = await pharmacy.ListStockItems(
        pb.ListStockItemsRequest(parent="medications/-", page_size=500), metadata=PHARMACIST
    )
    assert {early.name, middle.name, late.name} <= {item.name for item in every.stock_items}
    unknown = await fails(
        pharmacy.ListStockItems(
            pb.ListStockItemsRequest(parent=missing("medications")), metadata=PHARMACIST
        )
    )
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    for request, field in (
        (pb.ListStockItemsRequest(parent="x"), "parent"),
        (pb.ListStockItemsRequest(parent="medications/-", page_size=-2), "page_size"),
        (pb.ListStockItemsRequest(parent="medications/-", location="x"), "location"),
        (pb.ListStockItemsRequest(parent="medications/-", page_token="t"), "page_token"),
    ):
        fields = await invalid_in(DOMAIN, pharmacy.ListStockItems(request, metadata=PHARMACIST))
        assert fields == [field]


async def test_only_pharmacists_handle_stock(pharmacy: Pharmacy, pharmacy_location: str) -> None:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, pharmacy_location, 5)
    for token in (ISSUER.staff("DOCTOR"), ISSUER.staff("NURSE"), ISSUER.service("orders")):
        failure = await fails(
            pharmacy.GetStockItem(pb.GetStockItemRequest(name=item.name), metadata=metadata(token))
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    bad = await invalid_in(
        DOMAIN, pharmacy.GetStockItem(pb.GetStockItemRequest(name="x"), metadata=PHARMACIST)
    )
    assert bad == ["name"]
    absent = f"{medication.name}/stockItems/{missing('x').split('/')[1]}"
    gone = await fails(
        pharmacy.GetStockItem(pb.GetStockItemRequest(name=absent), metadata=PHARMACIST)
    )
    assert gone.code == grpc.StatusCode.NOT_FOUND
