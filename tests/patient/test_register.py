"""CreatePatient and GetPatient: registration, MRNs, idempotency, uniqueness and bad input."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import cast

import grpc
import pytest

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.server import RunningService
from tests.identity import ISSUER, channel_as
from tests.patient.helpers import (
    DOMAIN,
    NATIONAL_ID_SYSTEM,
    Stub,
    create,
    invalid,
    luhn_valid,
    make_patient,
    patient_id,
    request_id,
    unique_national_id,
    unique_word,
)
from tests.support import fails


def _date(value: dt.date) -> tuple[int, int, int]:
    return value.year, value.month, value.day


async def test_registration_returns_the_patient_with_assigned_name_mrn_and_state(
    patients: Stub,
) -> None:
    address = pb.Address(
        lines=["Room 1201", "88 Jianguo Road"],
        city="Beijing",
        district="Chaoyang",
        state="Beijing",
        postal_code="100022",
        country="CN",
    )
    sent = make_patient(given_names=["Mei", "Lin"], address=address)

    created = await create(patients, sent)

    patient_id(created.name)  # a `patients/{uuid}` name
    assert created.state == pb.PATIENT_STATE_ACTIVE
    assert created.family_name == sent.family_name
    assert list(created.given_names) == ["Mei", "Lin"]
    assert created.gender == pb.ADMINISTRATIVE_GENDER_FEMALE
    assert (created.birth_date.year, created.birth_date.month, created.birth_date.day) == (
        1980,
        5,
        17,
    )
    assert created.national_id == sent.national_id
    assert created.phone == sent.phone
    assert created.address == address
    assert created.merged_into == ""
    assert created.etag != ""
    assert created.create_time.ToDatetime() == created.update_time.ToDatetime()
    assert created.HasField("create_time")


async def test_registered_patient_can_be_read_back_unchanged(patients: Stub) -> None:
    created = await create(patients)

    read = await patients.GetPatient(pb.GetPatientRequest(name=created.name))

    assert read == created


async def test_registration_ignores_client_chosen_name_mrn_and_state(patients: Stub) -> None:
    sent = make_patient()
    chosen = f"patients/{uuid.uuid4()}"
    sent.name = chosen
    sent.mrn = "12345"
    sent.state = pb.PATIENT_STATE_MERGED
    sent.merged_into = f"patients/{uuid.uuid4()}"

    created = await create(patients, sent)

    assert created.name != chosen
    assert created.mrn != "12345"
    assert created.state == pb.PATIENT_STATE_ACTIVE
    assert created.merged_into == ""


async def test_registration_trims_surrounding_whitespace_of_names(patients: Stub) -> None:
    family = unique_word()
    created = await create(patients, make_patient(family_name=f"  {family} ", given_names=[" Li "]))

    assert created.family_name == family
    assert list(created.given_names) == ["Li"]


async def test_registration_without_optional_fields_leaves_them_empty(patients: Stub) -> None:
    sent = make_patient(with_national_id=False, phone="")

    created = await create(patients, sent)

    assert not created.HasField("national_id")
    assert created.phone == ""
    assert not created.HasField("address")


async def test_mrn_is_digits_with_a_valid_luhn_check_digit(patients: Stub) -> None:
    created = await create(patients)

    assert created.mrn.isdigit()
    assert len(created.mrn) >= 8
    assert luhn_valid(created.mrn)


async def test_every_patient_gets_a_distinct_mrn(patients: Stub) -> None:
    created = [await create(patients) for _ in range(5)]

    mrns = [p.mrn for p in created]
    assert len(set(mrns)) == 5
    assert all(luhn_valid(m) for m in mrns)


def test_luhn_helper_agrees_with_known_numbers() -> None:
    # Guards the helper the MRN tests rely on: a check that accepts everything proves nothing.
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("10000001")


async def test_second_registration_with_same_national_id_is_rejected(patients: Stub) -> None:
    national_id = unique_national_id()
    first = await create(patients, make_patient(national_id=national_id))

    failure = await fails(create(patients, make_patient(national_id=national_id)))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "NATIONAL_ID_EXISTS"
    assert failure.domain == DOMAIN
    assert failure.metadata == {"field": "national_id"}
    # The message goes to callers and logs: it must not repeat the identifier.
    assert national_id.value not in failure.message
    still = await patients.GetPatient(pb.GetPatientRequest(name=first.name))
    assert still == first


async def test_same_national_id_value_in_another_system_is_a_different_identifier(
    patients: Stub,
) -> None:
    national_id = unique_national_id()
    await create(patients, make_patient(national_id=national_id))
    other = types_pb2.Identifier(system="urn:oid:1.2.3.4", value=national_id.value)

    created = await create(patients, make_patient(national_id=other))

    assert created.national_id == other


async def test_patients_without_national_id_do_not_conflict(patients: Stub) -> None:
    first = await create(patients, make_patient(with_national_id=False))
    second = await create(patients, make_patient(with_national_id=False))

    assert first.name != second.name


async def test_replayed_request_id_returns_the_first_patient(patients: Stub) -> None:
    key = request_id()
    sent = make_patient(with_national_id=False)
    first = await patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))

    replay = await patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))

    assert replay == first


async def test_a_request_id_reused_for_another_registration_is_rejected(
    patients: Stub,
) -> None:
    key = request_id()
    first = await patients.CreatePatient(
        pb.CreatePatientRequest(patient=make_patient(), request_id=key)
    )
    other = make_patient()

    fields = await invalid(
        patients.CreatePatient(pb.CreatePatientRequest(patient=other, request_id=key))
    )

    # Never someone else's registration in answer to a reused key, and nothing new stored.
    assert fields == ["request_id"]
    found = await patients.ListPatients(pb.ListPatientsRequest(national_id=other.national_id))
    assert list(found.patients) == []
    assert (await patients.GetPatient(pb.GetPatientRequest(name=first.name))) == first


async def test_the_same_request_id_and_request_from_another_caller_is_rejected(
    patients: Stub, patient_service: RunningService
) -> None:
    # Two registrars whose clients chose the same key by accident: the second never gets the
    # first's patient back (its fingerprint names the caller), and nothing new is stored.
    key = request_id()
    sent = make_patient(national_id=unique_national_id())
    first = await patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))
    async with channel_as(patient_service.address, ISSUER.staff("REGISTRAR")) as channel:
        other_registrar = pb_grpc.PatientServiceStub(channel)

        fields = await invalid(
            other_registrar.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))
        )

    assert fields == ["request_id"]
    found = await patients.ListPatients(pb.ListPatientsRequest(national_id=sent.national_id))
    assert [p.name for p in found.patients] == [first.name]
    replay = await patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))
    assert replay == first


async def test_replay_of_a_registration_with_national_id_is_not_a_conflict(
    patients: Stub,
) -> None:
    key = request_id()
    sent = make_patient()
    first = await patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))

    replay = await patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))

    assert replay == first


async def test_different_request_ids_register_different_patients(patients: Stub) -> None:
    first = await patients.CreatePatient(
        pb.CreatePatientRequest(patient=make_patient(), request_id=request_id())
    )
    second = await patients.CreatePatient(
        pb.CreatePatientRequest(patient=make_patient(), request_id=request_id())
    )

    assert first.name != second.name
    assert first.mrn != second.mrn


async def test_registration_accepts_boundary_values(patients: Stub) -> None:
    today = dt.datetime.now(dt.UTC).date()
    sent = make_patient(
        family_name="F" * 100,
        given_names=["G" * 100] * 10,
        birth_date=(1880, 1, 1),
        phone="123456",
    )
    oldest = await create(patients, sent)
    newborn = await create(patients, make_patient(birth_date=_date(today), phone="1" * 20))
    leap = await create(patients, make_patient(birth_date=(2000, 2, 29), phone="+8613800138000"))

    assert oldest.family_name == "F" * 100
    assert len(oldest.given_names) == 10
    assert oldest.birth_date == types_pb2.Date(year=1880, month=1, day=1)
    assert oldest.phone == "123456"
    assert newborn.birth_date == types_pb2.Date(year=today.year, month=today.month, day=today.day)
    assert leap.birth_date == types_pb2.Date(year=2000, month=2, day=29)


def _bad_patient(**changes: object) -> pb.Patient:
    patient = make_patient()
    for key, value in changes.items():
        if key == "given_names":
            del patient.given_names[:]
            patient.given_names.extend(value)  # type: ignore[arg-type]
        elif key == "birth_date":
            year, month, day = cast(tuple[int, int, int], value)
            patient.birth_date.CopyFrom(types_pb2.Date(year=year, month=month, day=day))
        elif key == "no_birth_date":
            patient.ClearField("birth_date")
        elif key == "national_id":
            patient.national_id.CopyFrom(value)  # type: ignore[arg-type]
        elif key == "address":
            patient.address.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(patient, key, value)
    return patient


_FUTURE = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)

BAD_PATIENTS = [
    pytest.param(_bad_patient(family_name=""), "patient.family_name", id="empty-family"),
    pytest.param(_bad_patient(family_name="   "), "patient.family_name", id="blank-family"),
    pytest.param(_bad_patient(family_name="x" * 101), "patient.family_name", id="long-family"),
    pytest.param(_bad_patient(family_name="Li\nWang"), "patient.family_name", id="ctrl-family"),
    pytest.param(_bad_patient(given_names=[]), "patient.given_names", id="no-given"),
    pytest.param(_bad_patient(given_names=[""]), "patient.given_names[0]", id="empty-given"),
    pytest.param(
        _bad_patient(given_names=["Mei", "y" * 101]), "patient.given_names[1]", id="long-given"
    ),
    pytest.param(_bad_patient(given_names=["G"] * 11), "patient.given_names", id="11-given"),
    pytest.param(
        _bad_patient(gender=pb.ADMINISTRATIVE_GENDER_UNSPECIFIED), "patient.gender", id="no-gender"
    ),
    pytest.param(
        _bad_patient(gender=pb.AdministrativeGender.ValueType(99)),
        "patient.gender",
        id="unknown-gender",
    ),
    pytest.param(_bad_patient(no_birth_date=True), "patient.birth_date", id="no-birth-date"),
    pytest.param(_bad_patient(birth_date=(1990, 2, 30)), "patient.birth_date", id="feb-30"),
    pytest.param(_bad_patient(birth_date=(2001, 2, 29)), "patient.birth_date", id="feb-29-2001"),
    pytest.param(_bad_patient(birth_date=(1990, 13, 1)), "patient.birth_date", id="month-13"),
    pytest.param(_bad_patient(birth_date=(1990, 0, 1)), "patient.birth_date", id="month-0"),
    pytest.param(_bad_patient(birth_date=(1990, 1, 0)), "patient.birth_date", id="day-0"),
    pytest.param(_bad_patient(birth_date=(1990, -1, 5)), "patient.birth_date", id="month-neg"),
    pytest.param(_bad_patient(birth_date=(0, 0, 0)), "patient.birth_date", id="all-zero"),
    pytest.param(_bad_patient(birth_date=(1700, 1, 1)), "patient.birth_date", id="year-1700"),
    pytest.param(_bad_patient(birth_date=(1879, 12, 31)), "patient.birth_date", id="1879"),
    pytest.param(
        _bad_patient(birth_date=(_FUTURE.year, _FUTURE.month, _FUTURE.day)),
        "patient.birth_date",
        id="future",
    ),
    pytest.param(_bad_patient(birth_date=(2999, 1, 1)), "patient.birth_date", id="year-2999"),
    pytest.param(
        _bad_patient(birth_date=(2_000_000_000, 1, 1)), "patient.birth_date", id="huge-year"
    ),
    pytest.param(_bad_patient(phone="12345"), "patient.phone", id="phone-short"),
    pytest.param(_bad_patient(phone="1" * 21), "patient.phone", id="phone-long"),
    pytest.param(_bad_patient(phone="call me"), "patient.phone", id="phone-text"),
    pytest.param(_bad_patient(phone="+86 138 0013 8000"), "patient.phone", id="phone-spaces"),
    pytest.param(_bad_patient(phone="++8613800138000"), "patient.phone", id="phone-plus-plus"),
    pytest.param(_bad_patient(phone="+"), "patient.phone", id="phone-plus"),
    pytest.param(
        _bad_patient(national_id=types_pb2.Identifier(system=NATIONAL_ID_SYSTEM)),
        "patient.national_id.value",
        id="national-id-no-value",
    ),
    pytest.param(
        _bad_patient(national_id=types_pb2.Identifier(value="110101199003074512")),
        "patient.national_id.system",
        id="national-id-no-system",
    ),
    pytest.param(
        _bad_patient(national_id=types_pb2.Identifier(system=NATIONAL_ID_SYSTEM, value="9" * 65)),
        "patient.national_id.value",
        id="national-id-long",
    ),
    pytest.param(
        _bad_patient(address=pb.Address(country="China")),
        "patient.address.country",
        id="country-name",
    ),
    pytest.param(
        _bad_patient(address=pb.Address(country="cn")),
        "patient.address.country",
        id="country-lower",
    ),
    pytest.param(
        _bad_patient(address=pb.Address(country="C1")),
        "patient.address.country",
        id="country-digit",
    ),
    pytest.param(
        _bad_patient(address=pb.Address(lines=["a", "b", "c", "d", "e"])),
        "patient.address.lines",
        id="five-lines",
    ),
    pytest.param(
        _bad_patient(address=pb.Address(lines=["z" * 201])),
        "patient.address.lines[0]",
        id="long-line",
    ),
    pytest.param(
        _bad_patient(address=pb.Address(city="c" * 101)), "patient.address.city", id="long-city"
    ),
    pytest.param(
        _bad_patient(address=pb.Address(postal_code="1" * 21)),
        "patient.address.postal_code",
        id="long-postal-code",
    ),
]


@pytest.mark.parametrize(("patient", "field"), BAD_PATIENTS)
async def test_registration_with_bad_value_is_rejected_naming_the_field(
    patients: Stub, patient: pb.Patient, field: str
) -> None:
    fields = await invalid(patients.CreatePatient(pb.CreatePatientRequest(patient=patient)))

    assert fields == [field]


async def test_registration_without_patient_is_rejected(patients: Stub) -> None:
    fields = await invalid(patients.CreatePatient(pb.CreatePatientRequest()))

    assert fields == ["patient"]


async def test_registration_names_every_bad_field_at_once(patients: Stub) -> None:
    patient = _bad_patient(family_name="", gender=pb.ADMINISTRATIVE_GENDER_UNSPECIFIED)
    patient.phone = "nope"

    fields = await invalid(patients.CreatePatient(pb.CreatePatientRequest(patient=patient)))

    assert sorted(fields) == ["patient.family_name", "patient.gender", "patient.phone"]


@pytest.mark.parametrize(
    "key", ["r" * 65, " padded", "padded ", "tab\tinside"], ids=["long", "lead", "trail", "ctrl"]
)
async def test_registration_with_bad_request_id_is_rejected(patients: Stub, key: str) -> None:
    request = pb.CreatePatientRequest(patient=make_patient(), request_id=key)

    fields = await invalid(patients.CreatePatient(request))

    assert fields == ["request_id"]


async def test_rejected_registration_stores_nothing(patients: Stub) -> None:
    national_id = unique_national_id()
    bad = make_patient(national_id=national_id, birth_date=(1990, 2, 30))
    await invalid(patients.CreatePatient(pb.CreatePatientRequest(patient=bad)))

    # The identifier is still free: the rejected call left no row behind.
    created = await create(patients, make_patient(national_id=national_id))
    assert created.national_id == national_id


async def test_unknown_patient_is_not_found(patients: Stub) -> None:
    name = f"patients/{uuid.uuid4()}"

    failure = await fails(patients.GetPatient(pb.GetPatientRequest(name=name)))

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "NOT_FOUND"
    assert failure.domain == DOMAIN


@pytest.mark.parametrize(
    "name",
    [
        "",
        "patients/not-a-uuid",
        "patients/",
        "foo/0b8f4f0e-57b3-4d7e-9d6c-0f5c2f1d3a11",
        "patients/0b8f4f0e-57b3-4d7e-9d6c-0f5c2f1d3a11/consents",
        "0b8f4f0e-57b3-4d7e-9d6c-0f5c2f1d3a11",
        "patients/0b8f4f0e-57b3-4d7e-9d6c-0f5c2f1d3a1",
        "patients/../patients/0b8f4f0e-57b3-4d7e-9d6c-0f5c2f1d3a11",
    ],
)
async def test_get_with_malformed_name_is_rejected(patients: Stub, name: str) -> None:
    fields = await invalid(patients.GetPatient(pb.GetPatientRequest(name=name)))

    assert fields == ["name"]
