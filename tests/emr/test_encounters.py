"""Encounters: open, read, list, change and move through the FHIR status machine."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as pb
from tests.emr.helpers import (
    DOMAIN,
    Clinic,
    Emr,
    Patients,
    encounter,
    missing,
    new_patient,
    open_encounter,
    request_id,
)
from tests.support import fails, invalid_in

S = pb


async def test_a_doctor_opens_an_encounter_and_reads_it_back(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    patient = await new_patient(patients)
    made = await open_encounter(emr, doctor, patient, clinic.clinic)
    assert made.name.startswith("encounters/")
    assert made.status == S.ENCOUNTER_STATUS_ARRIVED
    assert made.attending_practitioner == doctor.name
    assert made.etag == "1"
    assert not made.HasField("period") or not made.period.HasField("start_time")
    got = await emr.GetEncounter(S.GetEncounterRequest(name=made.name), metadata=doctor.md)
    assert got == made


async def test_a_repeated_create_with_the_same_request_id_returns_the_first_encounter(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    request = S.CreateEncounterRequest(
        encounter=encounter(await new_patient(patients), clinic.clinic, doctor.name),
        request_id=request_id(),
    )
    first = await emr.CreateEncounter(request, metadata=doctor.md)
    again = await emr.CreateEncounter(request, metadata=doctor.md)
    assert again.name == first.name
    request.encounter.sensitive = True
    fields = await invalid_in(DOMAIN, emr.CreateEncounter(request, metadata=doctor.md))
    assert fields == ["request_id"]


async def test_a_surgical_department_makes_the_encounter_surgical(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    ward_doctor = clinic.ward_doctor
    assert ward_doctor is not None
    made = await open_encounter(
        emr,
        ward_doctor,
        await new_patient(patients),
        clinic.surgical_ward,
        encounter_class=S.ENCOUNTER_CLASS_INPATIENT,
        status=S.ENCOUNTER_STATUS_PLANNED,
    )
    assert made.surgical
    assert made.encounter_class == S.ENCOUNTER_CLASS_INPATIENT


async def test_bad_encounters_are_refused_naming_each_field(emr: Emr, clinic: Clinic) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    bad = S.Encounter(
        patient="people/1",
        department="departments/not-a-uuid",
        attending_practitioner="staff",
        appointment="appointments/x",
        encounter_class=99,  # type: ignore[arg-type]
        status=S.ENCOUNTER_STATUS_FINISHED,
    )
    fields = await invalid_in(
        DOMAIN,
        emr.CreateEncounter(
            S.CreateEncounterRequest(encounter=bad, request_id=" padded "), metadata=doctor.md
        ),
    )
    assert set(fields) == {
        "encounter.patient",
        "encounter.department",
        "encounter.attending_practitioner",
        "encounter.appointment",
        "encounter.encounter_class",
        "encounter.status",
        "request_id",
    }
    assert await invalid_in(
        DOMAIN, emr.CreateEncounter(S.CreateEncounterRequest(), metadata=doctor.md)
    ) == ["encounter"]


async def test_an_unknown_patient_department_or_practitioner_is_a_failed_precondition(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    patient = await new_patient(patients)
    cases = {
        "PATIENT_NOT_FOUND": encounter(missing("patients"), clinic.clinic, doctor.name),
        "DEPARTMENT_NOT_FOUND": encounter(patient, missing("departments"), doctor.name),
        "PRACTITIONER_NOT_FOUND": encounter(patient, clinic.clinic, missing("staff")),
        "APPOINTMENT_NOT_FOUND": encounter(
            patient, clinic.clinic, doctor.name, appointment=missing("appointments")
        ),
    }
    for reason, bad in cases.items():
        failure = await fails(
            emr.CreateEncounter(S.CreateEncounterRequest(encounter=bad), metadata=doctor.md)
        )
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION, (reason, failure)
        assert failure.reason == reason


async def test_get_of_a_missing_or_malformed_encounter(emr: Emr, clinic: Clinic) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    # A clinician's access depends on the record: a missing one is refused like one of another
    # department, so a refusal never tells whether an encounter exists.
    failure = await fails(
        emr.GetEncounter(S.GetEncounterRequest(name=missing("encounters")), metadata=doctor.md)
    )
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "DEPARTMENT_MISMATCH"
    assert await invalid_in(
        DOMAIN, emr.GetEncounter(S.GetEncounterRequest(name="encounters/1"), metadata=doctor.md)
    ) == ["name"]


async def test_the_status_machine_planned_in_progress_finished(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    made = await open_encounter(
        emr, doctor, await new_patient(patients), clinic.clinic, status=S.ENCOUNTER_STATUS_PLANNED
    )
    stale = await fails(
        emr.StartEncounter(S.StartEncounterRequest(name=made.name, etag="7"), metadata=doctor.md)
    )
    assert stale.code == grpc.StatusCode.ABORTED
    early = await fails(
        emr.FinishEncounter(S.FinishEncounterRequest(name=made.name), metadata=doctor.md)
    )
    assert early.code == grpc.StatusCode.FAILED_PRECONDITION
    started = await emr.StartEncounter(
        S.StartEncounterRequest(name=made.name, etag=made.etag), metadata=doctor.md
    )
    assert started.status == S.ENCOUNTER_STATUS_IN_PROGRESS
    assert started.period.HasField("start_time")
    again = await emr.StartEncounter(
        S.StartEncounterRequest(name=made.name, etag="1"), metadata=doctor.md
    )
    assert again == started
    cancel = await fails(
        emr.CancelEncounter(
            S.CancelEncounterRequest(name=made.name, reason="patient left"), metadata=doctor.md
        )
    )
    assert cancel.code == grpc.StatusCode.FAILED_PRECONDITION
    finished = await emr.FinishEncounter(
        S.FinishEncounterRequest(name=made.name), metadata=doctor.md
    )
    assert finished.status == S.ENCOUNTER_STATUS_FINISHED
    assert finished.period.HasField("end_time")
    assert (
        await emr.FinishEncounter(S.FinishEncounterRequest(name=made.name), metadata=doctor.md)
        == finished
    )


async def test_an_encounter_without_attending_cannot_start(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    made = await open_encounter(
        emr, doctor, await new_patient(patients), clinic.clinic, attending=""
    )
    failure = await fails(
        emr.StartEncounter(S.StartEncounterRequest(name=made.name), metadata=doctor.md)
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "ATTENDING_REQUIRED"


async def test_cancel_keeps_the_first_reason_and_closes_the_encounter(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    assert await invalid_in(
        DOMAIN,
        emr.CancelEncounter(S.CancelEncounterRequest(name=made.name), metadata=doctor.md),
    ) == ["reason"]
    cancelled = await emr.CancelEncounter(
        S.CancelEncounterRequest(name=made.name, reason="patient went home"), metadata=doctor.md
    )
    assert cancelled.status == S.ENCOUNTER_STATUS_CANCELLED
    assert cancelled.cancel_reason == "patient went home"
    again = await emr.CancelEncounter(
        S.CancelEncounterRequest(name=made.name, reason="another"), metadata=doctor.md
    )
    assert again.cancel_reason == "patient went home"
    start = await fails(
        emr.StartEncounter(S.StartEncounterRequest(name=made.name), metadata=doctor.md)
    )
    assert start.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_encounter_on_the_wrong_patient_is_entered_in_error_not_deleted(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    patient = await new_patient(patients)
    made = await open_encounter(emr, doctor, patient, clinic.clinic)
    withdrawn = await emr.MarkEncounterEnteredInError(
        S.MarkEncounterEnteredInErrorRequest(name=made.name, reason="opened on the wrong patient"),
        metadata=doctor.md,
    )
    assert withdrawn.status == S.ENCOUNTER_STATUS_ENTERED_IN_ERROR
    assert withdrawn.entered_in_error_reason == "opened on the wrong patient"
    # Still readable, left out of lists unless asked for, and closed for writing.
    assert (
        await emr.GetEncounter(S.GetEncounterRequest(name=made.name), metadata=doctor.md)
    ).status == S.ENCOUNTER_STATUS_ENTERED_IN_ERROR
    listed = await emr.ListEncounters(S.ListEncountersRequest(patient=patient), metadata=doctor.md)
    assert made.name not in [e.name for e in listed.encounters]
    asked = await emr.ListEncounters(
        S.ListEncountersRequest(patient=patient, statuses=[S.ENCOUNTER_STATUS_ENTERED_IN_ERROR]),
        metadata=doctor.md,
    )
    assert [e.name for e in asked.encounters] == [made.name]
    note = await fails(
        emr.CreateNote(
            S.CreateNoteRequest(
                parent=made.name,
                note=S.ClinicalNote(
                    note_type=types_pb2.Coding(system="http://loinc.org", code="11506-3"),
                    text="late entry",
                ),
            ),
            metadata=doctor.md,
        )
    )
    assert note.code == grpc.StatusCode.FAILED_PRECONDITION
    assert note.reason == "ENCOUNTER_ENTERED_IN_ERROR"
    update = await fails(
        emr.UpdateEncounter(
            S.UpdateEncounterRequest(
                encounter=S.Encounter(name=made.name, encounter_class=S.ENCOUNTER_CLASS_VIRTUAL),
                update_mask=FieldMask(paths=["encounter_class"]),
            ),
            metadata=doctor.md,
        )
    )
    assert update.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_update_changes_the_masked_fields_and_checks_the_etag(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, colleague = clinic.doctor, clinic.colleague
    assert doctor is not None and colleague is not None
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    changed = await emr.UpdateEncounter(
        S.UpdateEncounterRequest(
            encounter=S.Encounter(
                name=made.name,
                attending_practitioner=colleague.name,
                sensitive=True,
                etag=made.etag,
            ),
            update_mask=FieldMask(paths=["attending_practitioner", "sensitive"]),
        ),
        metadata=doctor.md,
    )
    assert changed.attending_practitioner == colleague.name
    assert changed.sensitive
    assert changed.etag == "2"
    stale = await fails(
        emr.UpdateEncounter(
            S.UpdateEncounterRequest(
                encounter=S.Encounter(name=made.name, sensitive=False, etag=made.etag),
                update_mask=FieldMask(paths=["sensitive"]),
            ),
            metadata=doctor.md,
        )
    )
    assert stale.code == grpc.StatusCode.ABORTED
    fields = await invalid_in(
        DOMAIN,
        emr.UpdateEncounter(
            S.UpdateEncounterRequest(
                encounter=S.Encounter(name=made.name), update_mask=FieldMask(paths=["patient"])
            ),
            metadata=doctor.md,
        ),
    )
    assert fields == ["update_mask"]
    unknown = await fails(
        emr.UpdateEncounter(
            S.UpdateEncounterRequest(
                encounter=S.Encounter(name=made.name, attending_practitioner=missing("staff")),
                update_mask=FieldMask(paths=["attending_practitioner"]),
            ),
            metadata=doctor.md,
        )
    )
    assert unknown.code == grpc.StatusCode.FAILED_PRECONDITION
    assert unknown.reason == "PRACTITIONER_NOT_FOUND"


async def test_a_patients_encounters_are_listed_newest_first_in_pages(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    patient = await new_patient(patients)
    made = [(await open_encounter(emr, doctor, patient, clinic.clinic)).name for _ in range(5)]
    seen: list[str] = []
    request = S.ListEncountersRequest(patient=patient, page_size=2)
    while True:
        page = await emr.ListEncounters(request, metadata=doctor.md)
        assert len(page.encounters) <= 2
        seen += [e.name for e in page.encounters]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == list(reversed(made))
    other = await fails(
        emr.ListEncounters(
            S.ListEncountersRequest(
                patient=await new_patient(patients), page_token=request.page_token
            ),
            metadata=doctor.md,
        )
    )
    assert other.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_practitioners_open_encounters_today(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    colleague = clinic.colleague
    assert colleague is not None
    opened = await open_encounter(emr, colleague, await new_patient(patients), clinic.clinic)
    done = await open_encounter(emr, colleague, await new_patient(patients), clinic.clinic)
    await emr.StartEncounter(S.StartEncounterRequest(name=done.name), metadata=colleague.md)
    await emr.FinishEncounter(S.FinishEncounterRequest(name=done.name), metadata=colleague.md)
    zone = "Asia/Shanghai"
    today = dt.datetime.now(ZoneInfo(zone)).date()
    page = await emr.ListEncounters(
        S.ListEncountersRequest(
            attending_practitioner=colleague.name,
            statuses=[
                S.ENCOUNTER_STATUS_PLANNED,
                S.ENCOUNTER_STATUS_ARRIVED,
                S.ENCOUNTER_STATUS_IN_PROGRESS,
            ],
            day=types_pb2.Date(year=today.year, month=today.month, day=today.day),
            time_zone=zone,
        ),
        metadata=colleague.md,
    )
    names = [e.name for e in page.encounters]
    assert opened.name in names
    assert done.name not in names
    yesterday = today - dt.timedelta(days=2)
    old = await emr.ListEncounters(
        S.ListEncountersRequest(
            attending_practitioner=colleague.name,
            day=types_pb2.Date(year=yesterday.year, month=yesterday.month, day=yesterday.day),
            time_zone=zone,
        ),
        metadata=colleague.md,
    )
    assert not old.encounters
    fields = await invalid_in(
        DOMAIN,
        emr.ListEncounters(
            S.ListEncountersRequest(
                day=types_pb2.Date(year=2026, month=2, day=30),
                page_size=-1,
                statuses=[42],  # type: ignore[list-item]
            ),
            metadata=colleague.md,
        ),
    )
    assert set(fields) == {"day", "time_zone", "page_size", "statuses[0]"}
