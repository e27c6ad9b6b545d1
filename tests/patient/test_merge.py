"""MergePatients and UnmergePatient: linking duplicates, idempotency, state rules and undo."""

from __future__ import annotations

import uuid

import grpc
import pytest

from his.patient.v1 import patient_service_pb2 as pb
from tests.patient.helpers import (
    DOMAIN,
    Stub,
    create,
    invalid,
)
from tests.support import fails


async def _merge(stub: Stub, duplicate: str, survivor: str, reason: str = "") -> pb.Patient:
    return await stub.MergePatients(
        pb.MergePatientsRequest(name=duplicate, survivor=survivor, reason=reason)
    )


async def _unmerge(stub: Stub, name: str, reason: str = "") -> pb.Patient:
    return await stub.UnmergePatient(pb.UnmergePatientRequest(name=name, reason=reason))


async def _get(stub: Stub, name: str) -> pb.Patient:
    return await stub.GetPatient(pb.GetPatientRequest(name=name))


async def test_merge_marks_the_duplicate_merged_into_the_survivor(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)

    merged = await _merge(patients, duplicate.name, survivor.name, "same person, typo in name")

    assert merged.name == duplicate.name
    assert merged.state == pb.PATIENT_STATE_MERGED
    assert merged.merged_into == survivor.name
    assert merged.etag == str(int(duplicate.etag) + 1)
    assert merged.family_name == duplicate.family_name
    assert merged.mrn == duplicate.mrn


async def test_merged_duplicate_stays_readable_and_says_where_it_went(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    merged = await _merge(patients, duplicate.name, survivor.name)

    read = await _get(patients, duplicate.name)

    assert read == merged
    assert read.state == pb.PATIENT_STATE_MERGED
    assert read.merged_into == survivor.name


async def test_merge_leaves_the_survivor_unchanged(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)

    await _merge(patients, duplicate.name, survivor.name)

    assert await _get(patients, survivor.name) == survivor


async def test_merging_the_same_pair_again_returns_the_same_result(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    first = await _merge(patients, duplicate.name, survivor.name)

    again = await _merge(patients, duplicate.name, survivor.name, "retry")

    assert again == first
    assert await _get(patients, duplicate.name) == first


async def test_merging_an_inactive_duplicate_is_allowed(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    await patients.DeactivatePatient(pb.DeactivatePatientRequest(name=duplicate.name))

    merged = await _merge(patients, duplicate.name, survivor.name)

    assert merged.state == pb.PATIENT_STATE_MERGED


async def test_merge_into_a_different_survivor_is_a_failed_precondition(patients: Stub) -> None:
    survivor = await create(patients)
    other = await create(patients)
    duplicate = await create(patients)
    merged = await _merge(patients, duplicate.name, survivor.name)

    failure = await fails(_merge(patients, duplicate.name, other.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "ALREADY_MERGED"
    assert failure.domain == DOMAIN
    assert await _get(patients, duplicate.name) == merged


async def test_merge_into_an_inactive_survivor_is_a_failed_precondition(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    await patients.DeactivatePatient(pb.DeactivatePatientRequest(name=survivor.name))

    failure = await fails(_merge(patients, duplicate.name, survivor.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "SURVIVOR_NOT_ACTIVE"
    assert await _get(patients, duplicate.name) == duplicate


async def test_merge_into_a_merged_survivor_is_a_failed_precondition(patients: Stub) -> None:
    final = await create(patients)
    middle = await create(patients)
    duplicate = await create(patients)
    await _merge(patients, middle.name, final.name)

    failure = await fails(_merge(patients, duplicate.name, middle.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "SURVIVOR_NOT_ACTIVE"


async def test_merging_back_into_the_duplicate_is_refused_so_no_cycle_forms(
    patients: Stub,
) -> None:
    a = await create(patients)
    b = await create(patients)
    await _merge(patients, a.name, b.name)

    failure = await fails(_merge(patients, b.name, a.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "SURVIVOR_NOT_ACTIVE"
    assert (await _get(patients, b.name)).state == pb.PATIENT_STATE_ACTIVE


async def test_merging_a_patient_into_itself_is_rejected(patients: Stub) -> None:
    patient = await create(patients)

    fields = await invalid(_merge(patients, patient.name, patient.name))

    assert fields == ["survivor"]
    assert await _get(patients, patient.name) == patient


async def test_merging_into_itself_is_rejected_whatever_the_id_spelling(patients: Stub) -> None:
    patient = await create(patients)
    shouting = "patients/" + patient.name.removeprefix("patients/").upper()

    fields = await invalid(_merge(patients, patient.name, shouting))

    assert fields == ["survivor"]


@pytest.mark.parametrize("missing", ["duplicate", "survivor"])
async def test_merge_with_a_missing_patient_is_not_found(patients: Stub, missing: str) -> None:
    patient = await create(patients)
    ghost = f"patients/{uuid.uuid4()}"
    duplicate, survivor = (ghost, patient.name) if missing == "duplicate" else (patient.name, ghost)

    failure = await fails(_merge(patients, duplicate, survivor))

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert await _get(patients, patient.name) == patient


@pytest.mark.parametrize(
    ("name", "survivor", "reason", "field"),
    [
        ("patients/not-a-uuid", None, "", "name"),
        (f"foo/{uuid.uuid4()}", None, "", "name"),
        ("", None, "", "name"),
        (None, "patients/not-a-uuid", "", "survivor"),
        (None, f"foo/{uuid.uuid4()}", "", "survivor"),
        (None, "", "", "survivor"),
        (None, None, "r" * 501, "reason"),
    ],
)
async def test_merge_with_bad_input_is_rejected_naming_the_field(
    patients: Stub, name: str | None, survivor: str | None, reason: str, field: str
) -> None:
    a = await create(patients)
    b = await create(patients)

    fields = await invalid(
        _merge(
            patients,
            a.name if name is None else name,
            b.name if survivor is None else survivor,
            reason,
        )
    )

    assert fields == [field]


async def test_unmerge_restores_the_active_duplicate(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    merged = await _merge(patients, duplicate.name, survivor.name)

    restored = await _unmerge(patients, duplicate.name, "different people after all")

    assert restored.state == pb.PATIENT_STATE_ACTIVE
    assert restored.merged_into == ""
    assert restored.etag == str(int(merged.etag) + 1)
    assert restored.family_name == duplicate.family_name
    assert await _get(patients, duplicate.name) == restored


async def test_unmerge_restores_an_inactive_duplicate_to_inactive(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    await patients.DeactivatePatient(pb.DeactivatePatientRequest(name=duplicate.name))
    await _merge(patients, duplicate.name, survivor.name)

    restored = await _unmerge(patients, duplicate.name)

    assert restored.state == pb.PATIENT_STATE_INACTIVE
    assert restored.merged_into == ""


async def test_unmerged_duplicate_can_be_merged_again_elsewhere(patients: Stub) -> None:
    first = await create(patients)
    second = await create(patients)
    duplicate = await create(patients)
    await _merge(patients, duplicate.name, first.name)
    await _unmerge(patients, duplicate.name)

    merged = await _merge(patients, duplicate.name, second.name)
    restored = await _unmerge(patients, duplicate.name)

    assert merged.merged_into == second.name
    assert restored.state == pb.PATIENT_STATE_ACTIVE


async def test_unmerge_of_a_patient_that_is_not_merged_is_a_failed_precondition(
    patients: Stub,
) -> None:
    patient = await create(patients)

    failure = await fails(_unmerge(patients, patient.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "NOT_MERGED"
    assert await _get(patients, patient.name) == patient


async def test_second_unmerge_is_a_failed_precondition(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    await _merge(patients, duplicate.name, survivor.name)
    restored = await _unmerge(patients, duplicate.name)

    failure = await fails(_unmerge(patients, duplicate.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "NOT_MERGED"
    assert await _get(patients, duplicate.name) == restored


async def test_unmerge_of_an_unknown_patient_is_not_found(patients: Stub) -> None:
    failure = await fails(_unmerge(patients, f"patients/{uuid.uuid4()}"))

    assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("name", "reason", "field"),
    [
        ("patients/not-a-uuid", "", "name"),
        (f"foo/{uuid.uuid4()}", "", "name"),
        ("", "", "name"),
        (f"patients/{uuid.uuid4()}", "r" * 501, "reason"),
    ],
)
async def test_unmerge_with_bad_input_is_rejected_naming_the_field(
    patients: Stub, name: str, reason: str, field: str
) -> None:
    fields = await invalid(_unmerge(patients, name, reason))

    assert fields == [field]
