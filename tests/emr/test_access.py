"""Who may read and write the record, each rule as a named test against the running services."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.emr.v1 import emr_service_pb2 as pb
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.server import RunningService
from tests.emr.helpers import (
    Clinic,
    Clinician,
    Emr,
    Patients,
    diagnosis,
    new_patient,
    note,
    open_encounter,
)
from tests.identity import ISSUER, channel_as
from tests.patient.helpers import grant_request
from tests.security.helpers import AUDITOR, audit_events
from tests.support import fails

DENIED = grpc.StatusCode.PERMISSION_DENIED


def _who(clinician: Clinician | None) -> Clinician:
    assert clinician is not None
    return clinician


async def _refused(call: object, reason: str) -> None:
    failure = await fails(call)  # type: ignore[arg-type]
    assert (failure.code, failure.reason) == (DENIED, reason), failure


async def _grant(clinic: Clinic, clinician: Clinician, patient: str) -> str:
    made = await clinic.iam.CreateEmergencyAccessGrant(
        iam_pb.CreateEmergencyAccessGrantRequest(
            emergency_access_grant=iam_pb.EmergencyAccessGrant(
                patient=patient, reason="Collapsed in the waiting room; history needed now"
            ),
            duration=Duration(seconds=600),
        ),
        metadata=clinician.md,
    )
    return str(made.name)


async def test_the_treating_team_reads_and_writes_the_record(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, colleague, nurse = _who(clinic.doctor), _who(clinic.colleague), _who(clinic.nurse)
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    for member in (colleague, nurse):
        got = await emr.GetEncounter(pb.GetEncounterRequest(name=made.name), metadata=member.md)
        assert got.name == made.name
        await emr.CreateNote(
            pb.CreateNoteRequest(parent=made.name, note=note("seen")), metadata=member.md
        )
    await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=made.name, diagnosis=diagnosis("R51")), metadata=colleague.md
    )


async def test_a_doctor_of_another_department_reads_only_with_care_or_break_the_glass(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, stranger = _who(clinic.doctor), _who(clinic.other_doctor)
    patient = await new_patient(patients)
    made = await open_encounter(emr, doctor, patient, clinic.clinic)
    read = pb.GetEncounterRequest(name=made.name)
    await _refused(emr.GetEncounter(read, metadata=stranger.md), "DEPARTMENT_MISMATCH")
    listed = await emr.ListEncounters(
        pb.ListEncountersRequest(patient=patient), metadata=stranger.md
    )
    assert not listed.encounters
    # A care relationship: the stranger attends an open encounter of the same patient in their
    # own clinic (a referral), and now reads the other clinic's encounter too.
    await open_encounter(emr, stranger, patient, clinic.other_clinic)
    assert (await emr.GetEncounter(read, metadata=stranger.md)).name == made.name


async def test_break_the_glass_opens_another_departments_record_and_is_audited(
    emr: Emr, patients: Patients, clinic: Clinic, audit_service: RunningService
) -> None:
    doctor, stranger = _who(clinic.doctor), _who(clinic.other_doctor)
    patient = await new_patient(patients)
    made = await open_encounter(emr, doctor, patient, clinic.clinic)
    draft = await emr.CreateNote(
        pb.CreateNoteRequest(parent=made.name, note=note("history of anaphylaxis to penicillin")),
        metadata=doctor.md,
    )
    await _refused(
        emr.GetNote(pb.GetNoteRequest(name=draft.name), metadata=stranger.md),
        "DEPARTMENT_MISMATCH",
    )
    grant = await _grant(clinic, stranger, patient)
    seen = await emr.GetNote(pb.GetNoteRequest(name=draft.name), metadata=stranger.md)
    assert seen.name == draft.name
    async with channel_as(audit_service.address, AUDITOR) as channel:
        trail = await audit_events(
            audit_grpc.AuditServiceStub(channel), patient=patient, emergency_only=True
        )
    # The grant itself, then the one read it opened.
    assert [(e.operation.rsplit("/", 1)[1], e.emergency_access_grant) for e in trail] == [
        ("CreateEmergencyAccessGrant", grant),
        ("GetNote", grant),
    ]
    assert trail[1].purpose_of_use == audit_pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT


async def test_an_outpatient_doctor_cannot_read_inpatient_surgical_records(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    outpatient, ward = _who(clinic.doctor), _who(clinic.ward_doctor)
    patient = await new_patient(patients)
    # The outpatient doctor follows the patient in clinic (a care relationship) ...
    await open_encounter(emr, outpatient, patient, clinic.clinic)
    # ... and the surgical ward admits them for an operation.
    stay = await open_encounter(
        emr,
        ward,
        patient,
        clinic.surgical_ward,
        encounter_class=pb.ENCOUNTER_CLASS_INPATIENT,
        status=pb.ENCOUNTER_STATUS_PLANNED,
    )
    assert stay.surgical
    op_note = await emr.CreateNote(
        pb.CreateNoteRequest(parent=stay.name, note=note("Operative note: hip arthroplasty")),
        metadata=ward.md,
    )
    reason = "INPATIENT_SURGICAL_OTHER_DEPARTMENT"
    await _refused(
        emr.GetEncounter(pb.GetEncounterRequest(name=stay.name), metadata=outpatient.md), reason
    )
    await _refused(
        emr.GetNote(pb.GetNoteRequest(name=op_note.name), metadata=outpatient.md), reason
    )
    await _refused(
        emr.ListDiagnoses(pb.ListDiagnosesRequest(parent=stay.name), metadata=outpatient.md), reason
    )
    listed = await emr.ListEncounters(
        pb.ListEncountersRequest(patient=patient), metadata=outpatient.md
    )
    assert stay.name not in [e.name for e in listed.encounters]
    # The ward's own doctor reads it; an outpatient (non-surgical) stay of the ward is open to care.
    assert (
        await emr.GetEncounter(pb.GetEncounterRequest(name=stay.name), metadata=ward.md)
    ).surgical


async def test_nurses_record_but_do_not_sign_doctors_notes(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, nurse = _who(clinic.doctor), _who(clinic.nurse)
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    doctors = await emr.CreateNote(
        pb.CreateNoteRequest(parent=made.name, note=note("Assessment and plan")), metadata=doctor.md
    )
    await _refused(
        emr.SignNote(pb.SignNoteRequest(name=doctors.name), metadata=nurse.md), "NOT_OWN"
    )
    nursing = await emr.CreateNote(
        pb.CreateNoteRequest(parent=made.name, note=note("Vital signs recorded")),
        metadata=nurse.md,
    )
    assert (
        await emr.SignNote(pb.SignNoteRequest(name=nursing.name), metadata=nurse.md)
    ).status == pb.NOTE_STATUS_FINAL
    await _refused(
        emr.AddDiagnosis(
            pb.AddDiagnosisRequest(parent=made.name, diagnosis=diagnosis("R50.9")),
            metadata=nurse.md,
        ),
        "ROLE_NOT_PERMITTED",
    )
    await _refused(
        emr.StartEncounter(pb.StartEncounterRequest(name=made.name), metadata=nurse.md),
        "ROLE_NOT_PERMITTED",
    )


async def test_revoked_consent_stops_clinical_reads_except_emergency_access(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, colleague = _who(clinic.doctor), _who(clinic.colleague)
    patient = await new_patient(patients)
    made = await open_encounter(emr, doctor, patient, clinic.clinic)
    consent = await patients.GrantConsent(
        grant_request(patient, scope=patient_pb.CONSENT_SCOPE_PATIENT_PRIVACY)
    )
    read = pb.GetEncounterRequest(name=made.name)
    assert (await emr.GetEncounter(read, metadata=colleague.md)).name == made.name
    await patients.RevokeConsent(patient_pb.RevokeConsentRequest(name=consent.name))
    await _refused(emr.GetEncounter(read, metadata=colleague.md), "CONSENT_REVOKED")
    await _refused(
        emr.ListNotes(pb.ListNotesRequest(parent=made.name), metadata=colleague.md),
        "CONSENT_REVOKED",
    )
    listed = await emr.ListEncounters(
        pb.ListEncountersRequest(patient=patient), metadata=colleague.md
    )
    assert not listed.encounters
    await _grant(clinic, colleague, patient)
    assert (await emr.GetEncounter(read, metadata=colleague.md)).name == made.name


async def test_auditors_read_the_trail_not_the_record(
    emr: Emr, patients: Patients, clinic: Clinic, audit_service: RunningService
) -> None:
    doctor = _who(clinic.doctor)
    patient = await new_patient(patients)
    made = await open_encounter(emr, doctor, patient, clinic.clinic)
    await emr.GetEncounter(pb.GetEncounterRequest(name=made.name), metadata=doctor.md)
    auditor = ISSUER.staff("AUDITOR", departments=(clinic.clinic,))
    await _refused(
        emr.GetEncounter(
            pb.GetEncounterRequest(name=made.name),
            metadata=(("authorization", f"Bearer {auditor}"),),
        ),
        "NO_CLINICAL_ACCESS",
    )
    async with channel_as(audit_service.address, AUDITOR) as channel:
        trail = await audit_events(audit_grpc.AuditServiceStub(channel), patient=patient)
    seen = [
        (e.operation.rsplit("/", 1)[1], audit_pb.AuditEventOutcome.Name(e.outcome))
        for e in trail
        if "EmrService" in e.operation
    ]
    assert ("CreateEncounter", "AUDIT_EVENT_OUTCOME_SUCCESS") in seen
    assert ("GetEncounter", "AUDIT_EVENT_OUTCOME_SUCCESS") in seen
    assert all(
        e.entity.resource_type.startswith("his.emr.v1.")
        for e in trail
        if "EmrService" in e.operation and e.entity.resource_type
    )


async def test_a_sensitive_encounter_is_hidden_from_carers_outside_its_department(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, stranger = _who(clinic.doctor), _who(clinic.other_doctor)
    patient = await new_patient(patients)
    secret = await open_encounter(emr, doctor, patient, clinic.clinic, sensitive=True)
    await open_encounter(emr, stranger, patient, clinic.other_clinic)
    await _refused(
        emr.GetEncounter(pb.GetEncounterRequest(name=secret.name), metadata=stranger.md),
        "DEPARTMENT_MISMATCH",
    )
    listed = await emr.ListEncounters(
        pb.ListEncountersRequest(patient=patient), metadata=stranger.md
    )
    assert secret.name not in [e.name for e in listed.encounters]
    assert len(listed.encounters) == 1


async def test_a_registrar_sees_no_clinical_record(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = _who(clinic.doctor)
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    # The session channel calls as a registrar by default.
    await _refused(emr.GetEncounter(pb.GetEncounterRequest(name=made.name)), "NO_CLINICAL_ACCESS")


async def test_nobody_moves_an_encounter_where_they_could_not_have_opened_it(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, colleague = _who(clinic.doctor), _who(clinic.colleague)
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    move = pb.UpdateEncounterRequest(
        encounter=pb.Encounter(name=made.name, department=clinic.other_clinic, etag=made.etag),
        update_mask=FieldMask(paths=["department"]),
    )
    # The colleague may update the encounter where it is, not carry it into a department they
    # do not work in and do not attend it for.
    await _refused(emr.UpdateEncounter(move, metadata=colleague.md), "DEPARTMENT_MISMATCH")
    kept = await emr.GetEncounter(pb.GetEncounterRequest(name=made.name), metadata=doctor.md)
    assert (kept.department, kept.etag) == (clinic.clinic, made.etag)
    # The attending transfers their own patient, as they could have opened it there.
    moved = await emr.UpdateEncounter(move, metadata=doctor.md)
    assert moved.department == clinic.other_clinic


async def test_an_outpatient_doctor_cannot_open_an_inpatient_stay_on_a_surgical_ward(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    # The request says "not surgical"; the ward's department kind makes it surgical, and the
    # policy decides on the record as it will be stored: one its creator could not read.
    outpatient = _who(clinic.doctor)
    await _refused(
        open_encounter(
            emr,
            outpatient,
            await new_patient(patients),
            clinic.surgical_ward,
            encounter_class=pb.ENCOUNTER_CLASS_INPATIENT,
            status=pb.ENCOUNTER_STATUS_PLANNED,
            surgical=False,
        ),
        "INPATIENT_SURGICAL_OTHER_DEPARTMENT",
    )
