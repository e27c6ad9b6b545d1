"""ListPatients: filters, stable keyset paging, page tokens and merged duplicates."""

from __future__ import annotations

import asyncio
import base64
import os
import random

import pytest

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from tests.patient.helpers import (
    NATIONAL_ID_SYSTEM,
    Stub,
    create,
    invalid,
    make_patient,
    unique_national_id,
    unique_phone,
    unique_word,
)


def _order_key(patient: pb.Patient) -> tuple[str, str, str]:
    return patient.family_name.lower(), patient.given_names[0].lower(), patient.name


async def _names(stub: Stub, request: pb.ListPatientsRequest) -> list[str]:
    response = await stub.ListPatients(request)
    assert response.next_page_token == ""
    return [p.name for p in response.patients]


async def _all_pages(stub: Stub, request: pb.ListPatientsRequest) -> list[list[str]]:
    pages: list[list[str]] = []
    while True:
        response = await stub.ListPatients(request)
        pages.append([p.name for p in response.patients])
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


async def test_name_prefix_matches_family_name_case_insensitively(patients: Stub) -> None:
    family = unique_word()
    match = await create(patients, make_patient(family_name=family))
    await create(patients, make_patient(family_name=unique_word()))

    assert await _names(patients, pb.ListPatientsRequest(name_prefix=family[:8].upper())) == [
        match.name
    ]
    assert await _names(patients, pb.ListPatientsRequest(name_prefix=family.lower())) == [
        match.name
    ]


async def test_name_prefix_matches_first_given_name_but_not_later_ones(patients: Stub) -> None:
    given = unique_word("Gv")
    first = await create(patients, make_patient(given_names=[given.upper(), "Ann"]))
    await create(patients, make_patient(given_names=["Ann", given]))

    assert await _names(patients, pb.ListPatientsRequest(name_prefix=given[:9])) == [first.name]


async def test_name_prefix_matches_non_ascii_names_case_insensitively(patients: Stub) -> None:
    family = "Ölund" + unique_word()
    match = await create(patients, make_patient(family_name=family))

    assert await _names(patients, pb.ListPatientsRequest(name_prefix=family.lower())) == [
        match.name
    ]


@pytest.mark.parametrize(
    "tail", ["ΟΔΥΣΣΕΥΣ", "İNCE"], ids=["greek-final-sigma", "dotted-capital-i"]
)
async def test_a_name_typed_exactly_as_registered_finds_the_patient(
    patients: Stub, tail: str
) -> None:
    # Python's str.lower() and PostgreSQL's lower() disagree on these letters; the search must
    # still find a patient by the very spelling the desk registered.
    family = unique_word() + tail
    match = await create(patients, make_patient(family_name=family))

    assert await _names(patients, pb.ListPatientsRequest(name_prefix=family)) == [match.name]
    assert await _names(patients, pb.ListPatientsRequest(name_prefix=family.upper())) == [
        match.name
    ]


@pytest.mark.parametrize("meta", ["%", "_", "\\"], ids=["percent", "underscore", "backslash"])
async def test_like_metacharacters_in_name_prefix_are_literal(patients: Stub, meta: str) -> None:
    stem = unique_word()
    literal = await create(patients, make_patient(family_name=f"{stem}{meta}x"))
    await create(patients, make_patient(family_name=f"{stem}ax"))
    await create(patients, make_patient(family_name=f"{stem}"))

    found = await _names(patients, pb.ListPatientsRequest(name_prefix=f"{stem}{meta}"))

    assert found == [literal.name]


async def test_a_lone_percent_prefix_does_not_match_everything(patients: Stub) -> None:
    ordinary = await create(patients, make_patient(family_name="Aaa" + unique_word()))

    response = await patients.ListPatients(pb.ListPatientsRequest(name_prefix="%", page_size=500))

    assert ordinary.name not in [p.name for p in response.patients]
    assert all(
        p.family_name.startswith("%") or p.given_names[0].startswith("%") for p in response.patients
    )


async def test_birth_date_filter_returns_exactly_patients_born_that_day(patients: Stub) -> None:
    family = unique_word()
    born = (random.randrange(1900, 1950), random.randrange(1, 13), random.randrange(1, 29))
    match = await create(patients, make_patient(family_name=family, birth_date=born))
    await create(patients, make_patient(family_name=family, birth_date=(1951, 1, 1)))
    day = types_pb2.Date(year=born[0], month=born[1], day=born[2])

    together = await _names(patients, pb.ListPatientsRequest(name_prefix=family, birth_date=day))
    alone = await patients.ListPatients(pb.ListPatientsRequest(birth_date=day, page_size=500))

    assert together == [match.name]
    assert match.name in [p.name for p in alone.patients]
    assert {(p.birth_date.year, p.birth_date.month, p.birth_date.day) for p in alone.patients} == {
        born
    }


async def test_national_id_filter_finds_exactly_the_holder(patients: Stub) -> None:
    national_id = unique_national_id()
    holder = await create(patients, make_patient(national_id=national_id))
    await create(patients)

    assert await _names(patients, pb.ListPatientsRequest(national_id=national_id)) == [holder.name]


async def test_phone_filter_finds_exactly_the_patients_with_that_number(patients: Stub) -> None:
    phone = unique_phone()
    family = unique_word()
    first = await create(patients, make_patient(family_name=family, given_names=["A"], phone=phone))
    second = await create(
        patients, make_patient(family_name=family, given_names=["B"], phone=phone)
    )
    await create(patients, make_patient(family_name=family, given_names=["C"]))

    assert await _names(patients, pb.ListPatientsRequest(phone=phone)) == [first.name, second.name]


async def test_all_filters_must_match(patients: Stub) -> None:
    family = unique_word()
    phone = unique_phone()
    match = await create(patients, make_patient(family_name=family, phone=phone))
    await create(patients, make_patient(family_name=family))

    found = await _names(patients, pb.ListPatientsRequest(name_prefix=family, phone=phone))
    wrong_phone = await _names(
        patients, pb.ListPatientsRequest(name_prefix=family, phone=unique_phone())
    )

    assert found == [match.name]
    assert wrong_phone == []


async def test_paging_through_seven_patients_yields_each_once_in_stable_order(
    patients: Stub,
) -> None:
    family = unique_word()
    # Three share the first given name, so the id decides their order.
    givens = ["Carl", "ann", "Bea", "Ann", "Dora", "ann", "Eve"]
    created = [
        await create(patients, make_patient(family_name=family, given_names=[g, "X"]))
        for g in givens
    ]
    expected = [p.name for p in sorted(created, key=_order_key)]

    pages = await _all_pages(patients, pb.ListPatientsRequest(name_prefix=family, page_size=3))

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [name for page in pages for name in page] == expected


async def test_a_full_last_page_has_no_next_page_token(patients: Stub) -> None:
    family = unique_word()
    for given in ["A", "B", "C", "D", "E", "F"]:
        await create(patients, make_patient(family_name=family, given_names=[given]))

    pages = await _all_pages(patients, pb.ListPatientsRequest(name_prefix=family, page_size=3))

    assert [len(page) for page in pages] == [3, 3]


async def test_results_are_ordered_by_family_then_first_given_name(patients: Stub) -> None:
    stem = unique_word()
    # Given-name prefix matches too, so the order spans different family names.
    b = await create(patients, make_patient(family_name=f"{stem}b", given_names=["Al"]))
    a2 = await create(patients, make_patient(family_name=f"{stem}A", given_names=["Zed"]))
    a1 = await create(patients, make_patient(family_name=f"{stem}a", given_names=["bo"]))

    found = await _names(patients, pb.ListPatientsRequest(name_prefix=stem))

    assert found == [a1.name, a2.name, b.name]


async def test_registration_before_the_cursor_does_not_disturb_paging(patients: Stub) -> None:
    family = unique_word()
    created = [
        await create(patients, make_patient(family_name=family, given_names=[g]))
        for g in ["Bo", "Cy", "Di", "Ed"]
    ]
    first = await patients.ListPatients(pb.ListPatientsRequest(name_prefix=family, page_size=2))
    await create(patients, make_patient(family_name=family, given_names=["Al"]))

    rest = await patients.ListPatients(
        pb.ListPatientsRequest(name_prefix=family, page_size=2, page_token=first.next_page_token)
    )

    seen = [p.name for p in first.patients] + [p.name for p in rest.patients]
    assert seen == [p.name for p in created]
    assert rest.next_page_token == ""


async def test_page_size_may_change_between_pages(patients: Stub) -> None:
    family = unique_word()
    created = [
        await create(patients, make_patient(family_name=family, given_names=[g]))
        for g in ["A", "B", "C", "D"]
    ]
    first = await patients.ListPatients(pb.ListPatientsRequest(name_prefix=family, page_size=1))

    rest = await patients.ListPatients(
        pb.ListPatientsRequest(name_prefix=family, page_size=10, page_token=first.next_page_token)
    )

    assert [p.name for p in rest.patients] == [p.name for p in created[1:]]


async def test_page_size_zero_means_fifty(patients: Stub) -> None:
    family = unique_word()
    await asyncio.gather(
        *(
            create(patients, make_patient(family_name=family, given_names=[f"G{i:02d}"]))
            for i in range(51)
        )
    )

    first = await patients.ListPatients(pb.ListPatientsRequest(name_prefix=family))
    rest = await patients.ListPatients(
        pb.ListPatientsRequest(name_prefix=family, page_token=first.next_page_token)
    )

    assert len(first.patients) == 50
    assert first.next_page_token != ""
    assert [p.given_names[0] for p in rest.patients] == ["G50"]
    assert rest.next_page_token == ""


async def test_page_size_above_the_maximum_is_accepted(patients: Stub) -> None:
    family = unique_word()
    created = [await create(patients, make_patient(family_name=family)) for _ in range(2)]

    response = await patients.ListPatients(
        pb.ListPatientsRequest(name_prefix=family, page_size=2_000_000_000)
    )

    assert sorted(p.name for p in response.patients) == sorted(p.name for p in created)
    assert response.next_page_token == ""


async def test_page_size_above_the_maximum_returns_at_most_five_hundred(patients: Stub) -> None:
    family = unique_word()
    await asyncio.gather(
        *(
            create(patients, make_patient(family_name=family, given_names=[f"G{i:03d}"]))
            for i in range(501)
        )
    )

    first = await patients.ListPatients(pb.ListPatientsRequest(name_prefix=family, page_size=501))
    rest = await patients.ListPatients(
        pb.ListPatientsRequest(name_prefix=family, page_size=501, page_token=first.next_page_token)
    )

    assert len(first.patients) == 500
    assert [p.given_names[0] for p in rest.patients] == ["G500"]
    assert rest.next_page_token == ""


async def test_merged_patients_are_hidden_unless_asked_for(patients: Stub) -> None:
    family = unique_word()
    survivor = await create(patients, make_patient(family_name=family, given_names=["A"]))
    duplicate = await create(patients, make_patient(family_name=family, given_names=["B"]))
    await patients.MergePatients(
        pb.MergePatientsRequest(name=duplicate.name, survivor=survivor.name)
    )

    hidden = await _names(patients, pb.ListPatientsRequest(name_prefix=family))
    shown = await patients.ListPatients(
        pb.ListPatientsRequest(name_prefix=family, include_merged=True)
    )

    assert hidden == [survivor.name]
    assert [p.name for p in shown.patients] == [survivor.name, duplicate.name]
    assert shown.patients[1].state == pb.PATIENT_STATE_MERGED
    assert shown.patients[1].merged_into == survivor.name


async def test_inactive_patients_are_still_listed(patients: Stub) -> None:
    family = unique_word()
    created = await create(patients, make_patient(family_name=family))
    await patients.DeactivatePatient(pb.DeactivatePatientRequest(name=created.name))

    response = await patients.ListPatients(pb.ListPatientsRequest(name_prefix=family))

    assert [p.state for p in response.patients] == [pb.PATIENT_STATE_INACTIVE]


async def test_no_match_is_an_empty_page(patients: Stub) -> None:
    response = await patients.ListPatients(pb.ListPatientsRequest(name_prefix=unique_word()))

    assert list(response.patients) == []
    assert response.next_page_token == ""


@pytest.mark.parametrize("size", [-1, -500, -2_147_483_648])
async def test_negative_page_size_is_rejected(patients: Stub, size: int) -> None:
    fields = await invalid(patients.ListPatients(pb.ListPatientsRequest(page_size=size)))

    assert fields == ["page_size"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListPatientsRequest(name_prefix="x" * 101), "name_prefix"),
        (pb.ListPatientsRequest(name_prefix="ab\x00"), "name_prefix"),
        (
            pb.ListPatientsRequest(birth_date=types_pb2.Date(year=1990, month=2, day=30)),
            "birth_date",
        ),
        (
            pb.ListPatientsRequest(birth_date=types_pb2.Date(year=1990, month=13, day=1)),
            "birth_date",
        ),
        (pb.ListPatientsRequest(birth_date=types_pb2.Date()), "birth_date"),
        (
            pb.ListPatientsRequest(national_id=types_pb2.Identifier(system=NATIONAL_ID_SYSTEM)),
            "national_id.value",
        ),
        (
            pb.ListPatientsRequest(national_id=types_pb2.Identifier(value="110101199003074512")),
            "national_id.system",
        ),
        (pb.ListPatientsRequest(phone="12-34"), "phone"),
        (pb.ListPatientsRequest(phone="+86 13800138000"), "phone"),
    ],
    ids=[
        "long-prefix",
        "nul-prefix",
        "feb-30",
        "month-13",
        "zero-date",
        "id-without-value",
        "id-without-system",
        "bad-phone",
        "phone-with-space",
    ],
)
async def test_malformed_filter_is_rejected_naming_it(
    patients: Stub, request_: pb.ListPatientsRequest, field: str
) -> None:
    fields = await invalid(patients.ListPatients(request_))

    assert fields == [field]


def _token_garbage() -> list[str]:
    random_bytes = base64.urlsafe_b64encode(os.urandom(64)).decode().rstrip("=")
    return [
        "garbage",
        "!!!!",
        "a",
        "====",
        "ü-not-ascii",
        random_bytes,
        base64.urlsafe_b64encode(b"x" * 16 + b'{"c":{},"q":"0"}').decode(),
        base64.urlsafe_b64encode(b"x" * 16 + b"not json").decode(),
    ]


@pytest.mark.parametrize("token", _token_garbage())
async def test_garbage_page_token_is_rejected(patients: Stub, token: str) -> None:
    request = pb.ListPatientsRequest(name_prefix="a", page_token=token)

    fields = await invalid(patients.ListPatients(request))

    assert fields == ["page_token"]


async def _first_token(stub: Stub, family: str, **filters: object) -> str:
    for given in ["A", "B"]:
        await create(stub, make_patient(family_name=family, given_names=[given]))
    response = await stub.ListPatients(
        pb.ListPatientsRequest(name_prefix=family, page_size=1, **filters)  # type: ignore[arg-type]
    )
    assert response.next_page_token != ""
    return str(response.next_page_token)


async def test_page_token_from_a_different_filter_is_rejected(patients: Stub) -> None:
    family = unique_word()
    token = await _first_token(patients, family)

    other_prefix = await invalid(
        patients.ListPatients(pb.ListPatientsRequest(name_prefix=unique_word(), page_token=token))
    )
    no_filter = await invalid(patients.ListPatients(pb.ListPatientsRequest(page_token=token)))
    with_merged = await invalid(
        patients.ListPatients(
            pb.ListPatientsRequest(name_prefix=family, include_merged=True, page_token=token)
        )
    )

    assert other_prefix == no_filter == with_merged == ["page_token"]


async def test_tampered_page_token_is_rejected(patients: Stub) -> None:
    family = unique_word()
    token = await _first_token(patients, family)
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]

    fields = await invalid(
        patients.ListPatients(pb.ListPatientsRequest(name_prefix=family, page_token=flipped))
    )

    assert fields == ["page_token"]


async def test_consent_page_token_is_not_a_patient_page_token(patients: Stub) -> None:
    patient = await create(patients)
    for _ in range(2):
        await patients.GrantConsent(
            pb.GrantConsentRequest(
                parent=patient.name,
                consent=pb.Consent(
                    scope=pb.CONSENT_SCOPE_TREATMENT, purpose=pb.PURPOSE_OF_USE_TREATMENT
                ),
            )
        )
    consents = await patients.ListConsents(pb.ListConsentsRequest(parent=patient.name, page_size=1))

    fields = await invalid(
        patients.ListPatients(pb.ListPatientsRequest(page_token=consents.next_page_token))
    )

    assert fields == ["page_token"]
