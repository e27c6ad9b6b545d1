"""Separation of duties in iam: nobody changes their own roles, memberships or grants; roles and
memberships given by one administrator take effect only when a second one approves; every write
is in the audit trail with its values before and after. Against the running iam and audit
services, with tokens of the session's test issuer naming each administrator."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
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
    Stub,
    as_,
    bootstrap_login,
    create_department,
    create_staff,
    enrol,
    invalid,
    login_as,
    make_staff,
    verify,
)
from tests.identity import Issuer, channel_as
from tests.support import delivered, fails

R = pb.StaffRole
S = pb.AccessChangeState
PATIENT = f"patients/{uuid.uuid4()}"
REASON = "Unconscious patient in resus, no consent obtainable, allergies needed"


@dataclasses.dataclass(frozen=True)
class Admin:
    """An administrator iam knows, with a token of the session's test issuer naming them."""

    name: str
    token: str

    @property
    def id(self) -> str:
        return self.name.removeprefix("staff/")


async def _admin(iam: Stub, issuer: Issuer) -> Admin:
    member = await create_staff(iam, R.STAFF_ROLE_ADMINISTRATOR)
    assert list(member.roles) == [R.STAFF_ROLE_ADMINISTRATOR]
    return Admin(member.name, issuer.staff("ADMINISTRATOR", staff_id=member.name[6:]))


@pytest.fixture
async def proposer(iam: Stub, issuer: Issuer) -> Admin:
    """The administrator who gives access."""
    return await _admin(iam, issuer)


@pytest.fixture
async def approver(iam: Stub, issuer: Issuer) -> Admin:
    """A second administrator."""
    return await _admin(iam, issuer)


@pytest.fixture(scope="session")
async def auditor(
    audit_service: RunningService, issuer: Issuer
) -> AsyncIterator[audit_grpc.AuditServiceAsyncStub]:
    """The session's audit service as an auditor reads it."""
    async with channel_as(audit_service.address, issuer.staff("AUDITOR")) as channel:
        yield audit_grpc.AuditServiceStub(channel)


async def _events_by(
    auditor: audit_grpc.AuditServiceAsyncStub, admin: Admin
) -> list[audit_pb.AuditEvent]:
    """Everything the administrator did, as the audit trail has it (oldest first)."""
    await delivered()
    reply = await auditor.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(agent_staff=admin.name, page_size=500)
    )
    return sorted(reply.audit_events, key=lambda event: event.sequence_number)


def _value(text: str) -> object:
    return json.loads(text) if text else None


def _changes(event: audit_pb.AuditEvent) -> dict[str, tuple[object, object]]:
    """An event's changed fields as {path: (before, after)}, JSON decoded (None: absent)."""
    return {c.field_path: (_value(c.before), _value(c.after)) for c in event.entity.changes}


def _about(events: list[audit_pb.AuditEvent], name: str) -> list[audit_pb.AuditEvent]:
    return [event for event in events if event.entity.resource_name == name]


async def _propose_doctor(iam: Stub, proposer: Admin) -> pb.StaffMember:
    return await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_DOCTOR)),
        metadata=as_(proposer.token),
    )


async def _approve(iam: Stub, change: str, admin: Admin) -> pb.AccessChange:
    return await iam.ApproveAccessChange(
        pb.ApproveAccessChangeRequest(name=change), metadata=as_(admin.token)
    )


def _update_roles(
    member: pb.StaffMember, *roles: pb.StaffRole.ValueType
) -> pb.UpdateStaffMemberRequest:
    return pb.UpdateStaffMemberRequest(
        staff_member=pb.StaffMember(name=member.name, roles=list(roles)),
        update_mask=FieldMask(paths=["roles"]),
    )


# --- nobody changes their own access ------------------------------------------------------------


async def test_an_administrator_cannot_give_themselves_a_role(iam: Stub, proposer: Admin) -> None:
    member = pb.StaffMember(name=proposer.name)

    failure = await fails(
        iam.UpdateStaffMember(
            _update_roles(member, R.STAFF_ROLE_ADMINISTRATOR, R.STAFF_ROLE_DOCTOR),
            metadata=as_(proposer.token),
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "SELF_CHANGE_REFUSED"
    unchanged = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=proposer.name))
    assert list(unchanged.roles) == [R.STAFF_ROLE_ADMINISTRATOR]
    listed = await iam.ListAccessChanges(
        pb.ListAccessChangesRequest(staff=proposer.name, state=S.ACCESS_CHANGE_STATE_PENDING)
    )
    assert list(listed.access_changes) == []


async def test_an_administrator_cannot_add_or_remove_their_own_membership(
    iam: Stub, proposer: Admin
) -> None:
    department = await create_department(iam)
    added = await iam.AddMembership(
        pb.AddMembershipRequest(
            parent=proposer.name, membership=pb.DepartmentMembership(department=department.name)
        )
    )  # by the tests' administrator: someone else

    for call in (
        iam.AddMembership(
            pb.AddMembershipRequest(
                parent=proposer.name,
                membership=pb.DepartmentMembership(department=department.name),
            ),
            metadata=as_(proposer.token),
        ),
        iam.RemoveMembership(
            pb.RemoveMembershipRequest(name=added.name), metadata=as_(proposer.token)
        ),
        iam.ApproveAccessChange(
            pb.ApproveAccessChangeRequest(name=added.access_change), metadata=as_(proposer.token)
        ),
        iam.DeactivateStaffMember(
            pb.DeactivateStaffMemberRequest(name=proposer.name), metadata=as_(proposer.token)
        ),
    ):
        failure = await fails(call)
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED
        assert failure.reason == "SELF_CHANGE_REFUSED"
    change = await iam.GetAccessChange(pb.GetAccessChangeRequest(name=added.access_change))
    assert change.state == S.ACCESS_CHANGE_STATE_PENDING


async def test_an_administrator_cannot_grant_themselves_emergency_access(
    iam: Stub, proposer: Admin
) -> None:
    failure = await fails(
        iam.CreateEmergencyAccessGrant(
            pb.CreateEmergencyAccessGrantRequest(
                emergency_access_grant=pb.EmergencyAccessGrant(patient=PATIENT, reason=REASON)
            ),
            metadata=as_(proposer.token),
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "ROLE_NOT_PERMITTED"


# --- the two-person rule -----------------------------------------------------------------------


async def test_a_pending_role_and_membership_have_no_effect_until_a_second_administrator_approves(
    iam: Stub, proposer: Admin, approver: Admin
) -> None:
    jwks = await iam.GetJwks(pb.GetJwksRequest())
    department = await create_department(iam)
    proposed = await _propose_doctor(iam, proposer)
    membership = await iam.AddMembership(
        pb.AddMembershipRequest(
            parent=proposed.name, membership=pb.DepartmentMembership(department=department.name)
        ),
        metadata=as_(proposer.token),
    )

    enrolled = await enrol(iam, proposed)
    before = verify((await login_as(iam, enrolled)).access_token, jwks)
    current = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent=proposed.name, current_only=True)
    )

    assert list(proposed.roles) == []
    assert membership.approval_state == S.ACCESS_CHANGE_STATE_PENDING
    assert (before["roles"], before["departments"]) == ([], [])
    assert list(current.memberships) == []

    await _approve(iam, proposed.pending_access_change, approver)
    await _approve(iam, membership.access_change, approver)
    after = verify((await login_as(iam, enrolled)).access_token, jwks)

    assert (after["roles"], after["departments"]) == (["DOCTOR"], [department.name])
    # A token is what it was when issued: the one from before approval still carries nothing.
    assert (before["roles"], before["departments"]) == ([], [])
    approved = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent=proposed.name, current_only=True)
    )
    assert [m.approval_state for m in approved.memberships] == [S.ACCESS_CHANGE_STATE_APPROVED]


async def test_added_roles_wait_and_removed_roles_go_at_once(
    iam: Stub, proposer: Admin, approver: Admin
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_NURSE, R.STAFF_ROLE_REGISTRAR)

    updated = await iam.UpdateStaffMember(
        _update_roles(member, R.STAFF_ROLE_NURSE, R.STAFF_ROLE_DOCTOR), metadata=as_(proposer.token)
    )
    retried = await iam.UpdateStaffMember(
        _update_roles(member, R.STAFF_ROLE_NURSE, R.STAFF_ROLE_DOCTOR), metadata=as_(proposer.token)
    )

    assert list(updated.roles) == [R.STAFF_ROLE_NURSE]
    assert retried.pending_access_change == updated.pending_access_change
    change = await _approve(iam, updated.pending_access_change, approver)
    assert list(change.roles) == [R.STAFF_ROLE_DOCTOR]
    assert (change.proposer, change.decider) == (proposer.name, approver.name)
    read = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=member.name))
    assert list(read.roles) == [R.STAFF_ROLE_NURSE, R.STAFF_ROLE_DOCTOR]
    again = await _approve(iam, updated.pending_access_change, approver)
    assert again == change


async def test_the_approving_administrator_cannot_be_the_proposer(
    iam: Stub, iam_db: AsyncEngine, proposer: Admin
) -> None:
    proposed = await _propose_doctor(iam, proposer)

    failure = await fails(_approve(iam, proposed.pending_access_change, proposer))

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "APPROVER_IS_PROPOSER"
    change = await iam.GetAccessChange(
        pb.GetAccessChangeRequest(name=proposed.pending_access_change)
    )
    assert change.state == S.ACCESS_CHANGE_STATE_PENDING and not change.decider
    read = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=proposed.name))
    assert list(read.roles) == []
    # Nor behind the service's back: the database refuses an approval by the proposer.
    with pytest.raises(IntegrityError):
        async with iam_db.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE iam.access_changes SET state = 'approved', decider_id = proposer_id,"
                    " decide_time = now() WHERE id = :id"
                ),
                {"id": uuid.UUID(change.name.removeprefix("accessChanges/"))},
            )


async def test_only_administrators_approve(iam: Stub, issuer: Issuer, proposer: Admin) -> None:
    proposed = await _propose_doctor(iam, proposer)

    failure = await fails(
        iam.ApproveAccessChange(
            pb.ApproveAccessChangeRequest(name=proposed.pending_access_change),
            metadata=as_(issuer.staff("DOCTOR")),
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_rejected_change_never_takes_effect_and_an_approved_one_cannot_be_rejected(
    iam: Stub, proposer: Admin, approver: Admin
) -> None:
    department = await create_department(iam)
    proposed = await _propose_doctor(iam, proposer)
    membership = await iam.AddMembership(
        pb.AddMembershipRequest(
            parent=proposed.name, membership=pb.DepartmentMembership(department=department.name)
        ),
        metadata=as_(proposer.token),
    )

    # The proposer may withdraw their own proposal.
    withdrawn = await iam.RejectAccessChange(
        pb.RejectAccessChangeRequest(name=membership.access_change), metadata=as_(proposer.token)
    )
    rejected = await iam.RejectAccessChange(
        pb.RejectAccessChangeRequest(name=proposed.pending_access_change),
        metadata=as_(approver.token),
    )

    assert (withdrawn.state, withdrawn.decider) == (S.ACCESS_CHANGE_STATE_REJECTED, proposer.name)
    assert rejected.state == S.ACCESS_CHANGE_STATE_REJECTED
    for name in (withdrawn.name, rejected.name):
        failure = await fails(_approve(iam, name, approver))
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == "ACCESS_CHANGE_REJECTED"
    listed = await iam.ListMemberships(pb.ListMembershipsRequest(parent=proposed.name))
    [ended] = listed.memberships
    assert ended.approval_state == S.ACCESS_CHANGE_STATE_REJECTED
    assert ended.period.end_time == ended.period.start_time
    read = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=proposed.name))
    assert list(read.roles) == []

    again = await iam.UpdateStaffMember(
        _update_roles(read, R.STAFF_ROLE_DOCTOR), metadata=as_(proposer.token)
    )
    await _approve(iam, again.pending_access_change, approver)
    failure = await fails(
        iam.RejectAccessChange(
            pb.RejectAccessChangeRequest(name=again.pending_access_change),
            metadata=as_(approver.token),
        )
    )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "ACCESS_CHANGE_APPROVED"


async def test_removing_a_pending_membership_withdraws_its_change(
    iam: Stub, proposer: Admin
) -> None:
    department = await create_department(iam)
    member = await create_staff(iam)
    added = await iam.AddMembership(
        pb.AddMembershipRequest(
            parent=member.name, membership=pb.DepartmentMembership(department=department.name)
        ),
        metadata=as_(proposer.token),
    )

    removed = await iam.RemoveMembership(pb.RemoveMembershipRequest(name=added.name))

    assert removed.approval_state == S.ACCESS_CHANGE_STATE_REJECTED
    change = await iam.GetAccessChange(pb.GetAccessChangeRequest(name=added.access_change))
    assert change.state == S.ACCESS_CHANGE_STATE_REJECTED


async def test_pending_changes_are_listed_newest_first_and_filtered(
    iam: Stub, proposer: Admin
) -> None:
    first = await _propose_doctor(iam, proposer)
    second = await _propose_doctor(iam, proposer)

    mine = await iam.ListAccessChanges(
        pb.ListAccessChangesRequest(staff=second.name, state=S.ACCESS_CHANGE_STATE_PENDING)
    )
    page = await iam.ListAccessChanges(
        pb.ListAccessChangesRequest(state=S.ACCESS_CHANGE_STATE_PENDING, page_size=1)
    )
    rest = await iam.ListAccessChanges(
        pb.ListAccessChangesRequest(
            state=S.ACCESS_CHANGE_STATE_PENDING, page_size=500, page_token=page.next_page_token
        )
    )

    assert [c.name for c in mine.access_changes] == [second.pending_access_change]
    names = [c.name for c in [*page.access_changes, *rest.access_changes]]
    assert names.index(second.pending_access_change) < names.index(first.pending_access_change)
    assert all(
        c.state == S.ACCESS_CHANGE_STATE_PENDING
        for c in [*page.access_changes, *rest.access_changes]
    )


async def test_bad_access_change_requests_name_the_field(iam: Stub) -> None:
    assert await invalid(iam.GetAccessChange(pb.GetAccessChangeRequest(name="changes/1"))) == [
        "name"
    ]
    assert await invalid(iam.ApproveAccessChange(pb.ApproveAccessChangeRequest(name=""))) == [
        "name"
    ]
    assert await invalid(
        iam.RejectAccessChange(pb.RejectAccessChangeRequest(name="accessChanges/x"))
    ) == ["name"]
    assert await invalid(
        iam.ListAccessChanges(pb.ListAccessChangesRequest(staff="people/1", page_size=-1))
    ) == ["page_size", "staff"]
    assert await invalid(
        iam.ListAccessChanges(pb.ListAccessChangesRequest(page_token="not-a-token"))
    ) == ["page_token"]
    missing = f"accessChanges/{uuid.uuid4()}"
    for call in (
        iam.GetAccessChange(pb.GetAccessChangeRequest(name=missing)),
        iam.ApproveAccessChange(pb.ApproveAccessChangeRequest(name=missing)),
        iam.RejectAccessChange(pb.RejectAccessChangeRequest(name=missing)),
    ):
        assert (await fails(call)).code == grpc.StatusCode.NOT_FOUND


# --- the audit trail ---------------------------------------------------------------------------


async def test_an_approved_grant_is_audited_with_both_administrators(
    iam: Stub, auditor: audit_grpc.AuditServiceAsyncStub, proposer: Admin, approver: Admin
) -> None:
    proposed = await _propose_doctor(iam, proposer)
    change = await _approve(iam, proposed.pending_access_change, approver)

    by_proposer = _about(await _events_by(auditor, proposer), change.name)
    by_approver = await _events_by(auditor, approver)

    [proposal] = by_proposer
    assert proposal.action == audit_pb.AUDIT_EVENT_ACTION_CREATE
    assert proposal.entity.resource_type == "his.iam.v1.AccessChange"
    assert proposal.operation.endswith("/CreateStaffMember")
    assert _changes(proposal)["state"] == (None, "pending")
    assert _changes(proposal)["roles"] == (None, ["DOCTOR"])
    assert _changes(proposal)["proposer"] == (None, proposer.name)
    [approval] = _about(by_approver, change.name)
    assert approval.action == audit_pb.AUDIT_EVENT_ACTION_UPDATE
    assert approval.operation.endswith("/ApproveAccessChange")
    assert approval.agent.staff == approver.name
    assert _changes(approval) == {
        "decider": (None, approver.name),
        "state": ("pending", "approved"),
    }
    [granted] = _about(by_approver, proposed.name)
    assert granted.entity.resource_type == "his.iam.v1.StaffMember"
    assert _changes(granted) == {"roles": ([], ["DOCTOR"])}


async def test_every_iam_write_is_in_the_audit_trail_with_before_and_after(
    iam: Stub, auditor: audit_grpc.AuditServiceAsyncStub, proposer: Admin, approver: Admin
) -> None:
    as_proposer = as_(proposer.token)
    department = await iam.CreateDepartment(
        pb.CreateDepartmentRequest(department=_department()), metadata=as_proposer
    )
    member = await _propose_doctor(iam, proposer)
    renamed = await iam.UpdateStaffMember(
        pb.UpdateStaffMemberRequest(
            staff_member=pb.StaffMember(name=member.name, display_name="Dr. Renamed"),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        metadata=as_proposer,
    )
    membership = await iam.AddMembership(
        pb.AddMembershipRequest(
            parent=member.name, membership=pb.DepartmentMembership(department=department.name)
        ),
        metadata=as_proposer,
    )
    await _approve(iam, membership.access_change, approver)
    await iam.RemoveMembership(
        pb.RemoveMembershipRequest(name=membership.name), metadata=as_proposer
    )
    await iam.DeactivateStaffMember(
        pb.DeactivateStaffMemberRequest(name=member.name), metadata=as_proposer
    )

    mine = await _events_by(auditor, proposer)
    theirs = await _events_by(auditor, approver)

    [created] = _about(mine, department.name)
    assert _changes(created)["code"] == (None, department.code)
    staff_events = _about(mine, member.name)
    assert [e.operation.rsplit("/", 1)[1] for e in staff_events] == [
        "CreateStaffMember",
        "UpdateStaffMember",
        "DeactivateStaffMember",
    ]
    assert _changes(staff_events[0])["roles"] == (None, [])
    assert _changes(staff_events[1]) == {"display_name": (member.display_name, "Dr. Renamed")}
    assert _changes(staff_events[2]) == {"active": (True, False)}
    assert renamed.display_name == "Dr. Renamed"
    membership_events = _about(mine, membership.name)
    assert [e.operation.rsplit("/", 1)[1] for e in membership_events] == [
        "AddMembership",
        "RemoveMembership",
    ]
    assert _changes(membership_events[0])["approval_state"] == (None, "pending")
    assert _changes(membership_events[1])["period.end"][0] is None
    assert _changes(membership_events[1])["period.end"][1]
    [approved] = _about(theirs, membership.name)
    assert _changes(approved) == {"approval_state": ("pending", "approved")}
    assert all(e.outcome == audit_pb.AUDIT_EVENT_OUTCOME_SUCCESS for e in [*mine, *theirs])
    assert not any(e.patient for e in [*mine, *theirs])


def _department() -> pb.Department:
    return pb.Department(
        code=f"T-{uuid.uuid4().hex[:16].upper()}",
        display_name="Two-person Clinic",
        kind=pb.DEPARTMENT_KIND_OUTPATIENT,
    )


# --- a new installation ------------------------------------------------------------------------


@pytest.fixture
async def new_installation(
    postgres: EmbeddedPostgres, make_iam_config: Callable[..., IamConfig], admin_token: str
) -> AsyncIterator[Stub]:
    """An iam on a fresh database whose only staff member is its bootstrap administrator."""
    url = await fresh_database(postgres, f"his_iam_setup_{uuid.uuid4().hex[:8]}")
    running: RunningService = await start(
        iam_spec(make_iam_config(bootstrap_admin="first.admin")), service_config("iam"), url
    )
    try:
        async with channel_as(running.address, admin_token) as channel:
            stub: Stub = pb_grpc.IamServiceStub(channel)
            # The first login makes the bootstrap administrator.
            await bootstrap_login(stub, "first.admin")
            yield stub
    finally:
        await running.stop(grace_s=1)


async def test_a_new_installation_gets_its_second_administrator_at_once_and_no_more(
    new_installation: Stub,
) -> None:
    iam = new_installation

    second = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR))
    )
    third = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_ADMINISTRATOR))
    )
    doctor = await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(R.STAFF_ROLE_DOCTOR))
    )

    # The setup window: the one administrator could never get a second one approved.
    assert (list(second.roles), second.pending_access_change) == ([R.STAFF_ROLE_ADMINISTRATOR], "")
    [setup] = (
        await iam.ListAccessChanges(pb.ListAccessChangesRequest(staff=second.name))
    ).access_changes
    assert setup.state == S.ACCESS_CHANGE_STATE_APPROVED and not setup.decider
    # From then on, every grant waits for a second administrator.
    assert list(third.roles) == [] and third.pending_access_change
    assert list(doctor.roles) == [] and doctor.pending_access_change


async def test_roles_are_not_proposed_for_an_inactive_member_or_with_a_stale_etag(
    iam: Stub, proposer: Admin
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_NURSE)
    stale = pb.StaffMember(name=member.name, roles=[R.STAFF_ROLE_NURSE, R.STAFF_ROLE_DOCTOR])
    stale.etag = str(int(member.etag) - 1)

    outdated = await fails(
        iam.UpdateStaffMember(
            pb.UpdateStaffMemberRequest(staff_member=stale, update_mask=FieldMask(paths=["roles"])),
            metadata=as_(proposer.token),
        )
    )
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=member.name))
    inactive = await fails(
        iam.UpdateStaffMember(
            _update_roles(member, R.STAFF_ROLE_NURSE, R.STAFF_ROLE_DOCTOR),
            metadata=as_(proposer.token),
        )
    )

    assert (outdated.code, outdated.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert (inactive.code, inactive.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STAFF_INACTIVE",
    )
    listed = await iam.ListAccessChanges(
        pb.ListAccessChangesRequest(staff=member.name, state=S.ACCESS_CHANGE_STATE_PENDING)
    )
    assert list(listed.access_changes) == []


async def test_an_administrator_deactivated_since_their_token_was_issued_approves_nothing(
    iam: Stub, proposer: Admin, approver: Admin
) -> None:
    # The approver's token still says ADMINISTRATOR (it lives up to HIS_IAM_TOKEN_TTL_S); iam
    # asks its own table at the moment of approval.
    proposed = await _propose_doctor(iam, proposer)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=approver.name))

    refused = await fails(_approve(iam, proposed.pending_access_change, approver))

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "APPROVER_NOT_ADMINISTRATOR",
    )
    change = await iam.GetAccessChange(
        pb.GetAccessChangeRequest(name=proposed.pending_access_change)
    )
    assert change.state == S.ACCESS_CHANGE_STATE_PENDING


async def test_an_enrolment_code_is_audited_with_its_staff_member_and_expiry_never_the_code(
    iam: Stub, proposer: Admin, auditor: audit_grpc.AuditServiceAsyncStub
) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_REGISTRAR)
    enrolment = await iam.CreateStaffEnrolment(
        pb.CreateStaffEnrolmentRequest(parent=member.name), metadata=as_(proposer.token)
    )

    [event] = _about(await _events_by(auditor, proposer), enrolment.name)

    changes = _changes(event)
    assert changes["staff"] == (None, member.name)
    assert changes["creator"] == (None, proposer.name)
    assert changes["approval_required"] == (None, False)
    assert changes["expire_time"] == (None, enrolment.expire_time.ToDatetime(dt.UTC).isoformat())
    assert enrolment.enrolment_code not in str(event)
