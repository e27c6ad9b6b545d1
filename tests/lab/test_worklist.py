"""ListLabOrders: the laboratory's worklist of its copy of the orders, most urgent first, only
the caller's laboratories."""

from __future__ import annotations

from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from tests.lab.helpers import DOMAIN, Hospital, Lab, Patients, changed, deliver, new_patient, order
from tests.support import invalid_in


async def test_the_worklist_puts_the_most_urgent_first_then_the_oldest(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    routine = order(patient, hospital.laboratory, hospital.doctor.name)
    stat = order(
        patient, hospital.laboratory, hospital.doctor.name, priority=orders_pb.REQUEST_PRIORITY_STAT
    )
    later = order(patient, hospital.laboratory, hospital.doctor.name)
    elsewhere = order(patient, hospital.other_laboratory, hospital.doctor.name)
    for request in (routine, stat, later, elsewhere):
        await deliver(lab, changed(request, 1))
    reply = await lab.ListLabOrders(
        pb.ListLabOrdersRequest(patient=patient), metadata=hospital.tech.md
    )
    assert [r.name for r in reply.service_requests] == [stat.name, routine.name, later.name]
    other = await lab.ListLabOrders(
        pb.ListLabOrdersRequest(patient=patient), metadata=hospital.other_tech.md
    )
    assert [r.name for r in other.service_requests] == [elsewhere.name]


async def test_the_worklist_filters_and_pages(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    made = [
        order(patient, hospital.laboratory, hospital.doctor.name, priority=p)
        for p in (orders_pb.REQUEST_PRIORITY_URGENT,) * 3 + (orders_pb.REQUEST_PRIORITY_ROUTINE,)
    ]
    await deliver(lab, *(changed(r, 1) for r in made))
    names: list[str] = []
    token = ""
    while True:
        reply = await lab.ListLabOrders(
            pb.ListLabOrdersRequest(
                patient=patient,
                laboratory=hospital.laboratory,
                priorities=[orders_pb.REQUEST_PRIORITY_URGENT],
                page_size=2,
                page_token=token,
            ),
            metadata=hospital.tech.md,
        )
        names += [r.name for r in reply.service_requests]
        token = reply.next_page_token
        if not token:
            break
    assert names == [r.name for r in made[:3]]


async def test_a_technician_asking_for_another_laboratory_sees_nothing(
    lab: Lab, patients: Patients, hospital: Hospital
) -> None:
    patient = await new_patient(patients)
    await deliver(lab, changed(order(patient, hospital.other_laboratory, hospital.doctor.name), 1))
    reply = await lab.ListLabOrders(
        pb.ListLabOrdersRequest(patient=patient, laboratory=hospital.other_laboratory),
        metadata=hospital.tech.md,
    )
    assert not reply.service_requests


async def test_bad_worklist_filters_are_named(lab: Lab, hospital: Hospital) -> None:
    fields = await invalid_in(
        DOMAIN,
        lab.ListLabOrders(
            pb.ListLabOrdersRequest(
                page_size=-1,
                laboratory="labs/x",
                statuses=[99],  # type: ignore[list-item]
                priorities=[42],  # type: ignore[list-item]
                page_token="zz",
            ),
            metadata=hospital.tech.md,
        ),
    )
    assert fields == ["page_size", "laboratory", "statuses[0]", "priorities[0]"]
