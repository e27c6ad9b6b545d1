"""Break the glass: grants for doctors and nurses, audited before they take effect; listing and
revoking by the holder, auditors and administrators; deactivation revokes."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.iam.config import IamConfig
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.runtime.server import RunningService, start
from tests.conftest import addresses, service_config
from tests.iam.conftest import iam_spec
from tests.iam.helpers import Stub, as_, create_staff, invalid, request_id
from tests.identity import Issuer, channel_as
from tests.patient.helpers import Stub as PatientStub
from tests.patient.helpers import create as create_patient
from tests.support import delivered, fails, free_port

R = pb.StaffRole
REASON = "Unconscious patient in resus, no consent obtainable, allergies needed"


@dataclasses.dataclass(frozen=True)
class Clinician:
    """A staff member iam knows, with a token of the session's test issuer naming them."""

    member: pb.StaffMember
    token: str

    @property
    def name(self) -> str:
        return self.member.name


async def _clinician(iam: Stub, issuer: Issuer, role: str = "DOCTOR") -> Clinician:
    member = await create_staff(iam, R.Value(f"STAFF_ROLE_{role}"))
    return Clinician(member, issuer.staff(role, staff_id=member.name.removeprefix("staff/")))


def _grant(
    patient: str,
    *,
    reason: str = REASON,
    seconds: float | None = None,
    key: str = "",
) -> pb.CreateEmergencyAccessGrantRequest:
    request = pb.CreateEmergencyAccessGrantRequest(
        emergency_access_grant=pb.EmergencyAccessGrant(patient=patient, reason=reason),
        request_id=key,
    )
    if seconds is not None:
        request.duration.CopyFrom(Duration(seconds=int(seconds), nanos=round((seconds % 1) * 1e9)))
    return request


@pytest.fixture
async def doctor(iam: Stub, issuer: Issuer) -> Clinician:
    """A doctor iam knows."""
    return await _clinician(iam, issuer)


@pytest.fixture
async def patient(patients: PatientStub) -> patient_pb.Patient:
    """A new active patient."""
    return await create_patient(patients)


@pytest.fixture(scope="session")
async def audit_events(
    audit_service: RunningService, issuer: Issuer
) -> AsyncIterator[audit_grpc.AuditServiceAsyncStub]:
    """The session's audit service as an auditor reads it."""
    async with channel_as(audit_service.address, issuer.staff("AUDITOR")) as channel:
        yield audit_grpc.AuditServiceStub(channel)


async def _events(
    audit: audit_grpc.AuditServiceAsyncStub, patient: str
) -> list[audit_pb.AuditEvent]:
    await delivered()
    reply = await audit.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(patient=patient, emergency_access_only=True)
    )
    return list(reply.audit_events)


async def _grant_rows(iam_db: AsyncEngine, patient: str) -> int:
    async with iam_db.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM iam.emergency_access_grants WHERE patient_id = :p"),
            {"p": uuid.UUID(patient.removeprefix("patients/"))},
        )
    return int(count or 0)


# --- create ------------------------------------------------------------------------------------


async def test_a_doctor_breaks_the_glass_and_the_grant_is_audited_as_emergency(
    iam: Stub,
    doctor: Clinician,
    patient: patient_pb.Patient,
    audit_events: audit_grpc.AuditServiceAsyncStub,
) -> None:
    before = dt.datetime.now(dt.UTC)

    grant = await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, reason=f"  {REASON}  "), metadata=as_(doctor.token)
    )

    assert grant.name.startswith("emergencyAccessGrants/")
    assert (grant.staff, grant.patient, grant.reason) == (doctor.name, patient.name, REASON)
    granted = grant.grant_time.ToDatetime(tzinfo=dt.UTC)
    assert before - dt.timedelta(seconds=1) <= granted <= dt.datetime.now(dt.UTC)
    assert grant.expire_time.ToDatetime(tzinfo=dt.UTC) - granted == dt.timedelta(hours=1)
    assert not grant.revoked and not grant.HasField("revoke_time")
    [event] = await _events(audit_events, patient.name)
    assert event.action == audit_pb.AUDIT_EVENT_ACTION_EXECUTE
    assert event.outcome == audit_pb.AUDIT_EVENT_OUTCOME_SUCCESS
    assert event.operation.endswith("his.iam.v1.IamService/CreateEmergencyAccessGrant")
    assert event.purpose_of_use == audit_pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT
    assert event.emergency_access is True
    assert event.emergency_access_grant == grant.name
    assert (event.entity.resource_name, event.entity.resource_type) == (
        grant.name,
        "his.iam.v1.EmergencyAccessGrant",
    )
    assert event.agent.staff == doctor.name
    assert list(event.agent.roles) == ["DOCTOR"]
    assert event.agent.service_account == "services/iam"


async def test_a_nurse_breaks_the_glass_for_a_chosen_duration(
    iam: Stub, issuer: Issuer, patient: patient_pb.Patient
) -> None:
    nurse = await _clinician(iam, issuer, "NURSE")

    grant = await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, seconds=600), metadata=as_(nurse.token)
    )

    span = grant.expire_time.ToDatetime() - grant.grant_time.ToDatetime()
    assert span == dt.timedelta(minutes=10)
    assert grant.staff == nurse.name


async def test_a_replayed_grant_returns_the_first_and_is_audited_once(
    iam: Stub,
    doctor: Clinician,
    patient: patient_pb.Patient,
    audit_events: audit_grpc.AuditServiceAsyncStub,
    iam_db: AsyncEngine,
) -> None:
    request = _grant(patient.name, key=request_id())

    replies = await asyncio.gather(
        *(iam.CreateEmergencyAccessGrant(request, metadata=as_(doctor.token)) for _ in range(10))
    )

    assert len({reply.name for reply in replies}) == 1
    assert await _grant_rows(iam_db, patient.name) == 1
    assert len(await _events(audit_events, patient.name)) == 1


async def test_a_request_id_reused_for_another_grant_is_refused(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient, patients: PatientStub
) -> None:
    key = request_id()
    await iam.CreateEmergencyAccessGrant(_grant(patient.name, key=key), metadata=as_(doctor.token))
    other = await create_patient(patients)

    fields = await invalid(
        iam.CreateEmergencyAccessGrant(_grant(other.name, key=key), metadata=as_(doctor.token))
    )

    assert fields == ["request_id"]


async def test_request_ids_belong_to_their_staff_member(
    iam: Stub, issuer: Issuer, patient: patient_pb.Patient
) -> None:
    first, second = await _clinician(iam, issuer), await _clinician(iam, issuer)
    request = _grant(patient.name, key=request_id())

    mine = await iam.CreateEmergencyAccessGrant(request, metadata=as_(first.token))
    theirs = await iam.CreateEmergencyAccessGrant(request, metadata=as_(second.token))

    assert mine.name != theirs.name
    assert (mine.staff, theirs.staff) == (first.name, second.name)


@pytest.mark.parametrize("role", ["REGISTRAR", "ADMINISTRATOR", "AUDITOR", "PHARMACIST", "SERVICE"])
async def test_only_doctors_and_nurses_break_the_glass(
    iam: Stub, issuer: Issuer, patient: patient_pb.Patient, iam_db: AsyncEngine, role: str
) -> None:
    if role == "SERVICE":
        token = issuer.service("emr")
    else:
        member = await create_staff(iam, R.Value(f"STAFF_ROLE_{role}"))
        token = issuer.staff(role, staff_id=member.name.removeprefix("staff/"))

    failure = await fails(iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(token)))

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert await _grant_rows(iam_db, patient.name) == 0


async def test_a_doctor_unknown_to_iam_or_inactive_is_refused(
    iam: Stub, issuer: Issuer, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=doctor.name))

    for token in (issuer.staff("DOCTOR"), doctor.token):
        failure = await fails(
            iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(token))
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED
        assert failure.reason == "STAFF_NOT_ACTIVE"


async def test_a_missing_patient_fails_precondition(iam: Stub, doctor: Clinician) -> None:
    failure = await fails(
        iam.CreateEmergencyAccessGrant(
            _grant(f"patients/{uuid.uuid4()}"), metadata=as_(doctor.token)
        )
    )

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "PATIENT_NOT_FOUND"


async def test_an_inactive_or_merged_patient_fails_precondition(
    iam: Stub, doctor: Clinician, patients: PatientStub
) -> None:
    inactive = await create_patient(patients)
    await patients.DeactivatePatient(patient_pb.DeactivatePatientRequest(name=inactive.name))
    duplicate, survivor = await create_patient(patients), await create_patient(patients)
    await patients.MergePatients(
        patient_pb.MergePatientsRequest(name=duplicate.name, survivor=survivor.name)
    )

    for name, reason in ((inactive.name, "PATIENT_INACTIVE"), (duplicate.name, "PATIENT_MERGED")):
        failure = await fails(
            iam.CreateEmergencyAccessGrant(_grant(name), metadata=as_(doctor.token))
        )
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == reason


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_grant(""), "emergency_access_grant.patient"),
        (_grant("patients/123"), "emergency_access_grant.patient"),
        (_grant(f"staff/{uuid.uuid4()}"), "emergency_access_grant.patient"),
        (_grant(f"patients/{uuid.uuid4()}", reason=""), "emergency_access_grant.reason"),
        (_grant(f"patients/{uuid.uuid4()}", reason="x" * 19), "emergency_access_grant.reason"),
        (
            _grant(f"patients/{uuid.uuid4()}", reason=" " * 5 + "y" * 19 + " " * 5),
            "emergency_access_grant.reason",
        ),
        (_grant(f"patients/{uuid.uuid4()}", reason="x" * 1001), "emergency_access_grant.reason"),
        (_grant(f"patients/{uuid.uuid4()}", seconds=0.5), "duration"),
        (_grant(f"patients/{uuid.uuid4()}", seconds=4 * 3600 + 1), "duration"),
        (_grant(f"patients/{uuid.uuid4()}", key="x" * 65), "request_id"),
    ],
)
async def test_bad_grant_request_names_the_field(
    iam: Stub, doctor: Clinician, request_: pb.CreateEmergencyAccessGrantRequest, field: str
) -> None:
    fields = await invalid(iam.CreateEmergencyAccessGrant(request_, metadata=as_(doctor.token)))

    assert fields == [field]


async def test_a_negative_duration_names_the_field(iam: Stub, doctor: Clinician) -> None:
    request = _grant(f"patients/{uuid.uuid4()}")
    request.duration.CopyFrom(Duration(seconds=-60))

    fields = await invalid(iam.CreateEmergencyAccessGrant(request, metadata=as_(doctor.token)))

    assert fields == ["duration"]


async def test_a_grant_without_a_grant_names_it(iam: Stub, doctor: Clinician) -> None:
    fields = await invalid(
        iam.CreateEmergencyAccessGrant(
            pb.CreateEmergencyAccessGrantRequest(), metadata=as_(doctor.token)
        )
    )

    assert fields[0] == "emergency_access_grant"


# --- outages -----------------------------------------------------------------------------------


@asynccontextmanager
async def _iam_with(iam_url: str, config: IamConfig, **env: str) -> AsyncIterator[Stub]:
    running = await start(iam_spec(config), service_config("iam", **env), iam_url)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield pb_grpc.IamServiceStub(channel)
    finally:
        await running.stop(grace_s=1)


async def test_a_grant_made_while_the_audit_service_is_away_reaches_the_trail_when_it_is_back(
    doctor: Clinician,
    patient: patient_pb.Patient,
    iam_url: str,
    iam_db: AsyncEngine,
    make_iam_config: Callable[..., IamConfig],
    patient_service: RunningService,
    audit_events: audit_grpc.AuditServiceAsyncStub,
) -> None:
    # Break-the-glass must not wait on the audit service: the grant and its audit event commit
    # together in iam's own database (the outbox), and the event reaches the trail later.
    dead = {"HIS_AUDIT_ADDR": f"localhost:{free_port()}", **addresses(patient_service)}
    async with _iam_with(iam_url, make_iam_config(), **dead) as stub:
        grant = await stub.CreateEmergencyAccessGrant(
            _grant(patient.name), metadata=as_(doctor.token)
        )
        async with iam_db.connect() as connection:
            waiting = await connection.scalar(
                text("SELECT count(*) FROM iam.outbox WHERE destination = 'audit'")
            )
    assert waiting, "the grant's audit event must wait in iam's outbox"
    assert await _grant_rows(iam_db, patient.name) == 1

    # The tests' iam (same database) relays it to the real audit service.
    [event] = await _events(audit_events, patient.name)
    assert event.emergency_access_grant == grant.name


async def test_without_the_patient_service_no_grant_is_made(
    doctor: Clinician,
    patient: patient_pb.Patient,
    iam_url: str,
    iam_db: AsyncEngine,
    make_iam_config: Callable[..., IamConfig],
    audit_service: RunningService,
) -> None:
    dead = {"HIS_PATIENT_ADDR": f"localhost:{free_port()}", **addresses(audit_service)}
    async with _iam_with(iam_url, make_iam_config(), **dead) as stub:
        failure = await fails(
            stub.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))
        )

    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert await _grant_rows(iam_db, patient.name) == 0


# --- list --------------------------------------------------------------------------------------


async def _grants_of(
    iam: Stub, clinician: Clinician, patient: str, n: int
) -> list[pb.EmergencyAccessGrant]:
    """`n` grants of the clinician for the patient, one after the other: each but the last
    revoked by its holder before the next (one open grant per person and patient)."""
    made = []
    for index in range(n):
        grant = await iam.CreateEmergencyAccessGrant(_grant(patient), metadata=as_(clinician.token))
        if index < n - 1:
            grant = await iam.RevokeEmergencyAccessGrant(
                pb.RevokeEmergencyAccessGrantRequest(name=grant.name),
                metadata=as_(clinician.token),
            )
        made.append(grant)
    return made


async def test_a_clinician_lists_their_own_grants_newest_first(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    made = await _grants_of(iam, doctor, patient.name, 3)

    seen: list[pb.EmergencyAccessGrant] = []
    token = ""
    while True:
        page = await iam.ListEmergencyAccessGrants(
            pb.ListEmergencyAccessGrantsRequest(staff=doctor.name, page_size=2, page_token=token),
            metadata=as_(doctor.token),
        )
        seen.extend(page.emergency_access_grants)
        token = page.next_page_token
        if not token:
            break

    assert seen == list(reversed(made))


async def test_a_clinician_may_not_list_other_grants(
    iam: Stub, issuer: Issuer, doctor: Clinician
) -> None:
    other = await _clinician(iam, issuer, "NURSE")

    for request in (
        pb.ListEmergencyAccessGrantsRequest(),
        pb.ListEmergencyAccessGrantsRequest(staff=other.name),
    ):
        failure = await fails(iam.ListEmergencyAccessGrants(request, metadata=as_(doctor.token)))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("caller", ["AUDITOR", "ADMINISTRATOR", "SERVICE"])
async def test_auditors_administrators_and_services_list_any_grants(
    iam: Stub, issuer: Issuer, doctor: Clinician, patient: patient_pb.Patient, caller: str
) -> None:
    [grant] = await _grants_of(iam, doctor, patient.name, 1)
    token = issuer.service("emr") if caller == "SERVICE" else issuer.staff(caller)

    by_patient = await iam.ListEmergencyAccessGrants(
        pb.ListEmergencyAccessGrantsRequest(patient=patient.name), metadata=as_(token)
    )
    everything = await iam.ListEmergencyAccessGrants(
        pb.ListEmergencyAccessGrantsRequest(page_size=500), metadata=as_(token)
    )

    assert list(by_patient.emergency_access_grants) == [grant]
    assert grant in everything.emergency_access_grants


async def test_active_only_leaves_out_revoked_and_expired_grants(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    # One open grant at a time: revoked, then expired, then the one in force.
    revoked = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))
    await iam.RevokeEmergencyAccessGrant(pb.RevokeEmergencyAccessGrantRequest(name=revoked.name))
    expiring = await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, seconds=1), metadata=as_(doctor.token)
    )
    await asyncio.sleep(1.2)
    active = await iam.CreateEmergencyAccessGrant(_grant(patient.name), metadata=as_(doctor.token))

    reply = await iam.ListEmergencyAccessGrants(
        pb.ListEmergencyAccessGrantsRequest(
            staff=doctor.name, patient=patient.name, active_only=True
        ),
        metadata=as_(doctor.token),
    )
    everything = await iam.ListEmergencyAccessGrants(
        pb.ListEmergencyAccessGrantsRequest(staff=doctor.name, patient=patient.name)
    )

    assert [g.name for g in reply.emergency_access_grants] == [active.name]
    assert {g.name for g in everything.emergency_access_grants} == {
        expiring.name,
        revoked.name,
        active.name,
    }


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListEmergencyAccessGrantsRequest(staff="staff/x"), "staff"),
        (pb.ListEmergencyAccessGrantsRequest(patient="patient/1"), "patient"),
        (pb.ListEmergencyAccessGrantsRequest(page_size=-1), "page_size"),
        (pb.ListEmergencyAccessGrantsRequest(page_token="nope"), "page_token"),
    ],
)
async def test_bad_list_request_names_the_field(
    iam: Stub, request_: pb.ListEmergencyAccessGrantsRequest, field: str
) -> None:
    assert await invalid(iam.ListEmergencyAccessGrants(request_)) == [field]


# --- revoke ------------------------------------------------------------------------------------


async def test_the_holder_revokes_a_grant_once(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    [grant] = await _grants_of(iam, doctor, patient.name, 1)

    revoked = await iam.RevokeEmergencyAccessGrant(
        pb.RevokeEmergencyAccessGrantRequest(name=grant.name), metadata=as_(doctor.token)
    )
    again = await iam.RevokeEmergencyAccessGrant(
        pb.RevokeEmergencyAccessGrantRequest(name=grant.name), metadata=as_(doctor.token)
    )

    assert revoked.revoked is True
    assert revoked.revoke_time.ToDatetime() >= grant.grant_time.ToDatetime()
    assert revoked.expire_time == grant.expire_time
    assert again == revoked


async def test_revoking_an_expired_grant_changes_nothing(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    grant = await iam.CreateEmergencyAccessGrant(
        _grant(patient.name, seconds=1), metadata=as_(doctor.token)
    )
    await asyncio.sleep(1.2)

    after = await iam.RevokeEmergencyAccessGrant(
        pb.RevokeEmergencyAccessGrantRequest(name=grant.name)
    )

    assert after == grant


async def test_an_administrator_revokes_anyones_grant(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    [grant] = await _grants_of(iam, doctor, patient.name, 1)

    revoked = await iam.RevokeEmergencyAccessGrant(
        pb.RevokeEmergencyAccessGrantRequest(name=grant.name)
    )

    assert revoked.revoked is True


async def test_an_auditor_revokes_anyones_grant(
    iam: Stub, issuer: Issuer, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    [grant] = await _grants_of(iam, doctor, patient.name, 1)

    revoked = await iam.RevokeEmergencyAccessGrant(
        pb.RevokeEmergencyAccessGrantRequest(name=grant.name),
        metadata=as_(issuer.staff("AUDITOR")),
    )

    assert revoked.revoked is True


async def test_another_clinician_may_not_revoke_and_learns_nothing(
    iam: Stub, issuer: Issuer, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    [grant] = await _grants_of(iam, doctor, patient.name, 1)
    other = await _clinician(iam, issuer)

    for name in (grant.name, f"emergencyAccessGrants/{uuid.uuid4()}"):
        failure = await fails(
            iam.RevokeEmergencyAccessGrant(
                pb.RevokeEmergencyAccessGrantRequest(name=name), metadata=as_(other.token)
            )
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED


async def test_revoking_a_missing_grant_is_not_found(iam: Stub) -> None:
    failure = await fails(
        iam.RevokeEmergencyAccessGrant(
            pb.RevokeEmergencyAccessGrantRequest(name=f"emergencyAccessGrants/{uuid.uuid4()}")
        )
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["", "emergencyAccessGrants/1", f"grants/{uuid.uuid4()}"])
async def test_revoking_with_a_bad_name_names_the_field(iam: Stub, name: str) -> None:
    assert await invalid(
        iam.RevokeEmergencyAccessGrant(pb.RevokeEmergencyAccessGrantRequest(name=name))
    ) == ["name"]


async def test_deactivating_the_holder_revokes_their_grants(
    iam: Stub, doctor: Clinician, patient: patient_pb.Patient
) -> None:
    [grant] = await _grants_of(iam, doctor, patient.name, 1)

    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=doctor.name))

    after = await iam.ListEmergencyAccessGrants(
        pb.ListEmergencyAccessGrantsRequest(staff=doctor.name)
    )
    [stored] = after.emergency_access_grants
    assert stored.name == grant.name
    assert stored.revoked is True
