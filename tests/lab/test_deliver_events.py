"""DeliverEvents: the orders service's ServiceRequestChanged events keep the laboratory's copy of
its orders, each applied once, the newest revision winning, from the orders service only."""

from __future__ import annotations

import grpc
from google.protobuf.any_pb2 import Any as AnyPayload

from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from tests.identity import ISSUER, metadata
from tests.lab.helpers import (
    DOMAIN,
    Hospital,
    Lab,
    Patients,
    changed,
    deliver,
    new_patient,
    order,
)
from tests.support import fails, invalid_in

ACTIVE = orders_pb.SERVICE_REQUEST_STATUS_ACTIVE
REVOKED = orders_pb.SERVICE_REQUEST_STATUS_REVOKED
COMPLETED = orders_pb.SERVICE_REQUEST_STATUS_COMPLETED


async def _copy(lab: Lab, hospital: Hospital, patient: str) -> list[orders_pb.ServiceRequest]:
    reply = await lab.ListLabOrders(
        pb.ListLabOrdersRequest(patient=patient, statuses=[ACTIVE, REVOKED, COMPLETED]),
        metadata=hospital.tech.md,
    )
    return list(reply.service_requests)


def _with(request: orders_pb.ServiceRequest, status: int) -> orders_pb.ServiceRequest:
    copy = orders_pb.ServiceRequest()
    copy.CopyFrom(request)
    copy.status = status  # type: ignore[assignment]
    return copy


async def test_a_delivered_order_is_in_the_laboratorys_copy(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    request = order(patient, hospital.laboratory, hospital.doctor.name)
    reply = await deliver(lab, changed(request, 1))
    assert (reply.applied, reply.duplicates) == (1, 0)
    assert await _copy(lab, hospital, patient) == [request]


async def test_a_repeated_delivery_changes_nothing(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    request = order(patient, hospital.laboratory, hospital.doctor.name)
    event = changed(request, 1)
    await deliver(lab, event)
    again = await deliver(lab, event, event)
    assert (again.applied, again.duplicates) == (0, 2)
    assert await _copy(lab, hospital, patient) == [request]


async def test_an_older_revision_delivered_late_changes_nothing(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    created = order(patient, hospital.laboratory, hospital.doctor.name)
    revoked = _with(created, REVOKED)
    reply = await deliver(lab, changed(revoked, 2), changed(created, 1))
    assert (reply.applied, reply.duplicates) == (2, 0)
    assert await _copy(lab, hospital, patient) == [revoked]


async def test_a_newer_revision_replaces_the_copy(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    created = order(patient, hospital.laboratory, hospital.doctor.name)
    await deliver(lab, changed(created, 1))
    completed = _with(created, COMPLETED)
    await deliver(lab, changed(completed, 2))
    assert await _copy(lab, hospital, patient) == [completed]


async def test_only_the_orders_service_delivers_orders(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    event = changed(order(patient, hospital.laboratory, hospital.doctor.name), 1)
    for token in (ISSUER.service("pharmacy"), hospital.tech.token, hospital.doctor.token):
        failure = await fails(
            lab.DeliverEvents(pb.DeliverEventsRequest(events=[event]), metadata=metadata(token))
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, token
    assert await _copy(lab, hospital, patient) == []


async def test_an_event_claiming_another_source_is_invalid(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    event = changed(order(patient, hospital.laboratory, hospital.doctor.name), 1)
    event.source = "pharmacy"
    assert await invalid_in(DOMAIN, deliver(lab, event)) == ["events[0].source"]


async def test_bad_events_are_named(lab: Lab, patients: Patients, hospital: Hospital) -> None:
    patient = await new_patient(patients)
    good = changed(order(patient, hospital.laboratory, hospital.doctor.name), 1)
    bad_id = changed(order(patient, hospital.laboratory, hospital.doctor.name), 1)
    bad_id.event_id = "not-a-uuid"
    wrong_type = changed(order(patient, hospital.laboratory, hospital.doctor.name), 1)
    wrong_type.event_type = "his.orders.v1.MedicationRequestChanged"
    wrong_payload = changed(order(patient, hospital.laboratory, hospital.doctor.name), 1)
    payload = AnyPayload()
    payload.Pack(pb.DiagnosticReportIssued())
    wrong_payload.payload.CopyFrom(payload)
    fields = await invalid_in(DOMAIN, deliver(lab, good, bad_id, wrong_type, wrong_payload))
    assert fields == ["events[1].event_id", "events[2].event_type", "events[3].payload"]
    # Nothing of a refused batch is applied, the good event included.
    assert await _copy(lab, hospital, patient) == []


async def test_an_empty_or_oversized_batch_is_invalid(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    assert await invalid_in(DOMAIN, deliver(lab)) == ["events"]
    patient = await new_patient(patients)
    request = order(patient, hospital.laboratory, hospital.doctor.name)
    many = [changed(request, 1) for _ in range(501)]
    assert await invalid_in(DOMAIN, deliver(lab, *many)) == ["events"]
    assert await _copy(lab, hospital, patient) == []


async def test_a_nul_inside_an_event_payload_is_invalid_not_internal(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    request = order(patient, hospital.laboratory, hospital.doctor.name)
    request.code.code = "2345\0-7"
    fields = await invalid_in(DOMAIN, deliver(lab, changed(request, 1)))
    assert fields == ["events[0].payload.service_request.code.code"]
    assert await _copy(lab, hospital, patient) == []
