"""DeactivatePatient and ReactivatePatient: state changes, idempotency, etags, merged records."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from his.patient.v1 import patient_service_pb2 as pb
from tests.patient.helpers import (
    DOMAIN,
    Stub,
    create,
    invalid,
)
from tests.support import fails


async def _deactivate(stub: Stub, name: str, etag: str = "") -> pb.Patient:
    return await stub.DeactivatePatient(pb.DeactivatePatientRequest(name=name, etag=etag))


async def _reactivate(stub: Stub, name: str, etag: str = "") -> pb.Patient:
    return await stub.ReactivatePatient(pb.ReactivatePatientRequest(name=name, etag=etag))


async def test_deactivation_makes_the_patient_inactive(patients: Stub) -> None:
    before = await create(patients)

    after = await _deactivate(patients, before.name, before.etag)

    assert after.state == pb.PATIENT_STATE_INACTIVE
    assert after.etag == str(int(before.etag) + 1)
    assert after.family_name == before.family_name
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == after


async def test_deactivating_an_inactive_patient_changes_nothing(patients: Stub) -> None:
    before = await create(patients)
    inactive = await _deactivate(patients, before.name)

    again = await _deactivate(patients, before.name)

    assert again == inactive


async def test_reactivation_makes_an_inactive_patient_active(patients: Stub) -> None:
    before = await create(patients)
    inactive = await _deactivate(patients, before.name)

    after = await _reactivate(patients, before.name, inactive.etag)

    assert after.state == pb.PATIENT_STATE_ACTIVE
    assert after.etag == str(int(inactive.etag) + 1)
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == after


async def test_reactivating_an_active_patient_changes_nothing(patients: Stub) -> None:
    before = await create(patients)

    after = await _reactivate(patients, before.name)

    assert after == before


async def test_deactivation_with_stale_etag_is_aborted(patients: Stub) -> None:
    before = await create(patients)
    await _deactivate(patients, before.name)
    current = await _reactivate(patients, before.name)

    failure = await fails(_deactivate(patients, before.name, before.etag))

    assert failure.code == grpc.StatusCode.ABORTED
    assert failure.reason == "ETAG_MISMATCH"
    assert failure.domain == DOMAIN
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == current


async def test_reactivation_with_stale_etag_is_aborted(patients: Stub) -> None:
    before = await create(patients)
    inactive = await _deactivate(patients, before.name)

    failure = await fails(_reactivate(patients, before.name, before.etag))

    assert failure.code == grpc.StatusCode.ABORTED
    assert failure.reason == "ETAG_MISMATCH"
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == inactive


async def test_a_retried_deactivation_succeeds_even_with_its_now_stale_etag(
    patients: Stub,
) -> None:
    # The first attempt committed but its reply was lost; the SDK retries (IDEMPOTENT).
    before = await create(patients)
    first = await _deactivate(patients, before.name, before.etag)

    retried = await _deactivate(patients, before.name, before.etag)

    assert retried == first
    assert retried.state == pb.PATIENT_STATE_INACTIVE


async def test_stale_etag_is_aborted_when_the_state_would_change(patients: Stub) -> None:
    before = await create(patients)
    await patients.UpdatePatient(
        pb.UpdatePatientRequest(
            patient=pb.Patient(name=before.name, phone="+8613955555555"),
            update_mask=FieldMask(paths=["phone"]),
        )
    )

    failure = await fails(_deactivate(patients, before.name, before.etag))

    assert failure.code == grpc.StatusCode.ABORTED


@pytest.mark.parametrize("operation", ["deactivate", "reactivate"])
async def test_state_change_of_a_merged_patient_is_a_failed_precondition(
    patients: Stub, operation: str
) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    merged = await patients.MergePatients(
        pb.MergePatientsRequest(name=duplicate.name, survivor=survivor.name)
    )
    change = _deactivate if operation == "deactivate" else _reactivate

    failure = await fails(change(patients, duplicate.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "PATIENT_MERGED"
    assert await patients.GetPatient(pb.GetPatientRequest(name=duplicate.name)) == merged


@pytest.mark.parametrize("operation", ["deactivate", "reactivate"])
async def test_state_change_of_an_unknown_patient_is_not_found(
    patients: Stub, operation: str
) -> None:
    change = _deactivate if operation == "deactivate" else _reactivate

    failure = await fails(change(patients, f"patients/{uuid.uuid4()}"))

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "NOT_FOUND"


@pytest.mark.parametrize("operation", ["deactivate", "reactivate"])
@pytest.mark.parametrize("name", ["", "patients/not-a-uuid", f"foo/{uuid.uuid4()}"])
async def test_state_change_with_malformed_name_is_rejected(
    patients: Stub, operation: str, name: str
) -> None:
    change = _deactivate if operation == "deactivate" else _reactivate

    fields = await invalid(change(patients, name))

    assert fields == ["name"]
