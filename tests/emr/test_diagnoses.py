"""Diagnoses: ICD-10 codes, FHIR statuses, one principal diagnosis, entered-in-error not deleted."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as pb
from tests.emr.helpers import (
    DOMAIN,
    Clinic,
    Clinician,
    Emr,
    Patients,
    diagnosis,
    missing,
    new_patient,
    open_encounter,
    request_id,
)
from tests.support import fails, invalid_in


async def _encounter(emr: Emr, patients: Patients, clinic: Clinic) -> tuple[Clinician, str]:
    doctor = clinic.doctor
    assert doctor is not None
    made = await open_encounter(emr, doctor, await new_patient(patients), clinic.clinic)
    return doctor, made.name


async def test_a_diagnosis_is_recorded_read_and_listed_by_rank(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    secondary = await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("E11.9", rank=2)),
        metadata=doctor.md,
    )
    principal_request = diagnosis(
        "I10", rank=1, verification=pb.CONDITION_VERIFICATION_STATUS_PROVISIONAL
    )
    principal_request.onset_date.CopyFrom(types_pb2.Date(year=2019, month=3))
    principal = await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=principal_request), metadata=doctor.md
    )
    assert principal.recorder == doctor.name
    assert principal.onset_date == types_pb2.Date(year=2019, month=3)
    assert principal.code.system == "http://hl7.org/fhir/sid/icd-10"
    got = await emr.GetDiagnosis(pb.GetDiagnosisRequest(name=principal.name), metadata=doctor.md)
    assert got == principal
    listed = await emr.ListDiagnoses(pb.ListDiagnosesRequest(parent=encounter), metadata=doctor.md)
    assert [d.name for d in listed.diagnoses] == [principal.name, secondary.name]


async def test_one_principal_diagnosis_and_one_of_each_code(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    first = await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("J18.9", rank=1)),
        metadata=doctor.md,
    )
    second_principal = await fails(
        emr.AddDiagnosis(
            pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("J44.1", rank=1)),
            metadata=doctor.md,
        )
    )
    assert second_principal.code == grpc.StatusCode.FAILED_PRECONDITION
    assert second_principal.reason == "PRINCIPAL_DIAGNOSIS_EXISTS"
    same_code = await fails(
        emr.AddDiagnosis(
            pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("J18.9", rank=3)),
            metadata=doctor.md,
        )
    )
    assert same_code.code == grpc.StatusCode.ALREADY_EXISTS
    # A refuted principal diagnosis makes room for another.
    refuted = await emr.UpdateDiagnosis(
        pb.UpdateDiagnosisRequest(
            diagnosis=pb.Diagnosis(
                name=first.name,
                verification_status=pb.CONDITION_VERIFICATION_STATUS_REFUTED,
                etag=first.etag,
            ),
            update_mask=FieldMask(paths=["verification_status"]),
        ),
        metadata=doctor.md,
    )
    assert refuted.verification_status == pb.CONDITION_VERIFICATION_STATUS_REFUTED
    await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("J44.1", rank=1)),
        metadata=doctor.md,
    )
    back = await fails(
        emr.UpdateDiagnosis(
            pb.UpdateDiagnosisRequest(
                diagnosis=pb.Diagnosis(
                    name=first.name, verification_status=pb.CONDITION_VERIFICATION_STATUS_CONFIRMED
                ),
                update_mask=FieldMask(paths=["verification_status"]),
            ),
            metadata=doctor.md,
        )
    )
    assert back.code == grpc.StatusCode.FAILED_PRECONDITION
    assert back.reason == "PRINCIPAL_DIAGNOSIS_EXISTS"


async def test_a_mistaken_diagnosis_is_entered_in_error_not_deleted(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    made = await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("K35.8")),
        metadata=doctor.md,
    )
    withdrawn = await emr.UpdateDiagnosis(
        pb.UpdateDiagnosisRequest(
            diagnosis=pb.Diagnosis(
                name=made.name,
                verification_status=pb.CONDITION_VERIFICATION_STATUS_ENTERED_IN_ERROR,
            ),
            update_mask=FieldMask(paths=["verification_status"]),
        ),
        metadata=doctor.md,
    )
    assert withdrawn.verification_status == pb.CONDITION_VERIFICATION_STATUS_ENTERED_IN_ERROR
    listed = await emr.ListDiagnoses(pb.ListDiagnosesRequest(parent=encounter), metadata=doctor.md)
    assert not listed.diagnoses
    everything = await emr.ListDiagnoses(
        pb.ListDiagnosesRequest(parent=encounter, include_entered_in_error=True),
        metadata=doctor.md,
    )
    assert [d.name for d in everything.diagnoses] == [made.name]
    frozen = await fails(
        emr.UpdateDiagnosis(
            pb.UpdateDiagnosisRequest(
                diagnosis=pb.Diagnosis(name=made.name, rank=5),
                update_mask=FieldMask(paths=["rank"]),
            ),
            metadata=doctor.md,
        )
    )
    assert frozen.code == grpc.StatusCode.FAILED_PRECONDITION
    # The code may be recorded again, correctly this time.
    await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("K35.8")),
        metadata=doctor.md,
    )


async def test_update_checks_the_etag_and_the_mask(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    made = await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("N39.0")),
        metadata=doctor.md,
    )
    changed = await emr.UpdateDiagnosis(
        pb.UpdateDiagnosisRequest(
            diagnosis=pb.Diagnosis(
                name=made.name,
                clinical_status=pb.CONDITION_CLINICAL_STATUS_RESOLVED,
                etag=made.etag,
            ),
            update_mask=FieldMask(paths=["clinical_status"]),
        ),
        metadata=doctor.md,
    )
    assert changed.clinical_status == pb.CONDITION_CLINICAL_STATUS_RESOLVED
    stale = await fails(
        emr.UpdateDiagnosis(
            pb.UpdateDiagnosisRequest(
                diagnosis=pb.Diagnosis(name=made.name, rank=4, etag=made.etag),
                update_mask=FieldMask(paths=["rank"]),
            ),
            metadata=doctor.md,
        )
    )
    assert stale.code == grpc.StatusCode.ABORTED
    assert await invalid_in(
        DOMAIN,
        emr.UpdateDiagnosis(
            pb.UpdateDiagnosisRequest(
                diagnosis=pb.Diagnosis(name=made.name), update_mask=FieldMask(paths=["code"])
            ),
            metadata=doctor.md,
        ),
    ) == ["update_mask"]
    gone = await fails(
        emr.UpdateDiagnosis(
            pb.UpdateDiagnosisRequest(
                diagnosis=pb.Diagnosis(name=missing(f"{encounter}/diagnoses"), rank=3),
                update_mask=FieldMask(paths=["rank"]),
            ),
            metadata=doctor.md,
        )
    )
    assert gone.code == grpc.StatusCode.NOT_FOUND


async def test_bad_diagnoses_are_refused_naming_each_field(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    bad = pb.Diagnosis(
        code=types_pb2.Coding(system="http://snomed.info/sct", code="e11.9"),
        clinical_status=0,  # type: ignore[arg-type]
        verification_status=pb.CONDITION_VERIFICATION_STATUS_ENTERED_IN_ERROR,
        rank=100,
        onset_date=types_pb2.Date(year=2999, month=1, day=1),
    )
    fields = await invalid_in(
        DOMAIN,
        emr.AddDiagnosis(
            pb.AddDiagnosisRequest(parent=encounter, diagnosis=bad), metadata=doctor.md
        ),
    )
    assert set(fields) == {
        "diagnosis.code.system",
        "diagnosis.code.code",
        "diagnosis.clinical_status",
        "diagnosis.verification_status",
        "diagnosis.rank",
        "diagnosis.onset_date",
    }
    for code in ("E119", "E11.", "11.9", "E11.12345", "É11"):
        got = await invalid_in(
            DOMAIN,
            emr.AddDiagnosis(
                pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis(code)),
                metadata=doctor.md,
            ),
        )
        assert got == ["diagnosis.code.code"], code
    assert await invalid_in(
        DOMAIN, emr.GetDiagnosis(pb.GetDiagnosisRequest(name=encounter), metadata=doctor.md)
    ) == ["name"]
    assert await invalid_in(
        DOMAIN,
        emr.ListDiagnoses(pb.ListDiagnosesRequest(parent="x", page_size=-2), metadata=doctor.md),
    ) == ["parent", "page_size"]


async def test_diagnoses_of_a_cancelled_encounter_cannot_be_written(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    made = await emr.AddDiagnosis(
        pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("R07.4")), metadata=doctor.md
    )
    await emr.CancelEncounter(
        pb.CancelEncounterRequest(name=encounter, reason="wrong clinic"), metadata=doctor.md
    )
    for call in (
        emr.AddDiagnosis(
            pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis("R07.9")),
            metadata=doctor.md,
        ),
        emr.UpdateDiagnosis(
            pb.UpdateDiagnosisRequest(
                diagnosis=pb.Diagnosis(name=made.name, rank=3),
                update_mask=FieldMask(paths=["rank"]),
            ),
            metadata=doctor.md,
        ),
    ):
        failure = await fails(call)
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == "ENCOUNTER_CANCELLED"


async def test_a_replayed_add_returns_the_first_diagnosis(
    emr: Emr, patients: Patients, clinic: Clinic
) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    request = pb.AddDiagnosisRequest(
        parent=encounter, diagnosis=diagnosis("E78.5", rank=1), request_id=request_id()
    )
    results = await asyncio.gather(
        *(emr.AddDiagnosis(request, metadata=doctor.md) for _ in range(10))
    )
    assert len({r.name for r in results}) == 1


async def test_diagnoses_are_listed_in_pages(emr: Emr, patients: Patients, clinic: Clinic) -> None:
    doctor, encounter = await _encounter(emr, patients, clinic)
    made = []
    for rank, code in enumerate(("A09", "B34.9", "C50.9", "D50.9", "F32.9"), start=1):
        added = await emr.AddDiagnosis(
            pb.AddDiagnosisRequest(parent=encounter, diagnosis=diagnosis(code, rank=rank)),
            metadata=doctor.md,
        )
        made.append(added.name)
    seen: list[str] = []
    request = pb.ListDiagnosesRequest(parent=encounter, page_size=2)
    while True:
        page = await emr.ListDiagnoses(request, metadata=doctor.md)
        seen += [d.name for d in page.diagnoses]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == made
