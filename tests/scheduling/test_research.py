"""ListResearchAppointments: every appointment, de-identified, joinable with research patients."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass, field

import grpc
import pytest

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.pseudonyms import Pseudonyms
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.conftest import service_config
from tests.identity import ISSUER, channel_as, metadata
from tests.scheduling.helpers import (
    DOMAIN,
    SERVICE_TYPE_SYSTEM,
    Patients,
    Stub,
    active_patient,
    book,
    date,
    future_slots,
    invalid,
    tomorrow,
)
from tests.support import delivered, fails

ADMIN_ID = str(uuid.uuid4())
ADMIN = ISSUER.staff("ADMINISTRATOR", staff_id=ADMIN_ID)


def _pseudonym(patient: str) -> str:
    """The pseudonym the session's services give `patients/{id}`."""
    return Pseudonyms.from_config(service_config("scheduling").research).patient(
        patient.split("/")[1]
    )


@dataclass
class Export:
    """Everything ListResearchAppointments returned, page by page."""

    appointments: list[pb.ResearchAppointment] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)
    pages: int = 0
    wire: bytes = b""

    def of(self, patient: str) -> list[pb.ResearchAppointment]:
        """The appointments of one patient."""
        pseudonym = _pseudonym(patient)
        return [a for a in self.appointments if a.patient_pseudonym == pseudonym]


async def _export(stub: Stub, *, page_size: int = 500, time_zone: str = "") -> Export:
    """Every research appointment, following next_page_token to the end."""
    export = Export()
    page_token = ""
    while True:
        reply = await stub.ListResearchAppointments(
            pb.ListResearchAppointmentsRequest(
                page_size=page_size, page_token=page_token, time_zone=time_zone
            ),
            metadata=metadata(ADMIN),
        )
        export.pages += 1
        export.appointments.extend(reply.research_appointments)
        export.key_ids.add(reply.pseudonym_key_id)
        export.wire += reply.SerializeToString()
        page_token = reply.next_page_token
        if not page_token:
            return export


async def test_appointments_are_listed_with_a_pseudonym_and_a_start_date_only(
    scheduling: Stub, patients: Patients
) -> None:
    made = await future_slots(scheduling, count=2, opens=(7, 0))
    patient = await active_patient(patients)
    first = await book(scheduling, patient, made.slots[0])
    second = await book(scheduling, patient, made.slots[1])
    await scheduling.CancelAppointment(
        pb.CancelAppointmentRequest(name=second.name, reason="patient called to cancel")
    )

    shanghai = await _export(scheduling, time_zone="Asia/Shanghai")
    utc = await _export(scheduling)

    day = tomorrow()
    expected = [
        pb.ResearchAppointment(
            patient_pseudonym=_pseudonym(patient),
            department=made.schedule.department,
            service_type=made.schedule.service_type,
            start_date=date(day),
            status=status,
        )
        for status in (pb.APPOINTMENT_STATUS_BOOKED, pb.APPOINTMENT_STATUS_CANCELLED)
    ]
    assert shanghai.of(patient) == expected
    # 07:00 in Shanghai is 23:00 UTC the day before: the date follows the requested zone.
    assert [a.start_date for a in utc.of(patient)] == [date(day - dt.timedelta(days=1))] * 2
    for secret in (
        patient.split("/")[1],
        first.name.split("/")[1],
        made.slot.name.split("/")[1],
        made.schedule.practitioner.split("/")[1],
        "patient called to cancel",
    ):
        assert secret.encode() not in shanghai.wire, secret
    assert set(pb.ResearchAppointment.DESCRIPTOR.fields_by_name) == {
        "patient_pseudonym",
        "department",
        "service_type",
        "start_date",
        "status",
    }
    assert made.schedule.service_type.system == SERVICE_TYPE_SYSTEM


async def test_pseudonyms_join_with_the_research_patients_of_the_patient_service(
    scheduling: Stub, patients: Patients
) -> None:
    made = await future_slots(scheduling)
    patient = await active_patient(patients)
    await book(scheduling, patient, made.slot)
    await patients.GrantConsent(
        patient_pb.GrantConsentRequest(
            parent=patient,
            consent=patient_pb.Consent(
                scope=patient_pb.CONSENT_SCOPE_RESEARCH, purpose=patient_pb.PURPOSE_OF_USE_RESEARCH
            ),
        )
    )

    appointments = await _export(scheduling)
    research_patients: list[patient_pb.ResearchPatient] = []
    key_ids: set[str] = set()
    page_token = ""
    while True:
        reply = await patients.ListResearchPatients(
            patient_pb.ListResearchPatientsRequest(page_size=500, page_token=page_token),
            metadata=metadata(ADMIN),
        )
        research_patients.extend(reply.research_patients)
        key_ids.add(reply.pseudonym_key_id)
        page_token = reply.next_page_token
        if not page_token:
            break

    assert key_ids == appointments.key_ids
    mine = [p for p in research_patients if p.pseudonym == _pseudonym(patient)]
    assert len(mine) == 1
    assert [a.patient_pseudonym for a in appointments.of(patient)] == [mine[0].pseudonym]


async def test_pages_cover_the_list_once_in_order(scheduling: Stub, patients: Patients) -> None:
    made = await future_slots(scheduling, count=3)
    for slot in made.slots:
        await book(scheduling, await active_patient(patients), slot)

    whole = await _export(scheduling)
    paged = await _export(scheduling, page_size=2)

    assert paged.appointments == whole.appointments
    assert paged.pages == math.ceil(len(whole.appointments) / 2)
    assert len(whole.key_ids) == 1


async def test_a_page_token_only_continues_the_same_time_zone(
    scheduling: Stub, patients: Patients
) -> None:
    made = await future_slots(scheduling, count=2)
    for slot in made.slots:
        await book(scheduling, await active_patient(patients), slot)
    first = await scheduling.ListResearchAppointments(
        pb.ListResearchAppointmentsRequest(page_size=1), metadata=metadata(ADMIN)
    )
    assert first.next_page_token

    for token, zone in ((first.next_page_token, "Asia/Shanghai"), ("garbage", "")):
        fields = await invalid(
            scheduling.ListResearchAppointments(
                pb.ListResearchAppointmentsRequest(page_token=token, time_zone=zone),
                metadata=metadata(ADMIN),
            )
        )
        assert fields == ["page_token"]


async def test_bad_page_size_and_time_zone_are_named(scheduling: Stub) -> None:
    fields = await invalid(
        scheduling.ListResearchAppointments(
            pb.ListResearchAppointmentsRequest(page_size=-5, time_zone="Mars/Olympus"),
            metadata=metadata(ADMIN),
        )
    )

    assert sorted(fields) == ["page_size", "time_zone"]


@pytest.mark.parametrize("role", ["REGISTRAR", "DOCTOR", "BILLING_CLERK"])
async def test_only_administrators_may_list_research_appointments(
    scheduling: Stub, role: str
) -> None:
    failure = await fails(
        scheduling.ListResearchAppointments(
            pb.ListResearchAppointmentsRequest(), metadata=metadata(ISSUER.staff(role))
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.domain == DOMAIN


async def test_every_exported_appointment_is_audited(
    scheduling: Stub, patients: Patients, audit_service: RunningService
) -> None:
    made = await future_slots(scheduling)
    patient = await active_patient(patients)
    appointment = await book(scheduling, patient, made.slot)

    await _export(scheduling)

    await delivered()
    async with channel_as(audit_service.address, ISSUER.staff("AUDITOR")) as channel:
        reply = await audit_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb.ListAuditEventsRequest(
                patient=patient,
                agent_staff=f"staff/{ADMIN_ID}",
                action=audit_pb.AUDIT_EVENT_ACTION_EXECUTE,
            )
        )
    assert [(e.entity.resource_name, e.entity.resource_type) for e in reply.audit_events] == [
        (appointment.name, "his.scheduling.v1.ResearchAppointment")
    ]
    assert reply.audit_events[0].operation.endswith("SchedulingService/ListResearchAppointments")
    assert reply.audit_events[0].purpose_of_use == audit_pb.PURPOSE_OF_USE_RESEARCH
