"""UpdatePatient: update masks, etags, clearing fields, uniqueness and merged records."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from tests.patient.helpers import (
    DOMAIN,
    Stub,
    create,
    invalid,
    make_patient,
    unique_national_id,
    unique_word,
)
from tests.support import fails


def _update(patient: pb.Patient, *paths: str) -> pb.UpdatePatientRequest:
    return pb.UpdatePatientRequest(patient=patient, update_mask=FieldMask(paths=list(paths)))


def _change(name: str, etag: str = "", **fields: Any) -> pb.Patient:
    patient = pb.Patient(name=name, etag=etag)
    for key, value in fields.items():
        if key == "given_names":
            patient.given_names.extend(value)
        elif isinstance(value, types_pb2.Date | types_pb2.Identifier | pb.Address):
            getattr(patient, key).CopyFrom(value)
        else:
            setattr(patient, key, value)
    return patient


async def test_update_changes_only_the_masked_fields_and_bumps_the_version(
    patients: Stub,
) -> None:
    before = await create(patients)
    new_family = unique_word()

    after = await patients.UpdatePatient(
        _update(_change(before.name, before.etag, family_name=new_family), "family_name")
    )

    expected = pb.Patient()
    expected.CopyFrom(before)
    expected.family_name = new_family
    expected.etag = after.etag
    expected.update_time.CopyFrom(after.update_time)
    assert after == expected
    assert int(after.etag) == int(before.etag) + 1
    assert after.update_time.ToDatetime() > before.update_time.ToDatetime()
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == after


async def test_update_of_several_fields_at_once(patients: Stub) -> None:
    before = await create(patients)
    address = pb.Address(lines=["1 Main Street"], city="Shanghai", country="CN")
    change = _change(
        before.name,
        given_names=["Wei", "Jun"],
        gender=pb.ADMINISTRATIVE_GENDER_MALE,
        birth_date=types_pb2.Date(year=1975, month=12, day=31),
        address=address,
    )

    after = await patients.UpdatePatient(
        _update(change, "given_names", "gender", "birth_date", "address")
    )

    assert list(after.given_names) == ["Wei", "Jun"]
    assert after.gender == pb.ADMINISTRATIVE_GENDER_MALE
    assert after.birth_date == types_pb2.Date(year=1975, month=12, day=31)
    assert after.address == address
    assert after.family_name == before.family_name
    assert after.mrn == before.mrn
    assert after.national_id == before.national_id
    assert after.phone == before.phone


async def test_fields_outside_the_mask_are_ignored_even_when_invalid(patients: Stub) -> None:
    before = await create(patients)
    change = _change(before.name, family_name="", gender=99, phone="+8613900000000")

    after = await patients.UpdatePatient(_update(change, "phone"))

    assert after.phone == "+8613900000000"
    assert after.family_name == before.family_name
    assert after.gender == before.gender


async def test_update_without_etag_applies_unconditionally(patients: Stub) -> None:
    before = await create(patients)
    await patients.UpdatePatient(_update(_change(before.name, phone="+8613911111111"), "phone"))

    after = await patients.UpdatePatient(
        _update(_change(before.name, phone="+8613922222222"), "phone")
    )

    assert after.phone == "+8613922222222"
    assert after.etag == str(int(before.etag) + 2)


async def test_update_with_stale_etag_is_aborted_and_changes_nothing(patients: Stub) -> None:
    before = await create(patients)
    current = await patients.UpdatePatient(
        _update(_change(before.name, before.etag, phone="+8613933333333"), "phone")
    )

    failure = await fails(
        patients.UpdatePatient(
            _update(_change(before.name, before.etag, family_name=unique_word()), "family_name")
        )
    )

    assert failure.code == grpc.StatusCode.ABORTED
    assert failure.reason == "ETAG_MISMATCH"
    assert failure.domain == DOMAIN
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == current


async def test_update_with_garbage_etag_is_aborted(patients: Stub) -> None:
    before = await create(patients)

    failure = await fails(
        patients.UpdatePatient(_update(_change(before.name, "W/not-a-version", phone=""), "phone"))
    )

    assert failure.code == grpc.StatusCode.ABORTED
    assert failure.reason == "ETAG_MISMATCH"


@pytest.mark.parametrize(
    "paths",
    [
        ["mrn"],
        ["state"],
        ["name"],
        ["merged_into"],
        ["etag"],
        ["create_time"],
        ["nickname"],
        ["address.city"],
        ["family_name", "state"],
        [],
    ],
    ids=lambda paths: ",".join(paths) or "empty",
)
async def test_unknown_output_only_or_missing_mask_paths_are_rejected(
    patients: Stub, paths: list[str]
) -> None:
    before = await create(patients)
    change = _change(before.name, family_name=unique_word(), state=pb.PATIENT_STATE_INACTIVE)

    fields = await invalid(patients.UpdatePatient(_update(change, *paths)))

    assert set(fields) == {"update_mask"}
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == before


async def test_update_without_mask_field_is_rejected(patients: Stub) -> None:
    before = await create(patients)
    request = pb.UpdatePatientRequest(patient=_change(before.name, family_name=unique_word()))

    fields = await invalid(patients.UpdatePatient(request))

    assert fields == ["update_mask"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("family_name", {"family_name": "x" * 101}, "patient.family_name"),
        ("given_names", {"given_names": ["ok", ""]}, "patient.given_names[1]"),
        ("gender", {"gender": 99}, "patient.gender"),
        (
            "birth_date",
            {"birth_date": types_pb2.Date(year=1990, month=2, day=30)},
            "patient.birth_date",
        ),
        (
            "birth_date",
            {"birth_date": types_pb2.Date(year=1700, month=1, day=1)},
            "patient.birth_date",
        ),
        ("phone", {"phone": "0"}, "patient.phone"),
        ("address", {"address": pb.Address(country="PRC")}, "patient.address.country"),
        (
            "national_id",
            {"national_id": types_pb2.Identifier(value="110101199003074512")},
            "patient.national_id.system",
        ),
    ],
    ids=lambda item: item if isinstance(item, str) else "",
)
async def test_update_with_bad_value_is_rejected_naming_the_field(
    patients: Stub, path: str, value: dict[str, Any], field: str
) -> None:
    before = await create(patients)

    fields = await invalid(patients.UpdatePatient(_update(_change(before.name, **value), path)))

    assert fields == [field]
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == before


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("family_name", "patient.family_name"),
        ("given_names", "patient.given_names"),
        ("gender", "patient.gender"),
        ("birth_date", "patient.birth_date"),
    ],
)
async def test_required_field_cannot_be_cleared(patients: Stub, path: str, field: str) -> None:
    before = await create(patients)

    fields = await invalid(patients.UpdatePatient(_update(pb.Patient(name=before.name), path)))

    assert fields == [field]


async def test_clearing_the_phone_removes_it(patients: Stub) -> None:
    before = await create(patients)
    assert before.phone != ""

    after = await patients.UpdatePatient(_update(pb.Patient(name=before.name), "phone"))

    assert after.phone == ""
    assert (await patients.GetPatient(pb.GetPatientRequest(name=before.name))).phone == ""


async def test_clearing_the_address_removes_it(patients: Stub) -> None:
    before = await create(patients, make_patient(address=pb.Address(city="Hangzhou")))

    after = await patients.UpdatePatient(_update(pb.Patient(name=before.name), "address"))

    assert not after.HasField("address")


async def test_cleared_national_id_can_be_taken_by_another_patient(patients: Stub) -> None:
    national_id = unique_national_id()
    before = await create(patients, make_patient(national_id=national_id))

    after = await patients.UpdatePatient(_update(pb.Patient(name=before.name), "national_id"))
    other = await create(patients, make_patient(national_id=national_id))

    assert not after.HasField("national_id")
    assert other.national_id == national_id


async def test_changing_national_id_to_another_patients_is_rejected(patients: Stub) -> None:
    taken = unique_national_id()
    await create(patients, make_patient(national_id=taken))
    before = await create(patients)

    failure = await fails(
        patients.UpdatePatient(_update(_change(before.name, national_id=taken), "national_id"))
    )

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "NATIONAL_ID_EXISTS"
    assert await patients.GetPatient(pb.GetPatientRequest(name=before.name)) == before


async def test_setting_a_patients_own_national_id_again_is_fine(patients: Stub) -> None:
    before = await create(patients)

    after = await patients.UpdatePatient(
        _update(_change(before.name, national_id=before.national_id), "national_id")
    )

    assert after.national_id == before.national_id


async def test_new_first_given_name_is_found_by_prefix_search(patients: Stub) -> None:
    before = await create(patients)
    given = unique_word("Nw")

    await patients.UpdatePatient(_update(_change(before.name, given_names=[given]), "given_names"))
    response = await patients.ListPatients(pb.ListPatientsRequest(name_prefix=given.lower()))

    assert [p.name for p in response.patients] == [before.name]


async def test_update_of_a_merged_patient_is_a_failed_precondition(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    merged = await patients.MergePatients(
        pb.MergePatientsRequest(name=duplicate.name, survivor=survivor.name)
    )

    failure = await fails(
        patients.UpdatePatient(_update(_change(duplicate.name, phone="+8613944444444"), "phone"))
    )

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "PATIENT_MERGED"
    assert await patients.GetPatient(pb.GetPatientRequest(name=duplicate.name)) == merged


async def test_update_of_an_unknown_patient_is_not_found(patients: Stub) -> None:
    name = f"patients/{uuid.uuid4()}"

    failure = await fails(patients.UpdatePatient(_update(_change(name, phone=""), "phone")))

    assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["", "patients/not-a-uuid", f"foo/{uuid.uuid4()}"])
async def test_update_with_malformed_name_is_rejected(patients: Stub, name: str) -> None:
    fields = await invalid(patients.UpdatePatient(_update(_change(name, phone=""), "phone")))

    assert fields == ["patient.name"]


async def test_a_retried_update_with_its_now_stale_etag_succeeds_and_changes_nothing(
    patients: Stub,
) -> None:
    # UpdatePatient is IDEMPOTENT: a retry whose first attempt committed must not fail.
    before = await create(patients)
    request = pb.UpdatePatientRequest(
        patient=pb.Patient(name=before.name, phone="+8613966666666", etag=before.etag),
        update_mask=FieldMask(paths=["phone"]),
    )
    first = await patients.UpdatePatient(request)

    retried = await patients.UpdatePatient(request)

    assert retried == first
    assert retried.etag != before.etag
