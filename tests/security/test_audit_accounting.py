"""Every access to a patient's data is in the session's audit trail, with who, how and through whom,
and the trail's hash chain stays intact."""

from __future__ import annotations

import uuid

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.scheduling.v1 import scheduling_service_pb2 as pb
from tests.identity import ISSUER, metadata
from tests.scheduling.helpers import future_slots, make_patient
from tests.security.helpers import Audit, Patients, Scheduling, audit_events, operation

READ = audit_pb.AUDIT_EVENT_ACTION_READ
CREATE = audit_pb.AUDIT_EVENT_ACTION_CREATE


async def test_each_read_and_booking_is_audited_with_its_agent_and_relaying_service(
    patients: Patients, scheduling: Scheduling, auditor: Audit
) -> None:
    staff = f"staff/{uuid.uuid4()}"
    me = metadata(ISSUER.staff("REGISTRAR", staff_id=staff.removeprefix("staff/")))
    slot = (await future_slots(scheduling)).slot.name

    created = await patients.CreatePatient(
        patient_pb.CreatePatientRequest(patient=make_patient()), metadata=me
    )
    patient = created.name
    await patients.GetPatient(patient_pb.GetPatientRequest(name=patient), metadata=me)
    listed = await patients.ListPatients(
        patient_pb.ListPatientsRequest(name_prefix=created.family_name), metadata=me
    )
    assert [p.name for p in listed.patients] == [patient]
    booked = await scheduling.BookAppointment(
        pb.BookAppointmentRequest(patient=patient, slot=slot), metadata=me
    )
    await scheduling.GetAppointment(pb.GetAppointmentRequest(name=booked.name), metadata=me)

    # The chain is in order of arrival: each service's relay keeps its own events in order, but
    # patient's and scheduling's relays deliver independently. Compare in the order things happened.
    trail = sorted(
        await audit_events(auditor, patient=patient, agent_staff=staff),
        key=lambda e: e.event_time.ToNanoseconds(),
    )
    seen = [
        (
            e.operation,
            e.action,
            e.agent.on_behalf_of,
            e.agent.service_account,
            e.entity.resource_name,
        )
        for e in trail
    ]
    assert seen == [
        (operation("patient", "CreatePatient"), CREATE, "", "services/patient", patient),
        (operation("patient", "GetPatient"), READ, "", "services/patient", patient),
        (operation("patient", "ListPatients"), READ, "", "services/patient", patient),
        # Scheduling checks the patient as the registrar: the patient service says through whom.
        (
            operation("patient", "GetPatient"),
            READ,
            "services/scheduling",
            "services/patient",
            patient,
        ),
        (
            operation("scheduling", "BookAppointment"),
            CREATE,
            "",
            "services/scheduling",
            booked.name,
        ),
        (operation("scheduling", "GetAppointment"), READ, "", "services/scheduling", booked.name),
    ]
    for event in trail:
        assert list(event.agent.roles) == ["REGISTRAR"]
        assert event.outcome == audit_pb.AUDIT_EVENT_OUTCOME_SUCCESS
        assert event.purpose_of_use == audit_pb.PURPOSE_OF_USE_OPERATIONS
        assert not event.emergency_access
        assert event.trace_id
    # The booking is one trace across scheduling and patient.
    assert trail[3].trace_id == trail[4].trace_id

    chain = await auditor.VerifyChain(audit_pb.VerifyChainRequest())
    assert chain.intact, chain
    assert chain.start_sequence_number == 1
    assert chain.end_sequence_number >= trail[-1].sequence_number
