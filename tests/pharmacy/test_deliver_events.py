"""DeliverEvents: orders' MedicationRequestChanged kept in the pharmacy's copy, each event applied
once, the newest revision winning, only from the orders service."""

from __future__ import annotations

import uuid

import grpc
from google.protobuf import any_pb2

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from tests.identity import ISSUER, metadata
from tests.pharmacy.helpers import (
    DOMAIN,
    PHARMACIST,
    Pharmacy,
    changed,
    create_medication,
    deliver,
    dispensing,
    medication_request,
    receive,
)
from tests.support import fails, invalid_in


async def _ready(pharmacy: Pharmacy, location: str) -> tuple[str, str]:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, location, 100)
    return medication.name, item.name


async def _remaining(pharmacy: Pharmacy, order: str, item: str) -> int:
    """What the copy allows now: dispense one unit, read the remaining, cancel it again."""
    dispense = await pharmacy.DispenseMedication(
        dispensing(order, 1, stock_item=item), metadata=PHARMACIST
    )
    await pharmacy.CancelMedicationDispense(
        pb.CancelMedicationDispenseRequest(name=dispense.name, reason="probe"), metadata=PHARMACIST
    )
    return dispense.prescription_remaining_quantity + 1


async def test_a_delivered_prescription_can_be_dispensed(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _ready(pharmacy, pharmacy_location)
    order = medication_request(medication, quantity=7.9, refills=2)
    reply = await deliver(pharmacy, changed(order, 1))
    assert (reply.applied, reply.duplicates) == (1, 0)
    # 7 whole units each time (never more than written), three times.
    assert await _remaining(pharmacy, order.name, item) == 21


async def test_a_repeated_delivery_changes_nothing(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _ready(pharmacy, pharmacy_location)
    order = medication_request(medication, quantity=5)
    event = changed(order, 1)
    await deliver(pharmacy, event)
    again = await deliver(pharmacy, event, event)
    assert (again.applied, again.duplicates) == (0, 2)
    assert await _remaining(pharmacy, order.name, item) == 5


async def test_an_older_revision_arriving_late_changes_nothing(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _ready(pharmacy, pharmacy_location)
    first = medication_request(medication, quantity=5)
    cancelled = orders_pb.MedicationRequest()
    cancelled.CopyFrom(first)
    cancelled.status = orders_pb.MEDICATION_REQUEST_STATUS_CANCELLED
    reply = await deliver(pharmacy, changed(cancelled, 2), changed(first, 1))
    assert (reply.applied, reply.duplicates) == (2, 0)
    failure = await fails(
        pharmacy.DispenseMedication(dispensing(first.name, 1, stock_item=item), metadata=PHARMACIST)
    )
    assert failure.reason == "PRESCRIPTION_NOT_ACTIVE"


async def test_a_newer_revision_replaces_the_copy_and_keeps_what_was_dispensed(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _ready(pharmacy, pharmacy_location)
    order = medication_request(medication, quantity=5)
    await deliver(pharmacy, changed(order, 1))
    await pharmacy.DispenseMedication(
        dispensing(order.name, 3, stock_item=item), metadata=PHARMACIST
    )
    more = orders_pb.MedicationRequest()
    more.CopyFrom(order)
    more.refills = 1
    await deliver(pharmacy, changed(more, 2))
    assert await _remaining(pharmacy, order.name, item) == 7


async def test_only_the_orders_service_delivers(pharmacy: Pharmacy) -> None:
    event = changed(medication_request(f"medications/{uuid.uuid4()}"), 1)
    for token in (ISSUER.service("lab"), ISSUER.staff("PHARMACIST"), ISSUER.staff("DOCTOR")):
        failure = await fails(
            pharmacy.DeliverEvents(
                pb.DeliverEventsRequest(events=[event]), metadata=metadata(token)
            )
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_events_are_named(pharmacy: Pharmacy) -> None:
    order = medication_request(f"medications/{uuid.uuid4()}")
    good = changed(order, 1)
    wrong_source = EventEnvelope()
    wrong_source.CopyFrom(good)
    wrong_source.source = "lab"
    bad_id = EventEnvelope()
    bad_id.CopyFrom(good)
    bad_id.event_id = "not-a-uuid"
    other_type = EventEnvelope()
    other_type.CopyFrom(good)
    other_type.event_type = "his.lab.v1.DiagnosticReportIssued"
    wrong_payload = EventEnvelope()
    wrong_payload.CopyFrom(good)
    wrong_payload.payload.CopyFrom(any_pb2.Any())
    wrong_payload.payload.Pack(orders_pb.ServiceRequestChanged())
    cases = [
        ([], "events"),
        ([good] * 501, "events"),
        ([wrong_source], "events[0].source"),
        ([good, bad_id], "events[1].event_id"),
        ([other_type], "events[0].event_type"),
        ([wrong_payload], "events[0].payload"),
    ]
    for events, field in cases:
        fields = await invalid_in(
            DOMAIN,
            pharmacy.DeliverEvents(
                pb.DeliverEventsRequest(events=events), metadata=metadata(ISSUER.service("orders"))
            ),
        )
        assert field in fields


async def test_a_prescription_that_makes_no_sense_is_refused_and_not_recorded(
    pharmacy: Pharmacy,
) -> None:
    order = medication_request(f"medications/{uuid.uuid4()}", quantity=0.5)
    order.patient = "people/1"
    event = changed(order, 1)
    good = changed(medication_request(f"medications/{uuid.uuid4()}"), 1)
    fields = await invalid_in(DOMAIN, deliver(pharmacy, good, event))
    assert "events[1].payload.medication_request.patient" in fields
    assert "events[1].payload.medication_request.dispense_quantity.value" in fields
    # The event before the refused one stays applied: its redelivery is a duplicate.
    assert (await deliver(pharmacy, good)).duplicates == 1
    # Refused, so not recorded as applied: a corrected delivery of the same id is applied.
    order.patient = f"patients/{uuid.uuid4()}"
    order.dispense_quantity.value = 2
    fixed = changed(order, 1)
    fixed.event_id = event.event_id
    assert (await deliver(pharmacy, fixed)).applied == 1


async def test_a_status_this_build_does_not_know_is_not_dispensable(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication, item = await _ready(pharmacy, pharmacy_location)
    order = medication_request(medication, quantity=5)
    await deliver(pharmacy, changed(order, 1))
    later = orders_pb.MedicationRequest()
    later.CopyFrom(order)
    later.status = 99  # type: ignore[assignment]  # a status orders added after this build
    assert (await deliver(pharmacy, changed(later, 2))).applied == 1
    failure = await fails(
        pharmacy.DispenseMedication(dispensing(order.name, 1, stock_item=item), metadata=PHARMACIST)
    )
    assert failure.reason == "PRESCRIPTION_NOT_ACTIVE"
    assert failure.metadata["status"] == "unknown"
