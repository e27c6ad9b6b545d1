"""Review rev17 of merge 8343403: reproductions of insider takeovers the two-administrator
enrolment rule and migration 0007's trigger were meant to stop. Each test asserts the secure
behaviour: each FAILS at 8343403 (commit 8ffbc16 here) and passes with migration 0008 and
enrolment_rule's monotonic "another could approve"."""

from __future__ import annotations

import grpc
import pyotp
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.iam.v1 import iam_service_pb2 as pb
from tests.iam.helpers import PASSWORD, Stub, as_, create_staff, enrol, login, make_staff, staff_id
from tests.iam.test_enrolment_approval import new_installation  # noqa: F401 (fixture)
from tests.identity import Issuer
from tests.support import fails

R = pb.StaffRole


async def test_trigger_refuses_a_direct_update_of_a_two_admin_enrolled_credential(
    iam: Stub, iam_db: AsyncEngine
) -> None:
    # A doctor enrolled the normal way: two administrators (the helper's second one approves).
    doctor = await create_staff(iam, R.STAFF_ROLE_DOCTOR)
    await enrol(iam, doctor)
    # Direct SQL that replaces the password and leaves enrolment_id alone: the trigger only asks
    # that the row's enrolment_id names SOME approved enrolment of the person; it does.
    with pytest.raises(DBAPIError, match="replaced only through an enrolment approved"):
        async with iam_db.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE iam.staff_credentials SET password_hash = '$argon2id$forged' "
                    "WHERE staff_id = :id"
                ),
                {"id": staff_id(doctor.name)},
            )


async def test_trigger_refuses_delete_and_insert_of_a_credential(
    iam: Stub, iam_db: AsyncEngine
) -> None:
    registrar = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    await enrol(iam, registrar)
    # The trigger is BEFORE UPDATE OF password_hash, totp_secret_enc only.
    with pytest.raises(DBAPIError):
        async with iam_db.begin() as connection:
            old = (
                await connection.execute(
                    text("DELETE FROM iam.staff_credentials WHERE staff_id = :id RETURNING *"),
                    {"id": staff_id(registrar.name)},
                )
            ).one()
            await connection.execute(
                text(
                    "INSERT INTO iam.staff_credentials (staff_id, password_hash, "
                    "totp_secret_enc, enrol_time) VALUES (:id, '$argon2id$forged', :t, now())"
                ),
                {"id": staff_id(registrar.name), "t": old.totp_secret_enc},
            )


async def test_lone_administrator_exception_cannot_be_reopened_by_revoking_the_others_role(
    new_installation: tuple[Stub, str],  # noqa: F811
    issuer: Issuer,
) -> None:
    """X (the first administrator) and V (the second, enrolled) both have credentials; W is a
    third administrator, approved by V, not enrolled yet. X strips V's ADMINISTRATOR role (taking
    access away is immediate and needs nobody), after which X alone enrols W, holds W's account,
    and with it restores V and re-enrols V: one person, both halves."""
    iam, _ = new_installation
    v = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR))
    )
    first = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=v.name))
    await iam.CompleteStaffEnrolment(
        pb.CompleteStaffEnrolmentRequest(
            username=v.username, enrolment_code=first.enrolment_code, password=PASSWORD
        )
    )
    v_token = issuer.staff("ADMINISTRATOR", staff_id=staff_id(v.name))
    w = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR))
    )
    await iam.ApproveAccessChange(
        pb.ApproveAccessChangeRequest(name=w.pending_access_change), metadata=as_(v_token)
    )
    # As it should be: enrolling W takes two while V can approve.
    assert (
        await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=w.name))
    ).approval_required

    # X strips V of ADMINISTRATOR: immediate (the REGISTRAR part waits for approval).
    v_now = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=v.name))
    await iam.UpdateStaffMember(
        pb.UpdateStaffMemberRequest(
            staff_member=pb.StaffMember(
                name=v.name, roles=[R.STAFF_ROLE_REGISTRAR], etag=v_now.etag
            ),
            update_mask=FieldMask(paths=["roles"]),
        )
    )
    alone = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=w.name))
    takeover_w = not alone.approval_required
    if takeover_w:
        reply = await iam.CompleteStaffEnrolment(
            pb.CompleteStaffEnrolmentRequest(
                username=w.username, enrolment_code=alone.enrolment_code, password="x holds w now"
            )
        )
        # X signs in as administrator W.
        assert (
            await login(iam, w.username, "x holds w now", pyotp.TOTP(reply.totp_secret).now())
        ).access_token
        w_token = issuer.staff("ADMINISTRATOR", staff_id=staff_id(w.name))
        # X proposes V's role back, "W" approves; X re-enrols V, "W" approves: both halves.
        v_now = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=v.name))
        back = await iam.UpdateStaffMember(
            pb.UpdateStaffMemberRequest(
                staff_member=pb.StaffMember(
                    name=v.name, roles=[R.STAFF_ROLE_ADMINISTRATOR], etag=v_now.etag
                ),
                update_mask=FieldMask(paths=["roles"]),
            )
        )
        await iam.ApproveAccessChange(
            pb.ApproveAccessChangeRequest(name=back.pending_access_change), metadata=as_(w_token)
        )
        again = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=v.name))
        half = await iam.ApproveStaffEnrolment(
            pb.ApproveStaffEnrolmentRequest(name=again.name), metadata=as_(w_token)
        )
        taken = await iam.CompleteStaffEnrolment(
            pb.CompleteStaffEnrolmentRequest(
                username=v.username,
                enrolment_code=again.enrolment_code,
                approval_code=half.enrolment_code,
                password="x holds v now",
            )
        )
        signed_in = await login(
            iam, v.username, "x holds v now", pyotp.TOTP(taken.totp_secret).now()
        )
        assert signed_in.access_token
    assert not takeover_w, "X alone enrolled administrator W, then took over V"


@pytest.mark.parametrize(
    "role", [R.STAFF_ROLE_ADMINISTRATOR, R.STAFF_ROLE_DOCTOR], ids=["administrator", "doctor"]
)
async def test_a_one_administrator_credential_does_not_survive_an_administrator_grant(
    iam: Stub, issuer: Issuer, role: pb.StaffRole.ValueType
) -> None:
    """The rev17 residual, as an attack: X creates a registrar "N", enrols N alone (no TOTP role,
    no credential: one administrator suffices) and so holds N's password and TOTP secret; X then
    proposes ADMINISTRATOR (or a clinical role) for N and an honest Y approves what looks like a
    promotion. FAILED at 8343403 and with rev17's fixes: X signed in as a second administrator of
    their own. Now that credential signs in no more (REENROLMENT_REQUIRED); N re-enrols with two
    administrators and signs in with secrets X never saw."""
    x = await create_staff(iam, R.STAFF_ROLE_ADMINISTRATOR)
    x_token = issuer.staff("ADMINISTRATOR", staff_id=staff_id(x.name))
    n = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    code = await iam.CreateStaffEnrolment(
        pb.CreateStaffEnrolmentRequest(parent=n.name), metadata=as_(x_token)
    )
    assert not code.approval_required
    reply = await iam.CompleteStaffEnrolment(
        pb.CompleteStaffEnrolmentRequest(
            username=n.username, enrolment_code=code.enrolment_code, password="x holds n now"
        )
    )
    # As a registrar N signs in with it: one administrator sufficed for that.
    assert (await login(iam, n.username, "x holds n now")).access_token
    n_now = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=n.name))
    promoted = await iam.UpdateStaffMember(
        pb.UpdateStaffMemberRequest(
            staff_member=pb.StaffMember(
                name=n.name, roles=[R.STAFF_ROLE_REGISTRAR, role], etag=n_now.etag
            ),
            update_mask=FieldMask(paths=["roles"]),
        ),
        metadata=as_(x_token),
    )
    await iam.ApproveAccessChange(  # Y, honest
        pb.ApproveAccessChangeRequest(name=promoted.pending_access_change)
    )

    x_as_n = await fails(
        login(iam, n.username, "x holds n now", pyotp.TOTP(reply.totp_secret).now())
    )
    assert (x_as_n.code, x_as_n.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REENROLMENT_REQUIRED",
    )
    # A wrong password learns nothing of it.
    wrong = await fails(
        login(iam, n.username, "not the password", pyotp.TOTP(reply.totp_secret).now())
    )
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED

    # Two administrators re-enrol N (a credential exists: the rule asks for two).
    again = await enrol(iam, await iam.GetStaffMember(pb.GetStaffMemberRequest(name=n.name)))
    assert (await login(iam, n.username, PASSWORD, again.totp_code())).access_token
    stale = await fails(
        login(iam, n.username, "x holds n now", pyotp.TOTP(reply.totp_secret).now())
    )
    assert stale.code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_bootstrap_administrator_alone_still_enrols_the_first_doctors(
    new_installation: tuple[Stub, str],  # noqa: F811
    issuer: Issuer,
) -> None:
    """The lone-administrator exception's credentials sign in with their TOTP roles: a new
    installation's administrator enrols the first doctor and the second administrator alone,
    who then approves the doctor's role."""
    iam, _ = new_installation
    doctor = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_DOCTOR))
    )
    assert doctor.pending_access_change
    second = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR))
    )
    enrolled = {}
    for member in (doctor, second):
        code = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=member.name))
        assert not code.approval_required
        reply = await iam.CompleteStaffEnrolment(
            pb.CompleteStaffEnrolmentRequest(
                username=member.username, enrolment_code=code.enrolment_code, password=PASSWORD
            )
        )
        enrolled[member.name] = pyotp.TOTP(reply.totp_secret)
    second_token = issuer.staff("ADMINISTRATOR", staff_id=staff_id(second.name))
    await iam.ApproveAccessChange(
        pb.ApproveAccessChangeRequest(name=doctor.pending_access_change),
        metadata=as_(second_token),
    )

    for member in (doctor, second):
        token = await login(iam, member.username, PASSWORD, enrolled[member.name].now())
        assert token.access_token


async def test_trigger_refuses_raising_a_credentials_assurance(
    iam: Stub, iam_db: AsyncEngine
) -> None:
    """A one-administrator credential cannot be relabelled as two administrators' in SQL, nor a
    new one claim more than its enrolment gave (migration 0009)."""
    registrar = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    await enrol(iam, registrar)
    with pytest.raises(DBAPIError, match="replaced only through an enrolment approved"):
        async with iam_db.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE iam.staff_credentials SET assurance = 'TWO_ADMINISTRATORS' "
                    "WHERE staff_id = :id"
                ),
                {"id": staff_id(registrar.name)},
            )
    other = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    alone = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=other.name))
    assert not alone.approval_required
    with pytest.raises(DBAPIError, match="claims no more administrators"):
        async with iam_db.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO iam.staff_credentials (staff_id, password_hash, totp_secret_enc, "
                    "enrol_time, enrolment_id, assurance) SELECT staff_id, '$argon2id$forged', "
                    "code_hash, now(), id, 'TWO_ADMINISTRATORS' FROM iam.staff_enrolments "
                    "WHERE staff_id = :id"
                ),
                {"id": staff_id(other.name)},
            )


async def test_the_second_administrator_cannot_reopen_the_exception_by_stripping_the_first(
    new_installation: tuple[Stub, str],  # noqa: F811
    issuer: Issuer,
) -> None:
    """The same reopening with the roles swapped: S (the second administrator, enrolled by the
    bootstrap administrator F) strips F, whose role never came through an access change."""
    iam, f_token = new_installation
    s = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR))
    )
    first = await iam.CreateStaffEnrolment(pb.CreateStaffEnrolmentRequest(parent=s.name))
    await iam.CompleteStaffEnrolment(
        pb.CompleteStaffEnrolmentRequest(
            username=s.username, enrolment_code=first.enrolment_code, password=PASSWORD
        )
    )
    s_token = issuer.staff("ADMINISTRATOR", staff_id=staff_id(s.name))
    w = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR)),
        metadata=as_(s_token),
    )
    await iam.ApproveAccessChange(
        pb.ApproveAccessChangeRequest(name=w.pending_access_change), metadata=as_(f_token)
    )
    f_name = await iam.ListStaffMembers(pb.ListStaffMembersRequest(username="first.admin"))
    f = f_name.staff_members[0]
    await iam.UpdateStaffMember(
        pb.UpdateStaffMemberRequest(
            staff_member=pb.StaffMember(name=f.name, roles=[R.STAFF_ROLE_REGISTRAR], etag=f.etag),
            update_mask=FieldMask(paths=["roles"]),
        ),
        metadata=as_(s_token),
    )
    alone = await iam.CreateStaffEnrolment(
        pb.CreateStaffEnrolmentRequest(parent=w.name), metadata=as_(s_token)
    )
    assert alone.approval_required, "S alone enrols administrator W after stripping F"
