"""Enrolments that take two administrators (his.iam.enrolment_rule), against the running iam and
audit services: a re-enrolment, or the enrolment of someone holding or proposed a clinical or
administrator role, works only with the creator's half of the code and a second administrator's.

The iam under test has a bootstrap administrator with a credential, so a second administrator who
could approve always exists here; the lone-administrator exception is tested on a new
installation of its own. The test issuer's tokens name each administrator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.iam.config import IamConfig
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, start
from tests.conftest import service_config
from tests.iam.conftest import fresh_database, iam_spec
from tests.iam.helpers import (
    PASSWORD,
    Enrolled,
    Stub,
    as_,
    bootstrap_login,
    create_staff,
    enrol,
    invalid,
    login,
    login_as,
    make_staff,
    propose_staff,
    staff_id,
)
from tests.identity import Issuer, channel_as
from tests.support import delivered, fails

R = pb.StaffRole


@dataclasses.dataclass(frozen=True)
class Admin:
    """An administrator iam knows, with a test-issuer token naming them."""

    name: str
    token: str


async def _admin(iam: Stub, issuer: Issuer) -> Admin:
    member = await create_staff(iam, R.STAFF_ROLE_ADMINISTRATOR)
    return Admin(member.name, issuer.staff("ADMINISTRATOR", staff_id=staff_id(member.name)))


@pytest.fixture
async def x(iam: Stub, issuer: Issuer) -> Admin:
    """The administrator who creates enrolments."""
    return await _admin(iam, issuer)


@pytest.fixture
async def y(iam: Stub, issuer: Issuer) -> Admin:
    """A second administrator."""
    return await _admin(iam, issuer)


@pytest.fixture(scope="session")
async def auditor(
    audit_service: RunningService, issuer: Issuer
) -> AsyncIterator[audit_grpc.AuditServiceAsyncStub]:
    """The session's audit service as an auditor reads it."""
    async with channel_as(audit_service.address, issuer.staff("AUDITOR")) as channel:
        yield audit_grpc.AuditServiceStub(channel)


async def _create(iam: Stub, member: pb.StaffMember, admin: Admin) -> pb.StaffEnrolment:
    return await iam.CreateStaffEnrolment(
        pb.CreateStaffEnrolmentRequest(parent=member.name), metadata=as_(admin.token)
    )


async def _approve(iam: Stub, name: str, admin: Admin | str) -> pb.StaffEnrolment:
    token = admin.token if isinstance(admin, Admin) else admin
    return await iam.ApproveStaffEnrolment(
        pb.ApproveStaffEnrolmentRequest(name=name), metadata=as_(token)
    )


def _complete(
    iam: Stub, member: pb.StaffMember, code: str, approval_code: str = "", password: str = PASSWORD
) -> Awaitable[pb.CompleteStaffEnrolmentResponse]:
    return iam.CompleteStaffEnrolment(
        pb.CompleteStaffEnrolmentRequest(
            username=member.username,
            enrolment_code=code,
            approval_code=approval_code,
            password=password,
        )
    )


def _other_code(code: str) -> str:
    return ("A" if code[0] != "A" else "B") + code[1:]


async def _refused_code(call: Awaitable[object]) -> None:
    failure = await fails(call)
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "ENROLMENT_CODE_INVALID",
    ), failure


# --- the takeover ------------------------------------------------------------------------------


async def test_an_administrator_cannot_take_over_another_administrator_by_re_enrolling_them(
    iam: Stub, x: Admin, y: Admin, issuer: Issuer
) -> None:
    # V: an administrator with a credential. X wants their own proposal approved "as V".
    v_member = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=y.name))
    v = await enrol(iam, v_member)
    proposal = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_DOCTOR)),
        metadata=as_(x.token),
    )
    assert proposal.pending_access_change

    enrolment = await _create(iam, v_member, x)

    # X holds half a code: it sets no password, alone or with a guessed second half.
    assert enrolment.approval_required and enrolment.creator == x.name
    await _refused_code(
        _complete(iam, v_member, enrolment.enrolment_code, password="x owns v now!")
    )
    # X cannot approve their own enrolment, nor can V be talked into approving theirs.
    as_x = await fails(_approve(iam, enrolment.name, x))
    assert (as_x.code, as_x.reason) == (grpc.StatusCode.PERMISSION_DENIED, "APPROVER_IS_PROPOSER")
    v_token = issuer.staff("ADMINISTRATOR", staff_id=staff_id(y.name))
    as_v = await fails(_approve(iam, enrolment.name, v_token))
    assert (as_v.code, as_v.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SELF_ENROLMENT")
    # V's own credential stands; X's password is not V's; X's proposal still waits.
    assert (await login_as(iam, v)).access_token
    wrong = await fails(login(iam, v.username, "x owns v now!", v.totp_code()))
    assert wrong.reason == "INVALID_CREDENTIALS"
    change = await iam.GetAccessChange(
        pb.GetAccessChangeRequest(name=proposal.pending_access_change)
    )
    assert change.state == pb.ACCESS_CHANGE_STATE_PENDING


async def test_the_database_replaces_a_credential_only_through_an_approved_two_person_enrolment(
    iam: Stub, iam_db: AsyncEngine
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    await enrol(iam, member)  # a first enrolment, by one administrator

    with pytest.raises(DBAPIError, match="replaced only through an enrolment approved"):
        async with iam_db.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE iam.staff_credentials SET password_hash = '$argon2id$forged' "
                    "WHERE staff_id = :id"
                ),
                {"id": staff_id(member.name)},
            )
    # An approval by the enrolment's own creator is refused by the table's checks too.
    with pytest.raises(DBAPIError, match="enrolment_approver_not_creator"):
        async with iam_db.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE iam.staff_enrolments SET approval_required = true, "
                    "approved_by = created_by, approve_time = now(), "
                    "approval_code_hash = sha256('x'::bytea) WHERE staff_id = :id"
                ),
                {"id": staff_id(member.name)},
            )


# --- happy path and who needs two ----------------------------------------------------------------


async def test_a_doctor_enrols_with_both_halves_once_a_second_administrator_approved(
    iam: Stub, x: Admin, y: Admin
) -> None:
    doctor = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolment = await _create(iam, doctor, x)

    approved = await _approve(iam, enrolment.name, y)

    assert enrolment.approval_required and not enrolment.approver
    assert (approved.name, approved.creator, approved.approver) == (enrolment.name, x.name, y.name)
    assert approved.approval_required and approved.HasField("approve_time")
    assert approved.expire_time == enrolment.expire_time
    assert len(approved.enrolment_code) == 16
    assert approved.enrolment_code != enrolment.enrolment_code
    reply = await _complete(iam, doctor, enrolment.enrolment_code, approved.enrolment_code)
    enrolled = Enrolled(doctor.username, PASSWORD, reply.totp_secret)
    assert (await login_as(iam, enrolled)).access_token


async def test_one_administrator_enrols_a_registrar_the_first_time_and_two_re_enrol_them(
    iam: Stub, x: Admin, y: Admin
) -> None:
    registrar = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    first = await _create(iam, registrar, x)
    assert not first.approval_required
    await _complete(iam, registrar, first.enrolment_code)

    again = await _create(iam, registrar, x)

    assert again.approval_required
    await _refused_code(_complete(iam, registrar, again.enrolment_code, password="a new password"))
    second = await _approve(iam, again.name, y)
    await _complete(iam, registrar, again.enrolment_code, second.enrolment_code, "a new password")
    assert (await login(iam, registrar.username, "a new password")).access_token


async def test_a_proposed_clinical_role_already_takes_two_administrators(
    iam: Stub, x: Admin
) -> None:
    newcomer = await propose_staff(iam, R.STAFF_ROLE_NURSE)
    assert not newcomer.roles and newcomer.pending_access_change

    assert (await _create(iam, newcomer, x)).approval_required


async def test_a_one_administrator_code_stops_working_once_a_clinical_role_is_approved(
    iam: Stub, x: Admin, y: Admin
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolment = await _create(iam, member, x)
    assert not enrolment.approval_required
    updated = await iam.UpdateStaffMember(
        pb.UpdateStaffMemberRequest(
            staff_member=pb.StaffMember(
                name=member.name, roles=[R.STAFF_ROLE_REGISTRAR, R.STAFF_ROLE_DOCTOR]
            ),
            update_mask=FieldMask(paths=["roles"]),
        ),
        metadata=as_(x.token),
    )
    await iam.ApproveAccessChange(
        pb.ApproveAccessChangeRequest(name=updated.pending_access_change), metadata=as_(y.token)
    )

    await _refused_code(_complete(iam, member, enrolment.enrolment_code))


# --- completing with less than both halves -------------------------------------------------------


async def test_half_a_code_or_mismatched_halves_never_enrol(iam: Stub, x: Admin, y: Admin) -> None:
    doctor = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolment = await _create(iam, doctor, x)
    # Before the second administrator acted, the first half is nothing.
    await _refused_code(_complete(iam, doctor, enrolment.enrolment_code))
    approved = await _approve(iam, enrolment.name, y)
    # After: the halves swapped, or the first with a wrong second, are nothing either.
    await _refused_code(_complete(iam, doctor, approved.enrolment_code, enrolment.enrolment_code))

    # (a third failure would lock the username: the right pair works on a fresh member below)
    nurse_member = await create_staff(iam, R.STAFF_ROLE_NURSE)
    nurse_enrolment = await _create(iam, nurse_member, x)
    nurse_half = await _approve(iam, nurse_enrolment.name, y)
    await _refused_code(
        _complete(
            iam,
            nurse_member,
            nurse_enrolment.enrolment_code,
            _other_code(nurse_half.enrolment_code),
        )
    )
    await _refused_code(_complete(iam, nurse_member, nurse_enrolment.enrolment_code))
    # The right pair still works (two failures are under the limit).
    assert await _complete(
        iam, nurse_member, nurse_enrolment.enrolment_code, nurse_half.enrolment_code
    )


async def test_an_approved_enrolment_still_expires(
    iam: Stub, x: Admin, y: Admin, iam_db: AsyncEngine
) -> None:
    doctor = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolment = await _create(iam, doctor, x)
    approved = await _approve(iam, enrolment.name, y)
    async with iam_db.begin() as connection:
        await connection.execute(
            text(
                "UPDATE iam.staff_enrolments SET create_time = now() - interval '2 days', "
                "approve_time = now() - interval '1 day', "
                "expire_time = now() - interval '1 second' WHERE staff_id = :id"
            ),
            {"id": staff_id(doctor.name)},
        )

    await _refused_code(_complete(iam, doctor, enrolment.enrolment_code, approved.enrolment_code))


# --- the approval's errors ---------------------------------------------------------------------


async def test_approving_an_enrolment_errors(
    iam: Stub, x: Admin, y: Admin, issuer: Issuer, iam_db: AsyncEngine
) -> None:
    doctor = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolment = await _create(iam, doctor, x)

    assert await invalid(iam.ApproveStaffEnrolment(pb.ApproveStaffEnrolmentRequest())) == ["name"]
    assert await invalid(_approve(iam, doctor.name, y)) == ["name"]
    missing = await fails(_approve(iam, f"{doctor.name}/enrolments/{uuid.uuid4()}", y))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    registrar = await fails(_approve(iam, enrolment.name, issuer.staff("REGISTRAR")))
    assert registrar.code == grpc.StatusCode.PERMISSION_DENIED
    same = await fails(_approve(iam, enrolment.name, x))
    assert (same.code, same.reason) == (grpc.StatusCode.PERMISSION_DENIED, "APPROVER_IS_PROPOSER")
    # An administrator deactivated since their token was issued approves nothing.
    gone = await _admin(iam, issuer)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=gone.name))
    stale = await fails(_approve(iam, enrolment.name, gone))
    assert (stale.code, stale.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "APPROVER_NOT_ADMINISTRATOR",
    )

    await _approve(iam, enrolment.name, y)
    twice = await fails(_approve(iam, enrolment.name, issuer.staff("ADMINISTRATOR")))
    assert (twice.code, twice.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENROLMENT_ALREADY_APPROVED",
    )

    registrar_member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    single = await _create(iam, registrar_member, x)
    not_needed = await fails(_approve(iam, single.name, y))
    assert (not_needed.code, not_needed.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENROLMENT_APPROVAL_NOT_REQUIRED",
    )

    nurse = await create_staff(iam, R.STAFF_ROLE_NURSE)
    retired = await _create(iam, nurse, x)
    await _create(iam, nurse, x)
    closed = await fails(_approve(iam, retired.name, y))
    assert (closed.code, closed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ENROLMENT_CLOSED")
    assert closed.metadata["state"] == "retired"

    expiring = await _create(iam, nurse, x)
    async with iam_db.begin() as connection:
        await connection.execute(
            text(
                "UPDATE iam.staff_enrolments SET create_time = now() - interval '2 days', "
                "expire_time = now() - interval '1 second' WHERE id = :id"
            ),
            {"id": expiring.name.rsplit("/", 1)[1]},
        )
    expired = await fails(_approve(iam, expiring.name, y))
    assert (expired.reason, expired.metadata["state"]) == ("ENROLMENT_CLOSED", "expired")

    leaving = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    pending = await _create(iam, leaving, x)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=leaving.name))
    inactive = await fails(_approve(iam, pending.name, y))
    assert (inactive.code, inactive.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STAFF_INACTIVE",
    )


# --- audit -------------------------------------------------------------------------------------


def _changes(event: audit_pb.AuditEvent) -> dict[str, tuple[object, object]]:
    def value(raw: str) -> object:
        return json.loads(raw) if raw else None

    return {c.field_path: (value(c.before), value(c.after)) for c in event.entity.changes}


async def _by(auditor: audit_grpc.AuditServiceAsyncStub, staff: str) -> list[audit_pb.AuditEvent]:
    await delivered()
    reply = await auditor.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(agent_staff=staff, page_size=500)
    )
    return sorted(reply.audit_events, key=lambda event: event.sequence_number)


async def test_each_step_is_audited_by_its_actor_with_before_and_after_never_a_secret(
    iam: Stub, x: Admin, y: Admin, auditor: audit_grpc.AuditServiceAsyncStub
) -> None:
    doctor = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolment = await _create(iam, doctor, x)
    approved = await _approve(iam, enrolment.name, y)
    reply = await _complete(iam, doctor, enrolment.enrolment_code, approved.enrolment_code)

    [created] = [e for e in await _by(auditor, x.name) if e.entity.resource_name == enrolment.name]
    [approval] = [e for e in await _by(auditor, y.name) if e.entity.resource_name == enrolment.name]
    completed = await _by(auditor, doctor.name)

    assert _changes(created)["approval_required"] == (None, True)
    assert _changes(created)["creator"] == (None, x.name)
    assert _changes(approval)["approver"] == (None, y.name)
    # Completion: nobody was signed in; the staff member is the actor, completing enrolment.
    [used] = [e for e in completed if e.entity.resource_name == enrolment.name]
    [credential] = [e for e in completed if e.entity.resource_name == doctor.name]
    assert used.operation.endswith("IamService/CompleteStaffEnrolment")
    assert used.action == audit_pb.AUDIT_EVENT_ACTION_UPDATE
    assert _changes(used)["used_time"][0] is None and _changes(used)["used_time"][1]
    assert _changes(credential) == {
        "credential.password": (None, "set"),
        "credential.totp_secret": (None, "set"),
        # Two administrators stood behind it (migration 0009).
        "credential.assurance": (None, "TWO_ADMINISTRATORS"),
    }
    assert _changes(created)["assurance"] == (None, "TWO_ADMINISTRATORS")
    trail = str([created, approval, *completed])
    secrets = (
        enrolment.enrolment_code,
        approved.enrolment_code,
        PASSWORD,
        reply.totp_secret,
    )
    assert not [secret for secret in secrets if secret in trail]


async def test_a_re_enrolment_is_audited_as_the_credential_replaced(
    iam: Stub, auditor: audit_grpc.AuditServiceAsyncStub
) -> None:
    registrar = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    await enrol(iam, registrar)
    await enrol(iam, registrar, "a replacement password")

    events = await _by(auditor, registrar.name)
    credential = [_changes(e) for e in events if e.entity.resource_name == registrar.name]

    assert credential[-1]["credential.password"] == ("set", "replaced")


# --- a new installation -------------------------------------------------------------------------


@pytest.fixture
async def new_installation(
    postgres: EmbeddedPostgres, make_iam_config: Callable[..., IamConfig], issuer: Issuer
) -> AsyncIterator[tuple[Stub, str]]:
    """An iam on a fresh database whose only staff member is its bootstrap administrator; the
    stub calls as that administrator, whose token is also returned."""
    url = await fresh_database(postgres, f"his_iam_enrol_{uuid.uuid4().hex[:8]}")
    running: RunningService = await start(
        iam_spec(make_iam_config(bootstrap_admin="first.admin")), service_config("iam"), url
    )
    try:
        async with channel_as(running.address, issuer.staff("AUDITOR")) as channel:
            stub: Stub = pb_grpc.IamServiceStub(channel)
            await bootstrap_login(stub, "first.admin")
        async with channel_as(running.address, issuer.staff("ADMINISTRATOR")) as channel:
            lookup: Stub = pb_grpc.IamServiceStub(channel)
            found = await lookup.ListStaffMembers(
                pb.ListStaffMembersRequest(username="first.admin")
            )
        first = issuer.staff("ADMINISTRATOR", staff_id=staff_id(found.staff_members[0].name))
        async with channel_as(running.address, first) as channel:
            yield pb_grpc.IamServiceStub(channel), first
    finally:
        await running.stop(grace_s=1)


async def test_the_bootstrap_administrator_alone_enrols_the_second_administrator_and_no_more(
    new_installation: tuple[Stub, str],
) -> None:
    iam, _ = new_installation
    second = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR))
    )
    assert list(second.roles) == [R.STAFF_ROLE_ADMINISTRATOR]  # the setup window

    # Nobody else could approve: the first administrator alone enrols the second.
    first_code = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=second.name))
    assert not first_code.approval_required
    await _complete(iam, second, first_code.enrolment_code)

    # From then on a second administrator exists: re-enrolling them, or enrolling a doctor,
    # takes two.
    again = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=second.name))
    doctor = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_DOCTOR))
    )
    for_doctor = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=doctor.name))
    assert again.approval_required and for_doctor.approval_required


async def test_concurrent_approvals_give_out_one_second_half(
    iam: Stub, x: Admin, y: Admin, issuer: Issuer
) -> None:
    doctor = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    enrolment = await _create(iam, doctor, x)

    results = await asyncio.gather(
        _approve(iam, enrolment.name, y),
        _approve(iam, enrolment.name, issuer.staff("ADMINISTRATOR")),
        return_exceptions=True,
    )

    won = [r for r in results if isinstance(r, pb.StaffEnrolment)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert dt.datetime.now(dt.UTC) >= won[0].approve_time.ToDatetime(dt.UTC)


async def test_with_security_off_creation_and_completion_agree_that_one_administrator_suffices(
    postgres: EmbeddedPostgres, make_iam_config: Callable[..., IamConfig]
) -> None:
    """HIS_SECURITY=off checks no caller, so nobody could approve: CreateStaffEnrolment says no
    approval is needed, and completion no longer refuses a doctor's enrolment because an
    administrator with a credential exists (the bootstrap administrator here)."""
    url = await fresh_database(postgres, f"his_iam_off_{uuid.uuid4().hex[:8]}")
    running: RunningService = await start(
        iam_spec(make_iam_config(bootstrap_admin="first.admin")),
        service_config("iam", HIS_SECURITY="off"),
        url,
    )
    try:
        async with channel_as(running.address, "") as channel:
            iam: Stub = pb_grpc.IamServiceStub(channel)
            await bootstrap_login(iam, "first.admin")
            doctor = await iam.CreateStaffMember(
                pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_DOCTOR))
            )
            code = await iam.CreateStaffEnrolment(
                pb.CreateStaffEnrolmentRequest(parent=doctor.name)
            )
            assert not code.approval_required
            reply = await _complete(iam, doctor, code.enrolment_code)
            assert reply.totp_required
    finally:
        await running.stop(grace_s=1)
