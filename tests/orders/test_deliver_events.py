"""DeliverEvents: the lab's reports complete lab orders, the pharmacy's dispenses count against
prescriptions and complete them; each event once, the newest revision of a dispense wins, and
only the service an event comes from may deliver it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.lab.v1 import lab_service_pb2 as lab_pb
from his.orders.v1 import orders_service_pb2 as pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.outbox import envelope
from tests.identity import ISSUER, metadata
from tests.orders.events import (
    LAB,
    PHARMACY,
    deliver,
    dispense_changed,
    new_dispense,
    report_issued,
)
from tests.orders.formulary import Formulary
from tests.orders.helpers import (
    DOMAIN,
    Emr,
    Hospital,
    Orders,
    Patients,
    changed_revisions,
    place_lab_order,
    prescribe,
    visit,
)
from tests.support import fails, invalid_in

IN_PROGRESS = pharmacy_pb.MEDICATION_DISPENSE_STATUS_IN_PROGRESS
COMPLETED = pharmacy_pb.MEDICATION_DISPENSE_STATUS_COMPLETED
CANCELLED = pharmacy_pb.MEDICATION_DISPENSE_STATUS_CANCELLED


async def _lab_order(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> pb.ServiceRequest:
    return await place_lab_order(orders, hospital, await visit(patients, emr, hospital))


async def _prescription(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
    refills: int = 1,
) -> pb.MedicationRequest:
    at = await visit(patients, emr, hospital)
    return await prescribe(orders, hospital, at, formulary.active.name, refills=refills)


async def _read(orders: Orders, hospital: Hospital, name: str) -> pb.MedicationRequest:
    assert hospital.doctor is not None
    return await orders.GetMedicationRequest(
        pb.GetMedicationRequestRequest(name=name), metadata=hospital.doctor.md
    )


@pytest.mark.usefixtures("orders_outbox_held")
async def test_the_first_report_completes_the_lab_order_and_a_repeat_changes_nothing(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, orders_db: AsyncEngine
) -> None:
    assert hospital.doctor is not None
    made = await _lab_order(orders, emr, patients, hospital)
    report = "diagnosticReports/2f1c0a8e-36b8-4bd2-9d0c-1bb2a1c7a8f5"
    first = report_issued(made.name, report)
    reply = await orders.DeliverEvents(deliver(first), metadata=LAB)
    assert (reply.applied, reply.duplicates) == (1, 0)
    got = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert (got.status, got.report, got.etag) == (
        pb.SERVICE_REQUEST_STATUS_COMPLETED,
        report,
        "2",
    )
    # The same event again, and an amendment of the report (a new event): nothing changes.
    reply = await orders.DeliverEvents(
        deliver(first, report_issued(made.name, report, revision=2)), metadata=LAB
    )
    assert (reply.applied, reply.duplicates) == (1, 1)
    again = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert again == got
    assert await changed_revisions(orders_db, "his.orders.v1.ServiceRequestChanged", made.name) == [
        1,
        2,
    ]


async def test_a_report_of_a_revoked_order_is_recorded_and_the_order_stays_revoked(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.doctor is not None
    made = await _lab_order(orders, emr, patients, hospital)
    await orders.RevokeServiceRequest(
        pb.RevokeServiceRequestRequest(name=made.name, reason="ordered twice"),
        metadata=hospital.doctor.md,
    )
    reply = await orders.DeliverEvents(deliver(report_issued(made.name)), metadata=LAB)
    assert reply.applied == 1
    got = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert (got.status, got.report) == (pb.SERVICE_REQUEST_STATUS_REVOKED, "")


@pytest.mark.usefixtures("orders_outbox_held")
async def test_dispenses_count_newest_revision_first_and_complete_the_prescription(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
    orders_db: AsyncEngine,
) -> None:
    made = await _prescription(orders, emr, patients, hospital, formulary)  # 15 x (1 + 1)
    first, second = new_dispense(), new_dispense()
    # The first dispense is prepared, then handed over; the handing over arrives first.
    handed = dispense_changed(made.name, first, 15, COMPLETED, 2)
    prepared = dispense_changed(made.name, first, 15, IN_PROGRESS, 1)
    reply = await orders.DeliverEvents(deliver(handed, prepared), metadata=PHARMACY)
    assert (reply.applied, reply.duplicates) == (2, 0)
    now = await _read(orders, hospital, made.name)
    assert (now.status, now.dispensed_quantity.value, now.remaining_quantity.value) == (
        pb.MEDICATION_REQUEST_STATUS_ACTIVE,
        15,
        15,
    )
    # The refill is prepared, then cancelled: the dispensed quantity goes back down.
    await orders.DeliverEvents(
        deliver(dispense_changed(made.name, second, 15, IN_PROGRESS, 1)), metadata=PHARMACY
    )
    assert (await _read(orders, hospital, made.name)).dispensed_quantity.value == 30
    await orders.DeliverEvents(
        deliver(dispense_changed(made.name, second, 15, CANCELLED, 2)), metadata=PHARMACY
    )
    back = await _read(orders, hospital, made.name)
    assert (back.dispensed_quantity.value, back.remaining_quantity.value) == (15, 15)
    # A third dispense handed over reaches 30: the prescription completes itself.
    third = new_dispense()
    await orders.DeliverEvents(
        deliver(
            dispense_changed(made.name, third, 15, IN_PROGRESS, 1),
            dispense_changed(made.name, third, 15, COMPLETED, 2),
        ),
        metadata=PHARMACY,
    )
    done = await _read(orders, hospital, made.name)
    assert (done.status, done.dispensed_quantity.value, done.remaining_quantity.value) == (
        pb.MEDICATION_REQUEST_STATUS_COMPLETED,
        30,
        0,
    )
    revisions = await changed_revisions(
        orders_db, "his.orders.v1.MedicationRequestChanged", made.name
    )
    assert revisions == list(range(1, len(revisions) + 1))
    assert revisions[-1] == int(done.etag)


async def test_a_dispense_beyond_the_prescription_is_kept_and_nothing_remains(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    made = await _prescription(orders, emr, patients, hospital, formulary, refills=0)
    await orders.DeliverEvents(
        deliver(dispense_changed(made.name, new_dispense(), 40, IN_PROGRESS, 1)),
        metadata=PHARMACY,
    )
    over = await _read(orders, hospital, made.name)
    # What happened is recorded as it happened; nothing can remain below zero.
    assert (over.status, over.dispensed_quantity.value, over.remaining_quantity.value) == (
        pb.MEDICATION_REQUEST_STATUS_ACTIVE,
        40,
        0,
    )


async def test_replaying_every_event_twice_changes_nothing(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
) -> None:
    assert hospital.doctor is not None
    lab_order = await _lab_order(orders, emr, patients, hospital)
    made = await _prescription(orders, emr, patients, hospital, formulary)
    one, two = new_dispense(), new_dispense()
    lab_events = [report_issued(lab_order.name)]
    pharmacy_events = [
        dispense_changed(made.name, one, 15, IN_PROGRESS, 1),
        dispense_changed(made.name, one, 15, COMPLETED, 2),
        dispense_changed(made.name, two, 10, IN_PROGRESS, 1),
        dispense_changed(made.name, two, 10, CANCELLED, 2),
    ]
    await orders.DeliverEvents(deliver(*lab_events), metadata=LAB)
    await orders.DeliverEvents(deliver(*pharmacy_events), metadata=PHARMACY)
    order_after = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=lab_order.name), metadata=hospital.doctor.md
    )
    prescription_after = await _read(orders, hospital, made.name)
    for _ in range(2):
        # The whole outbox again, in reverse order this time: every event is a duplicate.
        reply = await orders.DeliverEvents(deliver(*reversed(lab_events)), metadata=LAB)
        assert (reply.applied, reply.duplicates) == (0, 1)
        reply = await orders.DeliverEvents(deliver(*reversed(pharmacy_events)), metadata=PHARMACY)
        assert (reply.applied, reply.duplicates) == (0, 4)
    assert (
        await orders.GetServiceRequest(
            pb.GetServiceRequestRequest(name=lab_order.name), metadata=hospital.doctor.md
        )
        == order_after
    )
    assert await _read(orders, hospital, made.name) == prescription_after
    # The same states as new events (another delivery path, new ids): older revisions lose.
    stale = [
        dispense_changed(made.name, one, 15, IN_PROGRESS, 1),
        dispense_changed(made.name, two, 10, IN_PROGRESS, 1),
    ]
    reply = await orders.DeliverEvents(deliver(*stale), metadata=PHARMACY)
    assert (reply.applied, reply.duplicates) == (2, 0)
    assert await _read(orders, hospital, made.name) == prescription_after


async def test_concurrent_dispense_events_of_one_prescription_all_count(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    made = await _prescription(orders, emr, patients, hospital, formulary, refills=12)
    names = [new_dispense() for _ in range(12)]
    # Twelve pharmacy relays at once, each with one handed-over dispense of 5.
    await asyncio.gather(
        *(
            orders.DeliverEvents(
                deliver(dispense_changed(made.name, name, 5, COMPLETED, 1)), metadata=PHARMACY
            )
            for name in names
        )
    )
    counted = await _read(orders, hospital, made.name)
    assert counted.dispensed_quantity.value == 60
    assert counted.etag == str(1 + 12)


async def test_only_the_source_service_delivers_its_events(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.doctor is not None
    made = await _lab_order(orders, emr, patients, hospital)
    event = report_issued(made.name)
    for who in (
        PHARMACY,
        metadata(ISSUER.service("billing")),
        hospital.doctor.md,
    ):
        failure = await fails(orders.DeliverEvents(deliver(event), metadata=who))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "SERVICE_NOT_PERMITTED",
        )
    got = await orders.GetServiceRequest(
        pb.GetServiceRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert got.status == pb.SERVICE_REQUEST_STATUS_ACTIVE
    # Refused calls recorded nothing: the lab's delivery is the first.
    reply = await orders.DeliverEvents(deliver(event), metadata=LAB)
    assert (reply.applied, reply.duplicates) == (1, 0)


async def test_bad_events_are_refused_naming_each(orders: Orders) -> None:
    assert await invalid_in(DOMAIN, orders.DeliverEvents(deliver(), metadata=LAB)) == ["events"]
    too_many = [report_issued("serviceRequests/x")] * 501
    assert await invalid_in(DOMAIN, orders.DeliverEvents(deliver(*too_many), metadata=LAB)) == [
        "events"
    ]
    good = report_issued(f"serviceRequests/{'0' * 8}-0000-4000-8000-{'0' * 12}")
    bad_id = EventEnvelope()
    bad_id.CopyFrom(good)
    bad_id.event_id = "not-a-uuid"
    wrong_source = EventEnvelope()
    wrong_source.CopyFrom(good)
    wrong_source.source = "pharmacy"
    unknown_type = envelope(lab_pb.DiagnosticReport(), source="lab")
    wrong_payload = EventEnvelope()
    wrong_payload.CopyFrom(good)
    wrong_payload.payload.Pack(lab_pb.DiagnosticReport())
    garbage = EventEnvelope()
    garbage.CopyFrom(good)
    garbage.payload.value = b"\xff\xff\xff\xff"
    fields = await invalid_in(
        DOMAIN,
        orders.DeliverEvents(
            deliver(good, bad_id, wrong_source, unknown_type, wrong_payload, garbage),
            metadata=LAB,
        ),
    )
    assert fields == [
        "events[1].event_id",
        "events[2].source",
        "events[3].event_type",
        "events[4].payload",
        "events[5].payload",
    ]
    # A payload that unpacks but names no order: refused, nothing recorded.
    nameless = report_issued("orders/1")
    assert await invalid_in(DOMAIN, orders.DeliverEvents(deliver(nameless), metadata=LAB)) == [
        "events[0].payload.diagnostic_report.service_request"
    ]
    reply = await orders.DeliverEvents(deliver(good), metadata=LAB)
    assert (reply.applied, reply.duplicates) == (1, 0)
    bad_dispense = dispense_changed(
        "medicationRequests/1",
        "dispenses/1",
        -1,
        0,  # type: ignore[arg-type]
        0,
    )
    assert set(
        await invalid_in(DOMAIN, orders.DeliverEvents(deliver(bad_dispense), metadata=PHARMACY))
    ) == {
        "events[0].payload.medication_dispense.status",
        "events[0].payload.medication_dispense.quantity",
        "events[0].payload.revision",
        "events[0].payload.medication_dispense.name",
        "events[0].payload.medication_dispense.medication_request",
    }


async def test_the_fulfilling_service_itself_may_complete_through_the_rpc(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
) -> None:
    lab_order = await _lab_order(orders, emr, patients, hospital)
    made = await _prescription(orders, emr, patients, hospital, formulary)
    # Each fulfiller completes only its own kind of order.
    wrong = await fails(
        orders.CompleteMedicationRequest(
            pb.CompleteMedicationRequestRequest(name=made.name), metadata=LAB
        )
    )
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NO_CLINICAL_ACCESS")
    done = await orders.CompleteServiceRequest(
        pb.CompleteServiceRequestRequest(name=lab_order.name), metadata=LAB
    )
    assert (done.status, done.etag) == (pb.SERVICE_REQUEST_STATUS_COMPLETED, "2")
    again = await orders.CompleteServiceRequest(
        pb.CompleteServiceRequestRequest(name=lab_order.name), metadata=LAB
    )
    assert again == done
    stale = await fails(
        orders.CompleteMedicationRequest(
            pb.CompleteMedicationRequestRequest(name=made.name, etag="7"), metadata=PHARMACY
        )
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    completed = await orders.CompleteMedicationRequest(
        pb.CompleteMedicationRequestRequest(name=made.name, etag="1"), metadata=PHARMACY
    )
    assert completed.status == pb.MEDICATION_REQUEST_STATUS_COMPLETED
