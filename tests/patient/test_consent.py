"""GrantConsent, RevokeConsent, GetConsent and ListConsents."""

from __future__ import annotations

import datetime as dt
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from his.patient.v1 import patient_service_pb2 as pb
from tests.patient.helpers import (
    DOMAIN,
    Stub,
    create,
    grant_request,
    invalid,
    request_id,
)
from tests.support import fails

DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _at(stamp: Timestamp) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)


async def _grant(stub: Stub, parent: str, **kwargs: object) -> pb.Consent:
    return await stub.GrantConsent(grant_request(parent, **kwargs))  # type: ignore[arg-type]


async def _list(stub: Stub, parent: str, *, active_only: bool = False) -> list[str]:
    response = await stub.ListConsents(
        pb.ListConsentsRequest(parent=parent, active_only=active_only)
    )
    assert response.next_page_token == ""
    return [c.name for c in response.consents]


async def test_granted_consent_is_active_from_now_with_an_open_end(patients: Stub) -> None:
    patient = await create(patients)
    before = _now()

    consent = await _grant(
        patients,
        patient.name,
        scope=pb.CONSENT_SCOPE_PATIENT_PRIVACY,
        purpose=pb.PURPOSE_OF_USE_OPERATIONS,
        note="signed form 12-B",
    )

    after = _now()
    prefix = f"{patient.name}/consents/"
    assert consent.name.startswith(prefix)
    uuid.UUID(consent.name.removeprefix(prefix))
    assert consent.scope == pb.CONSENT_SCOPE_PATIENT_PRIVACY
    assert consent.purpose == pb.PURPOSE_OF_USE_OPERATIONS
    assert consent.status == pb.CONSENT_STATUS_ACTIVE
    assert consent.note == "signed form 12-B"
    assert before <= _at(consent.period.start_time) <= after
    assert not consent.period.HasField("end_time")
    assert consent.HasField("create_time")
    assert not consent.HasField("revoke_time")


async def test_granted_consent_keeps_the_given_period(patients: Stub) -> None:
    patient = await create(patients)
    start = dt.datetime(2020, 1, 1, 8, 30, tzinfo=dt.UTC)
    end = dt.datetime(2031, 6, 30, 23, 59, 59, tzinfo=dt.UTC)

    consent = await _grant(patients, patient.name, start=start, end=end)

    assert _at(consent.period.start_time) == start
    assert _at(consent.period.end_time) == end


async def test_granted_consent_can_be_read_back(patients: Stub) -> None:
    patient = await create(patients)
    consent = await _grant(patients, patient.name)

    read = await patients.GetConsent(pb.GetConsentRequest(name=consent.name))

    assert read == consent


async def test_replayed_grant_returns_the_first_consent(patients: Stub) -> None:
    patient = await create(patients)
    key = request_id()
    first = await _grant(patients, patient.name, request_id=key)

    replay = await _grant(patients, patient.name, request_id=key)

    assert replay == first
    assert await _list(patients, patient.name) == [first.name]


async def test_a_request_id_reused_for_a_different_grant_is_rejected(patients: Stub) -> None:
    patient = await create(patients)
    key = request_id()
    first = await _grant(patients, patient.name, request_id=key)

    fields = await invalid(
        _grant(patients, patient.name, request_id=key, scope=pb.CONSENT_SCOPE_RESEARCH, note="x")
    )

    assert fields == ["request_id"]
    assert await _list(patients, patient.name) == [first.name]


async def test_grants_with_different_request_ids_are_different_consents(patients: Stub) -> None:
    patient = await create(patients)

    first = await _grant(patients, patient.name, request_id=request_id())
    second = await _grant(patients, patient.name, request_id=request_id())

    assert first.name != second.name


async def test_same_request_id_for_another_patient_grants_a_new_consent(patients: Stub) -> None:
    one = await create(patients)
    two = await create(patients)
    key = request_id()

    first = await _grant(patients, one.name, request_id=key)
    second = await _grant(patients, two.name, request_id=key)

    assert second.name.startswith(f"{two.name}/consents/")
    assert first.name != second.name


@pytest.mark.parametrize("gap", [dt.timedelta(0), -dt.timedelta(seconds=1), -DAY])
async def test_period_ending_before_it_starts_is_rejected(
    patients: Stub, gap: dt.timedelta
) -> None:
    patient = await create(patients)
    start = _now() + DAY

    fields = await invalid(
        patients.GrantConsent(grant_request(patient.name, start=start, end=start + gap))
    )

    assert fields == ["consent.period.end_time"]
    assert await _list(patients, patient.name) == []


async def test_period_ending_in_the_past_without_start_is_rejected(patients: Stub) -> None:
    patient = await create(patients)

    fields = await invalid(patients.GrantConsent(grant_request(patient.name, end=_now() - DAY)))

    assert fields == ["consent.period.end_time"]


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"scope": pb.CONSENT_SCOPE_UNSPECIFIED}, "consent.scope"),
        ({"scope": pb.ConsentScope.ValueType(99)}, "consent.scope"),
        ({"purpose": pb.PURPOSE_OF_USE_UNSPECIFIED}, "consent.purpose"),
        ({"purpose": pb.PurposeOfUse.ValueType(-3)}, "consent.purpose"),
        ({"note": "n" * 501}, "consent.note"),
        ({"note": "signed\x07"}, "consent.note"),
        ({"start": dt.datetime(1850, 1, 1, tzinfo=dt.UTC)}, "consent.period.start_time"),
        ({"end": dt.datetime(9500, 1, 1, tzinfo=dt.UTC)}, "consent.period.end_time"),
        ({"request_id": "k" * 65}, "request_id"),
    ],
    ids=[
        "no-scope",
        "unknown-scope",
        "no-purpose",
        "unknown-purpose",
        "long-note",
        "ctrl-note",
        "ancient-start",
        "far-end",
        "long-request-id",
    ],
)
async def test_grant_with_bad_value_is_rejected_naming_the_field(
    patients: Stub, request_kwargs: dict[str, object], field: str
) -> None:
    patient = await create(patients)

    fields = await invalid(
        patients.GrantConsent(grant_request(patient.name, **request_kwargs))  # type: ignore[arg-type]
    )

    assert fields == [field]


async def test_grant_with_out_of_range_timestamp_is_rejected(patients: Stub) -> None:
    patient = await create(patients)
    request = grant_request(patient.name)
    request.consent.period.start_time.seconds = 10**15

    fields = await invalid(patients.GrantConsent(request))

    assert fields == ["consent.period.start_time"]


async def test_grant_without_consent_is_rejected(patients: Stub) -> None:
    patient = await create(patients)

    fields = await invalid(patients.GrantConsent(pb.GrantConsentRequest(parent=patient.name)))

    assert fields == ["consent", "consent.scope", "consent.purpose"]


@pytest.mark.parametrize("parent", ["", "patients/not-a-uuid", f"foo/{uuid.uuid4()}"])
async def test_grant_with_malformed_parent_is_rejected(patients: Stub, parent: str) -> None:
    fields = await invalid(patients.GrantConsent(grant_request(parent)))

    assert fields == ["parent"]


async def test_grant_for_a_missing_patient_is_not_found(patients: Stub) -> None:
    failure = await fails(patients.GrantConsent(grant_request(f"patients/{uuid.uuid4()}")))

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "NOT_FOUND"


async def test_grant_on_a_merged_patient_is_a_failed_precondition(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    await patients.MergePatients(
        pb.MergePatientsRequest(name=duplicate.name, survivor=survivor.name)
    )

    failure = await fails(patients.GrantConsent(grant_request(duplicate.name)))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "PATIENT_MERGED"
    assert failure.domain == DOMAIN
    assert await _list(patients, duplicate.name) == []


async def test_revoked_consent_is_inactive_with_a_revoke_time(patients: Stub) -> None:
    patient = await create(patients)
    consent = await _grant(patients, patient.name)
    before = _now()

    revoked = await patients.RevokeConsent(pb.RevokeConsentRequest(name=consent.name))

    assert revoked.status == pb.CONSENT_STATUS_INACTIVE
    assert before <= _at(revoked.revoke_time) <= _now()
    expected = pb.Consent()
    expected.CopyFrom(consent)
    expected.status = pb.CONSENT_STATUS_INACTIVE
    expected.revoke_time.CopyFrom(revoked.revoke_time)
    assert revoked == expected
    assert await patients.GetConsent(pb.GetConsentRequest(name=consent.name)) == revoked


async def test_revoking_twice_changes_nothing(patients: Stub) -> None:
    patient = await create(patients)
    consent = await _grant(patients, patient.name)
    first = await patients.RevokeConsent(pb.RevokeConsentRequest(name=consent.name))

    second = await patients.RevokeConsent(pb.RevokeConsentRequest(name=consent.name))

    assert second == first


async def test_revoking_a_missing_consent_is_not_found(patients: Stub) -> None:
    patient = await create(patients)

    failure = await fails(
        patients.RevokeConsent(
            pb.RevokeConsentRequest(name=f"{patient.name}/consents/{uuid.uuid4()}")
        )
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_a_consent_is_not_found_under_another_patient(patients: Stub) -> None:
    owner = await create(patients)
    other = await create(patients)
    consent = await _grant(patients, owner.name)
    consent_id = consent.name.rsplit("/", 1)[1]
    wrong = f"{other.name}/consents/{consent_id}"

    get = await fails(patients.GetConsent(pb.GetConsentRequest(name=wrong)))
    revoke = await fails(patients.RevokeConsent(pb.RevokeConsentRequest(name=wrong)))

    assert get.code == revoke.code == grpc.StatusCode.NOT_FOUND
    assert (await patients.GetConsent(pb.GetConsentRequest(name=consent.name))).status == (
        pb.CONSENT_STATUS_ACTIVE
    )


async def test_get_of_a_missing_consent_is_not_found(patients: Stub) -> None:
    name = f"patients/{uuid.uuid4()}/consents/{uuid.uuid4()}"

    failure = await fails(patients.GetConsent(pb.GetConsentRequest(name=name)))

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "NOT_FOUND"


MALFORMED_CONSENT_NAMES = [
    "",
    f"patients/{uuid.uuid4()}",
    f"patients/{uuid.uuid4()}/consents",
    f"patients/{uuid.uuid4()}/consents/not-a-uuid",
    f"patients/not-a-uuid/consents/{uuid.uuid4()}",
    f"foo/{uuid.uuid4()}/consents/{uuid.uuid4()}",
    f"patients/{uuid.uuid4()}/bar/{uuid.uuid4()}",
    f"patients/{uuid.uuid4()}/consents/{uuid.uuid4()}/x",
]


@pytest.mark.parametrize("name", MALFORMED_CONSENT_NAMES)
async def test_get_with_malformed_consent_name_is_rejected(patients: Stub, name: str) -> None:
    fields = await invalid(patients.GetConsent(pb.GetConsentRequest(name=name)))

    assert fields == ["name"]


@pytest.mark.parametrize("name", MALFORMED_CONSENT_NAMES)
async def test_revoke_with_malformed_consent_name_is_rejected(patients: Stub, name: str) -> None:
    fields = await invalid(patients.RevokeConsent(pb.RevokeConsentRequest(name=name)))

    assert fields == ["name"]


async def test_consents_are_listed_newest_first(patients: Stub) -> None:
    patient = await create(patients)
    granted = [await _grant(patients, patient.name) for _ in range(3)]

    assert await _list(patients, patient.name) == [c.name for c in reversed(granted)]


async def test_paging_through_consents_yields_each_once_newest_first(patients: Stub) -> None:
    patient = await create(patients)
    granted = [await _grant(patients, patient.name) for _ in range(5)]
    request = pb.ListConsentsRequest(parent=patient.name, page_size=2)
    pages: list[list[str]] = []
    while True:
        response = await patients.ListConsents(request)
        pages.append([c.name for c in response.consents])
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [name for page in pages for name in page] == [c.name for c in reversed(granted)]


async def test_consents_of_other_patients_are_not_listed(patients: Stub) -> None:
    patient = await create(patients)
    other = await create(patients)
    mine = await _grant(patients, patient.name)
    await _grant(patients, other.name)

    assert await _list(patients, patient.name) == [mine.name]


async def test_active_only_lists_just_the_consents_in_force_now(patients: Stub) -> None:
    patient = await create(patients)
    now = _now()
    open_ended = await _grant(patients, patient.name)
    bounded = await _grant(patients, patient.name, start=now - DAY, end=now + DAY)
    revoked = await _grant(patients, patient.name)
    await patients.RevokeConsent(pb.RevokeConsentRequest(name=revoked.name))
    future = await _grant(patients, patient.name, start=now + DAY)
    ended = await _grant(patients, patient.name, start=now - 2 * DAY, end=now - DAY)

    active = await _list(patients, patient.name, active_only=True)
    everything = await _list(patients, patient.name)

    assert active == [bounded.name, open_ended.name]
    assert everything == [
        ended.name,
        future.name,
        revoked.name,
        bounded.name,
        open_ended.name,
    ]


async def test_consents_of_a_merged_patient_stay_listed(patients: Stub) -> None:
    survivor = await create(patients)
    duplicate = await create(patients)
    consent = await _grant(patients, duplicate.name)
    await patients.MergePatients(
        pb.MergePatientsRequest(name=duplicate.name, survivor=survivor.name)
    )

    assert await _list(patients, duplicate.name) == [consent.name]


async def test_listing_consents_of_a_missing_patient_is_not_found(patients: Stub) -> None:
    failure = await fails(
        patients.ListConsents(pb.ListConsentsRequest(parent=f"patients/{uuid.uuid4()}"))
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListConsentsRequest(parent="patients/not-a-uuid"), "parent"),
        (pb.ListConsentsRequest(parent=""), "parent"),
        (pb.ListConsentsRequest(parent=f"foo/{uuid.uuid4()}"), "parent"),
        (pb.ListConsentsRequest(parent=f"patients/{uuid.uuid4()}", page_size=-1), "page_size"),
        (
            pb.ListConsentsRequest(parent=f"patients/{uuid.uuid4()}", page_token="junk"),
            "page_token",
        ),
    ],
    ids=["bad-parent", "no-parent", "foo-parent", "negative-size", "junk-token"],
)
async def test_list_consents_with_bad_input_is_rejected_naming_the_field(
    patients: Stub, request_: pb.ListConsentsRequest, field: str
) -> None:
    fields = await invalid(patients.ListConsents(request_))

    assert fields == [field]


async def _consent_token(stub: Stub, parent: str) -> str:
    for _ in range(2):
        await _grant(stub, parent)
    response = await stub.ListConsents(pb.ListConsentsRequest(parent=parent, page_size=1))
    assert response.next_page_token != ""
    return str(response.next_page_token)


async def test_consent_page_token_of_another_query_is_rejected(patients: Stub) -> None:
    patient = await create(patients)
    other = await create(patients)
    token = await _consent_token(patients, patient.name)

    other_parent = await invalid(
        patients.ListConsents(pb.ListConsentsRequest(parent=other.name, page_token=token))
    )
    active_only = await invalid(
        patients.ListConsents(
            pb.ListConsentsRequest(parent=patient.name, active_only=True, page_token=token)
        )
    )

    assert other_parent == active_only == ["page_token"]


async def test_consent_page_size_above_the_maximum_is_accepted(patients: Stub) -> None:
    patient = await create(patients)
    consent = await _grant(patients, patient.name)

    response = await patients.ListConsents(
        pb.ListConsentsRequest(parent=patient.name, page_size=100_000)
    )

    assert [c.name for c in response.consents] == [consent.name]
