"""Lists tell a caller nothing about the records it may not see, not even that they exist."""

from __future__ import annotations

import pytest

from his.runtime import pagination
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.scheduling.helpers import active_patient, future_slots
from tests.security.helpers import (
    CALLERS,
    Audit,
    Patients,
    Scheduling,
    audit_events,
    outcome,
)

# Callers the policy lets see none of the appointments below (the pharmacist and the auditor hear
# ROLE_NOT_PERMITTED and NO_CLINICAL_ACCESS for each; the doctor is of another department). A
# service acting as itself lists them: billing reconciles its charges with the check-ins
# (permissions.rego; the mesh lets only billing call ListAppointments as a service).
BLIND = ("PHARMACIST", "AUDITOR", "DOCTOR")


async def test_a_caller_who_may_see_none_of_a_patients_appointments_cannot_count_them(
    patients: Patients, scheduling: Scheduling
) -> None:
    busy = await active_patient(patients)
    for slot in (await future_slots(scheduling, count=3)).slots:
        await scheduling.BookAppointment(pb.BookAppointmentRequest(patient=busy, slot=slot.name))
    idle = await active_patient(patients)

    answers = {}
    for label in BLIND:
        for patient in (busy, idle):
            result = await outcome(
                scheduling.ListAppointments(
                    pb.ListAppointmentsRequest(patient=patient, page_size=1),
                    metadata=CALLERS[label].metadata,
                )
            )
            reply = result.reply
            answers[label, patient] = (
                result.code,
                result.reason,
                len(reply.appointments) if reply else 0,
                bool(reply.next_page_token) if reply else False,
            )

    # The same answer for a patient with three appointments as for one with none.
    assert {label: answers[label, busy] for label in BLIND} == {
        label: answers[label, idle] for label in BLIND
    }


async def test_a_list_through_many_hidden_appointments_ends_early_and_goes_on_from_there(
    patients: Patients, scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SCAN_LIMIT hidden rows a page ends early, with a token that continues the scan (the
    bound keeps a list call's cost in check); following the tokens still finds nothing hidden."""
    monkeypatch.setattr(pagination, "SCAN_LIMIT", 2)
    busy = await active_patient(patients)
    for slot in (await future_slots(scheduling, count=5)).slots:
        await scheduling.BookAppointment(pb.BookAppointmentRequest(patient=busy, slot=slot.name))
    doctor = CALLERS["DOCTOR"].metadata  # of another department: sees none of them

    pages, shown, token = 0, 0, ""
    while True:
        reply = await scheduling.ListAppointments(
            pb.ListAppointmentsRequest(patient=busy, page_size=1, page_token=token),
            metadata=doctor,
        )
        pages += 1
        shown += len(reply.appointments)
        token = reply.next_page_token
        if not token:
            break
        assert pages < 10, "the tokens never end"

    everything = await scheduling.ListAppointments(
        pb.ListAppointmentsRequest(patient=busy, page_size=10)
    )
    assert shown == 0
    assert pages > 1  # the bound was hit: the first page ended early with a token
    assert len(everything.appointments) == 5  # the registrar sees them all


async def test_a_list_leaves_hidden_appointments_out_quietly(
    patients: Patients, scheduling: Scheduling, auditor: Audit
) -> None:
    """Rows a list passes over are not audited as refusals one by one (the caller asked for a
    list, not for them; a trail of refusals would also tell how many there were)."""
    busy = await active_patient(patients)
    for slot in (await future_slots(scheduling, count=4)).slots:
        await scheduling.BookAppointment(pb.BookAppointmentRequest(patient=busy, slot=slot.name))
    before = await audit_events(auditor, patient=busy)

    for label in BLIND:
        reply = await scheduling.ListAppointments(
            pb.ListAppointmentsRequest(patient=busy, page_size=2),
            metadata=CALLERS[label].metadata,
        )
        assert list(reply.appointments) == []
        assert reply.next_page_token == ""

    after = await audit_events(auditor, patient=busy)
    assert len(after) == len(before)
