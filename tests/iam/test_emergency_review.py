"""Break the glass, second pass (issue 17): one open grant per person and patient, reasons with
substance, and the privacy officer's review queue with its outcome in the audit trail."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.iam.grant_reason import reason_problem
from his.iam.v1 import iam_service_pb2 as pb
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.server import RunningService
from tests.iam.helpers import (
    Stub,
    add_membership,
    as_,
    create_department,
    create_staff,
    invalid,
    request_id,
)
from tests.iam.test_emergency_access import REASON, Clinician, _clinician, _grant
from tests.identity import Issuer, channel_as
from tests.patient.helpers import Stub as PatientStub
from tests.patient.helpers import create as create_patient
from tests.support import delivered, fails

R = pb.StaffRole
PENDING = pb.EMERGENCY_ACCESS_REVIEW_STATE_PENDING
JUSTIFIED = pb.EMERGENCY_ACCESS_REVIEW_STATE_JUSTIFIED
FLAGGED = pb.EMERGENCY_ACCESS_REVIEW_STATE_FLAGGED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="session")
async def audit_events(
    audit_service: RunningService, issuer: Issuer
) -> AsyncIterator[audit_grpc.AuditServiceAsyncStub]:
    """The session's audit service as an auditor reads it."""
    async with channel_as(audit_service.address, issuer.staff("AUDITOR")) as channel:
        yield audit_grpc.AuditServiceStub(channel)


@pytest.fixture
async def doctor(iam: Stub, issuer: Issuer) -> Clinician:
    """A doctor iam knows."""
    return await _clinician(iam, issuer)


@pytest.fixture
async def officer(iam: Stub, issuer: Issuer) -> Clinician:
    """A privacy officer iam knows."""
    return await _clinician(iam, issuer, "PRIVACY_OFFICER")


@pytest.fixture
async def patient(patients: PatientStub) -> patient_pb.Patient:
    """A new active patient."""
    return await create_patient(patients)


async def _open_grants(iam_db: AsyncEngine, staff: str, patient: str) -> int:
    async with iam_db.connect() as connection:
        count = await connection.scalar(
            text(
                "SELECT count(*) FROM iam.emergency_access_grants "
                "WHERE staff_id = :s AND patient_id = :p AND closed_time IS NULL"
            ),
            {
                "s": uuid.UUID(staff.removeprefix("staff/")),
                "p": uuid.UUID(patient.removeprefix("patients/")),
            },
        )
    return int(count or 0)


def _review(name: str, outcome: int, comment: str = "") -> pb.ReviewEmergencyAccessGrantRequest:
    return pb.ReviewEmergencyAccessGrantRequest(
        name=name,
        outcome=outcome,  # type: ignore[arg-type]
        comment=comment,
    )


# --- one open grant per person and patient ------------------------------------------------------


async def test_a_second_grant_for_the_same_patient_is_refused_while_the_first_is_in_force(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient, patients: PatientStub
) -> None:
    first = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))

    second = await fails(
        iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))
    )
    assert second.code == grpc.StatusCode.ALREADY_EXISTS, second
    assert second.reason == "EMERGENCY_ACCESS_ALREADY_GRANTED"
    # Another patient, or the same one once the first grant is over, is a new grant.
    other = await create_patient(patients)
    await iam.CreateEmergencyAccessGrant(_grant(other.name), metadata=as_(doctor.token))
    await iam.RevokeEmergencyAccessGrant(
        pb.RevokeEmergencyAccessGrantRequest(name=first.name), metadata=as_(doctor.token)
    )
    again = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))
    assert again.name != first.name


async def test_an_expired_grant_makes_room_for_the_next(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient, iam_db: AsyncEngine
) -> None:
    await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, seconds=1), metadata=as_(doctor.token)
    )
    await asyncio.sleep(1.2)

    await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))

    assert await _open_grants(iam_db, doctor.name, patient.name) == 1


async def test_concurrent_grants_for_the_same_person_and_patient_make_exactly_one(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient, iam_db: AsyncEngine
) -> None:
    async def attempt() -> grpc.StatusCode:
        try:
            await iam.CreateEmergencyAccessGrant(
                _grant(patient.name, key=request_id()), metadata=as_(doctor.token)
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(attempt() for _ in range(8)))

    assert (
        sorted(codes, key=lambda c: c.value)
        == [grpc.StatusCode.OK] + [grpc.StatusCode.ALREADY_EXISTS] * 7
    )
    assert await _open_grants(iam_db, doctor.name, patient.name) == 1


async def test_a_replayed_grant_request_returns_the_first_grant_not_a_refusal(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    key = request_id()
    first = await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, key=key), metadata=as_(doctor.token)
    )
    replay = await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, key=key), metadata=as_(doctor.token)
    )
    assert replay.name == first.name


# --- a reason with substance ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "x.x.x.x.x.x.x.x.x.x.x.x.x.x.x",
        "Emergency access needed for the patient now",
        "urgent urgent urgent urgent urgent urgent",
        "abcabcabcabcabcabcabcabcabc",
        "test test test test test test",
        "Lorem ipsum dolor sit amet, emergency",
    ],
)
async def test_a_reason_without_substance_is_refused_naming_the_field(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient, reason: str
) -> None:
    request = _grant(patient.name, reason=reason)
    fields = await invalid(iam.CreateEmergencyAccessGrant(request, metadata=as_(doctor.token)))
    assert fields == ["emergency_access_grant.reason"]


async def test_a_reason_that_names_the_situation_is_accepted(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    reason = "Collapsed in the car park, unresponsive; need allergies before sedation"
    grant = await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, reason=reason), metadata=as_(doctor.token)
    )
    assert grant.reason == reason
    assert grant.review_state == PENDING and not grant.reviewer


# --- the privacy officer's review ----------------------------------------------------------------


async def test_the_privacy_officer_lists_pending_grants_flags_one_and_the_outcome_is_audited(
    iam: Stub,
    doctor: Clinician,
    officer: Clinician,
    patient: patient_pb.Patient,
    audit_events: audit_grpc.AuditServiceAsyncStub,
) -> None:
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))
    pending = pb.ListEmergencyAccessGrantsRequest(patient=patient.name, review_state=PENDING)

    queue = await iam.ListEmergencyAccessGrants(pending, metadata=as_(officer.token))
    assert [g.name for g in queue.emergency_access_grants] == [grant.name]

    reviewed = await iam.ReviewEmergencyAccessGrant(
        _review(grant.name, FLAGGED, "Patient was not in the ED that night"),
        metadata=as_(officer.token),
    )

    assert reviewed.review_state == FLAGGED
    assert reviewed.reviewer == officer.name
    assert reviewed.review_comment == "Patient was not in the ED that night"
    assert reviewed.HasField("review_time")
    # A flagged grant still in force ends with the review.
    assert reviewed.revoked
    queue = await iam.ListEmergencyAccessGrants(pending, metadata=as_(officer.token))
    assert list(queue.emergency_access_grants) == []
    flagged = await iam.ListEmergencyAccessGrants(
        pb.ListEmergencyAccessGrantsRequest(patient=patient.name, review_state=FLAGGED),
        metadata=as_(officer.token),
    )
    assert [g.name for g in flagged.emergency_access_grants] == [grant.name]
    await delivered()
    trail = await audit_events.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(patient=patient.name, page_size=100)
    )
    reviews = [
        e
        for e in trail.audit_events
        if e.operation.endswith("IamService/ReviewEmergencyAccessGrant")
    ]
    assert len(reviews) == 1, trail
    [review] = reviews
    assert review.entity.resource_name == grant.name
    assert review.outcome_description == "emergency access review: flagged"
    assert review.agent.staff == officer.name
    # The grant's whole story carries its fields before and after: made, then flagged.
    changed = {c.field_path: (c.before, c.after) for c in review.entity.changes}
    assert changed["review_state"] == ('"pending"', '"flagged"')
    assert changed["reviewer"] == ("", f'"{officer.name}"')
    assert changed["revoke_time"][0] == ""  # not revoked before the review (null: "")
    [made] = [e for e in trail.audit_events if e.operation.endswith("CreateEmergencyAccessGrant")]
    created = {c.field_path: (c.before, c.after) for c in made.entity.changes}
    assert created["staff"] == ("", f'"{doctor.name}"')
    assert created["patient"] == ("", f'"{patient.name}"')


async def test_a_justified_grant_stays_in_force(
    iam: Stub, doctor: Clinician, officer: Clinician, patient: patient_pb.Patient
) -> None:
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))

    reviewed = await iam.ReviewEmergencyAccessGrant(
        _review(grant.name, JUSTIFIED), metadata=as_(officer.token)
    )

    assert reviewed.review_state == JUSTIFIED and not reviewed.revoked
    assert reviewed.review_comment == ""


async def test_a_grant_is_reviewed_once(
    iam: Stub, doctor: Clinician, officer: Clinician, patient: patient_pb.Patient
) -> None:
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))
    await iam.ReviewEmergencyAccessGrant(
        _review(grant.name, JUSTIFIED), metadata=as_(officer.token)
    )

    again = await fails(
        iam.ReviewEmergencyAccessGrant(
            _review(grant.name, FLAGGED, "second thoughts"), metadata=as_(officer.token)
        )
    )

    assert (again.code, again.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "GRANT_ALREADY_REVIEWED",
    )


@pytest.mark.parametrize("role", ["AUDITOR", "ADMINISTRATOR", "DOCTOR", "NURSE", "REGISTRAR"])
async def test_only_a_privacy_officer_reviews_a_grant(
    iam: Stub, issuer: Issuer, doctor: Clinician, patient: patient_pb.Patient, role: str
) -> None:
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))
    caller = doctor.token if role == "DOCTOR" else issuer.staff(role)

    refused = await fails(
        iam.ReviewEmergencyAccessGrant(_review(grant.name, JUSTIFIED), metadata=as_(caller))
    )

    assert (refused.code, refused.reason) == (DENIED, "ROLE_NOT_PERMITTED"), refused


async def test_a_privacy_officer_does_not_review_their_own_grant(
    iam: Stub, issuer: Issuer, patient: patient_pb.Patient
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_DOCTOR, R.STAFF_ROLE_PRIVACY_OFFICER)
    token = issuer.token(member.name, ("DOCTOR", "PRIVACY_OFFICER"))
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(token))

    refused = await fails(
        iam.ReviewEmergencyAccessGrant(_review(grant.name, JUSTIFIED), metadata=as_(token))
    )

    assert (refused.code, refused.reason) == (DENIED, "SELF_REVIEW")


async def test_reviewing_a_grant_that_does_not_exist_is_not_found(
    iam: Stub, officer: Clinician
) -> None:
    missing = f"emergencyAccessGrants/{uuid.uuid4()}"
    failure = await fails(
        iam.ReviewEmergencyAccessGrant(_review(missing, JUSTIFIED), metadata=as_(officer.token))
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_review("grants/1", JUSTIFIED), "name"),
        (_review(f"emergencyAccessGrants/{uuid.uuid4()}", 0), "outcome"),
        (_review(f"emergencyAccessGrants/{uuid.uuid4()}", PENDING), "outcome"),
        (_review(f"emergencyAccessGrants/{uuid.uuid4()}", 42), "outcome"),
        (_review(f"emergencyAccessGrants/{uuid.uuid4()}", FLAGGED), "comment"),
        (_review(f"emergencyAccessGrants/{uuid.uuid4()}", FLAGGED, "x" * 1001), "comment"),
    ],
)
async def test_a_bad_review_names_the_field(
    iam: Stub, officer: Clinician, request_: pb.ReviewEmergencyAccessGrantRequest, field: str
) -> None:
    fields = await invalid(iam.ReviewEmergencyAccessGrant(request_, metadata=as_(officer.token)))
    assert fields == [field]


async def test_an_unknown_review_state_filter_names_the_field(
    iam: Stub, officer: Clinician
) -> None:
    request = pb.ListEmergencyAccessGrantsRequest(review_state=42)  # type: ignore[arg-type]
    assert await invalid(iam.ListEmergencyAccessGrants(request, metadata=as_(officer.token))) == [
        "review_state"
    ]


def test_the_reason_used_by_the_tests_has_substance() -> None:
    assert reason_problem(REASON) is None


async def test_deactivation_ends_memberships_and_grants_and_audits_each_before_and_after(
    iam: Stub,
    issuer: Issuer,
    doctor: Clinician,
    patient: patient_pb.Patient,
    audit_events: audit_grpc.AuditServiceAsyncStub,
) -> None:
    ward = await create_department(iam)
    membership = await add_membership(iam, doctor.name, ward.name)
    grant = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))

    admin = uuid.uuid4()
    await iam.DeactivateStaffMember(
        pb.DeactivateStaffMemberRequest(name=doctor.name),
        metadata=as_(issuer.staff("ADMINISTRATOR", staff_id=str(admin))),
    )
    await delivered()

    def changes_of(events: Iterable[audit_pb.AuditEvent], name: str) -> dict[str, tuple[str, str]]:
        [event] = [
            e
            for e in events
            if e.entity.resource_name == name and e.operation.endswith("DeactivateStaffMember")
        ]
        return {c.field_path: (c.before, c.after) for c in event.entity.changes}

    disclosures = await audit_events.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(patient=patient.name, page_size=100)
    )
    revoked = changes_of(disclosures.audit_events, grant.name)
    assert revoked["revoke_time"][0] == "" and revoked["revoke_time"][1]
    everything = await audit_events.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(agent_staff=f"staff/{admin}", page_size=100)
    )
    ended = changes_of(everything.audit_events, membership.name)
    assert ended["period.end"][0] == "" and ended["period.end"][1]
