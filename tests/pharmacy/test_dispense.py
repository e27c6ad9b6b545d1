"""DispenseMedication, HandOverMedicationDispense and CancelMedicationDispense: dispensing against
the pharmacy's own copy of the prescription, first expiry first out, stock never below zero."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from tests.pharmacy.helpers import (
    DOMAIN,
    PHARMACIST,
    Pharmacy,
    changed,
    create_medication,
    deliver,
    dispensing,
    medication_request,
    missing,
    on_hand,
    prescribe,
    receive,
    request_id,
)
from tests.support import fails, invalid_in


async def _stock(pharmacy: Pharmacy, location: str, quantity: int = 100) -> tuple[str, str]:
    """A new medication with one lot of `quantity` at `location`: (medication, stock item)."""
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, location, quantity)
    return medication.name, item.name


async def test_a_dispense_takes_stock_and_copies_the_prescription(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _stock(pharmacy, pharmacy_location, 50)
    order = await prescribe(pharmacy, medication, quantity=10, refills=1, price=31)
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 4, stock_item=item), metadata=PHARMACIST
    )
    assert dispense.status == pb.MEDICATION_DISPENSE_STATUS_IN_PROGRESS
    assert dispense.patient == order.patient
    assert dispense.encounter == order.encounter
    assert dispense.medication == medication
    assert dispense.stock_item == item
    assert dispense.location == pharmacy_location
    assert dispense.unit_price.amount_minor == 31
    assert dispense.prescription_remaining_quantity == 16
    assert dispense.dispenser.startswith("staff/")
    assert dispense.etag == "1"
    assert await on_hand(pharmacy, item) == 46
    got = await pharmacy.GetMedicationDispense(
        pb.GetMedicationDispenseRequest(name=dispense.name), metadata=PHARMACIST
    )
    assert got == dispense


async def test_hand_over_completes_and_repeats_change_nothing(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _stock(pharmacy, pharmacy_location)
    order = await prescribe(pharmacy, medication)
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 5, stock_item=item), metadata=PHARMACIST
    )
    done = await pharmacy.HandOverMedicationDispense(
        pb.HandOverMedicationDispenseRequest(name=dispense.name, etag=dispense.etag),
        metadata=PHARMACIST,
    )
    assert done.status == pb.MEDICATION_DISPENSE_STATUS_COMPLETED
    assert done.HasField("handed_over_time")
    assert done.etag == "2"
    again = await pharmacy.HandOverMedicationDispense(
        pb.HandOverMedicationDispenseRequest(name=dispense.name, etag="1"), metadata=PHARMACIST
    )
    assert again == done
    failure = await fails(
        pharmacy.CancelMedicationDispense(
            pb.CancelMedicationDispenseRequest(name=dispense.name, reason="not collected"),
            metadata=PHARMACIST,
        )
    )
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "DISPENSE_COMPLETED",
    )
    assert await on_hand(pharmacy, item) == 95


async def test_cancel_returns_the_stock_and_the_allowance(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _stock(pharmacy, pharmacy_location, 10)
    order = await prescribe(pharmacy, medication, quantity=10)
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 10, stock_item=item), metadata=PHARMACIST
    )
    assert dispense.prescription_remaining_quantity == 0
    cancelled = await pharmacy.CancelMedicationDispense(
        pb.CancelMedicationDispenseRequest(name=dispense.name, reason="not collected"),
        metadata=PHARMACIST,
    )
    assert cancelled.status == pb.MEDICATION_DISPENSE_STATUS_CANCELLED
    assert cancelled.cancel_reason == "not collected"
    assert cancelled.prescription_remaining_quantity == 10
    assert await on_hand(pharmacy, item) == 10
    again = await pharmacy.CancelMedicationDispense(
        pb.CancelMedicationDispenseRequest(name=dispense.name, reason="again"),
        metadata=PHARMACIST,
    )
    assert again == cancelled
    failure = await fails(
        pharmacy.HandOverMedicationDispense(
            pb.HandOverMedicationDispenseRequest(name=dispense.name), metadata=PHARMACIST
        )
    )
    assert failure.reason == "DISPENSE_CANCELLED"


async def test_a_stale_etag_is_aborted(pharmacy: Pharmacy, pharmacy_location: str) -> None:
    medication, item = await _stock(pharmacy, pharmacy_location)
    order = await prescribe(pharmacy, medication)
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 1, stock_item=item), metadata=PHARMACIST
    )
    for call in (
        pharmacy.HandOverMedicationDispense(
            pb.HandOverMedicationDispenseRequest(name=dispense.name, etag="7"), metadata=PHARMACIST
        ),
        pharmacy.CancelMedicationDispense(
            pb.CancelMedicationDispenseRequest(name=dispense.name, reason="x", etag="7"),
            metadata=PHARMACIST,
        ),
    ):
        failure = await fails(call)
        assert (failure.code, failure.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")


async def test_a_replayed_dispense_returns_the_first_and_takes_no_more(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _stock(pharmacy, pharmacy_location, 20)
    order = await prescribe(pharmacy, medication)
    request = dispensing(order.name, 3, stock_item=item)
    request.request_id = request_id()
    first = await pharmacy.DispenseMedication(request, metadata=PHARMACIST)
    second = await pharmacy.DispenseMedication(request, metadata=PHARMACIST)
    assert second.name == first.name
    assert await on_hand(pharmacy, item) == 17
    other = dispensing(order.name, 4, stock_item=item)
    other.request_id = request.request_id
    assert await invalid_in(DOMAIN, pharmacy.DispenseMedication(other, metadata=PHARMACIST)) == [
        "request_id"
    ]


async def _refusal(pharmacy: Pharmacy, request: pb.DispenseMedicationRequest) -> str | None:
    failure = await fails(pharmacy.DispenseMedication(request, metadata=PHARMACIST))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION, failure
    return failure.reason


async def test_refusals_name_their_reason(
    pharmacy: Pharmacy, pharmacy_location: str, other_pharmacy: str
) -> None:
    medication, item = await _stock(pharmacy, pharmacy_location, 5)
    other_medication, other_item = await _stock(pharmacy, pharmacy_location, 5)
    order = await prescribe(pharmacy, medication, quantity=4, refills=1)
    unknown = missing("medicationRequests")
    assert await _refusal(pharmacy, dispensing(unknown, 1, stock_item=item)) == "ORDER_NOT_KNOWN"
    assert (
        await _refusal(pharmacy, dispensing(order.name, 1, stock_item=other_item))
        == "WRONG_MEDICATION"
    )
    assert await _refusal(pharmacy, dispensing(order.name, 6, stock_item=item)) == "OUT_OF_STOCK"
    assert await _refusal(pharmacy, dispensing(order.name, 9, stock_item=item)) == (
        "EXCEEDS_PRESCRIPTION"
    )
    absent = f"{medication}/stockItems/{missing('x').split('/')[1]}"
    assert (
        await _refusal(pharmacy, dispensing(order.name, 1, stock_item=absent))
        == "STOCK_ITEM_NOT_FOUND"
    )
    assert (
        await _refusal(pharmacy, dispensing(order.name, 1, location=other_pharmacy))
        == "OUT_OF_STOCK"
    )
    cancelled = medication_request(medication, status=orders_pb.MEDICATION_REQUEST_STATUS_CANCELLED)
    await deliver(pharmacy, changed(cancelled, 1))
    assert (
        await _refusal(pharmacy, dispensing(cancelled.name, 1, stock_item=item))
        == "PRESCRIPTION_NOT_ACTIVE"
    )
    assert other_medication  # the other lot is of another drug


async def test_an_inactive_medication_is_not_dispensed(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _stock(pharmacy, pharmacy_location)
    order = await prescribe(pharmacy, medication)
    await pharmacy.UpdateMedication(
        pb.UpdateMedicationRequest(
            medication=pb.Medication(name=medication, active=False),
            update_mask=FieldMask(paths=["active"]),
        ),
        metadata=PHARMACIST,
    )
    assert (
        await _refusal(pharmacy, dispensing(order.name, 1, stock_item=item))
        == "MEDICATION_INACTIVE"
    )


@pytest.mark.parametrize(
    ("dispense", "field"),
    [
        (
            pb.MedicationDispense(quantity=1, stock_item="x"),
            "medication_dispense.medication_request",
        ),
        (
            pb.MedicationDispense(medication_request=missing("medicationRequests"), quantity=1),
            "medication_dispense.location",
        ),
        (
            pb.MedicationDispense(
                medication_request=missing("medicationRequests"),
                location=missing("departments"),
                quantity=0,
            ),
            "medication_dispense.quantity",
        ),
        (
            pb.MedicationDispense(
                medication_request=missing("medicationRequests"),
                stock_item="medications/x/stockItems/y",
                quantity=1,
            ),
            "medication_dispense.stock_item",
        ),
    ],
)
async def test_bad_dispense_requests_name_the_field(
    pharmacy: Pharmacy, dispense: pb.MedicationDispense, field: str
) -> None:
    request = pb.DispenseMedicationRequest(medication_dispense=dispense)
    fields = await invalid_in(DOMAIN, pharmacy.DispenseMedication(request, metadata=PHARMACIST))
    assert field in fields


async def test_a_missing_dispense_is_not_found(pharmacy: Pharmacy) -> None:
    name = missing("medicationDispenses")
    for call in (
        pharmacy.GetMedicationDispense(
            pb.GetMedicationDispenseRequest(name=name), metadata=PHARMACIST
        ),
        pharmacy.HandOverMedicationDispense(
            pb.HandOverMedicationDispenseRequest(name=name), metadata=PHARMACIST
        ),
        pharmacy.CancelMedicationDispense(
            pb.CancelMedicationDispenseRequest(name=name, reason="x"), metadata=PHARMACIST
        ),
    ):
        assert (await fails(call)).code == grpc.StatusCode.NOT_FOUND
    assert await invalid_in(
        DOMAIN,
        pharmacy.CancelMedicationDispense(
            pb.CancelMedicationDispenseRequest(name=name), metadata=PHARMACIST
        ),
    ) == ["reason"]
