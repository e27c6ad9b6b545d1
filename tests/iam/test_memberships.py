"""Department memberships: add (periods, primaries, overlaps, replays), remove, list."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
import pytest

from his.iam.v1 import iam_service_pb2 as pb
from tests.iam.helpers import (
    Stub,
    add_membership,
    approve,
    as_,
    create_department,
    create_staff,
    invalid,
    request_id,
)
from tests.identity import Issuer
from tests.support import fails

NOW = dt.datetime.now(dt.UTC)


def _membership(
    department: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    primary: bool = False,
) -> pb.DepartmentMembership:
    membership = pb.DepartmentMembership(department=department, primary=primary)
    if start is not None:
        membership.period.start_time.FromDatetime(start)
    if end is not None:
        membership.period.end_time.FromDatetime(end)
    return membership


def _days(n: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=n)


async def _add(
    iam: Stub, parent: str, membership: pb.DepartmentMembership, key: str = ""
) -> pb.DepartmentMembership:
    added = await iam.AddMembership(
        pb.AddMembershipRequest(parent=parent, membership=membership, request_id=key)
    )
    if added.approval_state == pb.ACCESS_CHANGE_STATE_PENDING:
        # A second administrator approves it (two-person rule: tests/iam/test_two_person_rule.py).
        await approve(iam, added.access_change)
        added.approval_state = pb.ACCESS_CHANGE_STATE_APPROVED
    return added


async def test_added_membership_starts_now_and_is_open_ended(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    before = dt.datetime.now(dt.UTC)

    added = await add_membership(iam, member.name, department.name, primary=True)

    assert added.name.startswith(f"{member.name}/memberships/")
    assert added.department == department.name
    assert added.primary is True
    start = added.period.start_time.ToDatetime(tzinfo=dt.UTC)
    assert before - dt.timedelta(seconds=1) <= start <= dt.datetime.now(dt.UTC)
    assert not added.period.HasField("end_time")
    assert added.HasField("create_time")


async def test_a_given_period_is_kept(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    start, end = _days(-10).replace(microsecond=0), _days(20).replace(microsecond=0)

    added = await _add(iam, member.name, _membership(department.name, start=start, end=end))

    assert added.period.start_time.ToDatetime(tzinfo=dt.UTC) == start
    assert added.period.end_time.ToDatetime(tzinfo=dt.UTC) == end


async def test_overlapping_membership_of_the_same_department_already_exists(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    await _add(iam, member.name, _membership(department.name, start=_days(-5), end=_days(5)))

    failure = await fails(_add(iam, member.name, _membership(department.name, start=_days(4))))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "MEMBERSHIP_EXISTS"


async def test_consecutive_memberships_of_one_department_are_fine(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    middle = _days(3)
    await _add(iam, member.name, _membership(department.name, start=_days(-5), end=middle))

    later = await _add(iam, member.name, _membership(department.name, start=middle))

    assert later.department == department.name


async def test_overlapping_primary_memberships_fail_precondition(iam: Stub) -> None:
    member = await create_staff(iam)
    first, second = await create_department(iam), await create_department(iam)
    await _add(iam, member.name, _membership(first.name, start=_days(-30), primary=True))

    failure = await fails(
        _add(iam, member.name, _membership(second.name, start=_days(10), primary=True))
    )

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "PRIMARY_MEMBERSHIP_OVERLAPS"


async def test_one_primary_and_other_memberships_live_side_by_side(iam: Stub) -> None:
    member = await create_staff(iam)
    departments = [await create_department(iam) for _ in range(3)]

    await add_membership(iam, member.name, departments[0].name, primary=True)
    for department in departments[1:]:
        await add_membership(iam, member.name, department.name)

    current = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent=member.name, current_only=True)
    )
    assert len(current.memberships) == 3
    assert [m.primary for m in current.memberships].count(True) == 1


async def test_concurrent_primary_memberships_let_exactly_one_win(iam: Stub) -> None:
    member = await create_staff(iam)
    departments = [await create_department(iam) for _ in range(8)]

    results = await asyncio.gather(
        *(add_membership(iam, member.name, d.name, primary=True) for d in departments),
        return_exceptions=True,
    )

    won = [r for r in results if isinstance(r, pb.DepartmentMembership)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert {e.code() for e in lost} == {grpc.StatusCode.FAILED_PRECONDITION}


async def test_concurrent_memberships_of_one_department_let_exactly_one_win(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)

    results = await asyncio.gather(
        *(add_membership(iam, member.name, department.name) for _ in range(8)),
        return_exceptions=True,
    )

    assert len([r for r in results if isinstance(r, pb.DepartmentMembership)]) == 1
    assert {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)} == {
        grpc.StatusCode.ALREADY_EXISTS
    }


async def test_a_replayed_add_returns_the_first_membership(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    key = request_id()
    membership = _membership(department.name, primary=True)

    replies = await asyncio.gather(*(_add(iam, member.name, membership, key) for _ in range(10)))

    assert len({reply.name for reply in replies}) == 1
    listed = await iam.ListMemberships(pb.ListMembershipsRequest(parent=member.name))
    assert len(listed.memberships) == 1


async def test_a_request_id_reused_for_another_membership_is_refused(iam: Stub) -> None:
    member, other = await create_staff(iam), await create_staff(iam)
    department = await create_department(iam)
    key = request_id()
    await _add(iam, member.name, _membership(department.name), key)

    fields = await invalid(_add(iam, other.name, _membership(department.name), key))

    assert fields == ["request_id"]


async def test_adding_to_a_missing_staff_member_is_not_found(iam: Stub) -> None:
    department = await create_department(iam)

    failure = await fails(add_membership(iam, f"staff/{uuid.uuid4()}", department.name))

    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_adding_to_an_inactive_staff_member_fails_precondition(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=member.name))

    failure = await fails(add_membership(iam, member.name, department.name))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "STAFF_INACTIVE"


async def test_adding_a_missing_department_fails_precondition(iam: Stub) -> None:
    member = await create_staff(iam)

    failure = await fails(add_membership(iam, member.name, f"departments/{uuid.uuid4()}"))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "DEPARTMENT_NOT_FOUND"


@pytest.mark.parametrize(
    ("parent", "membership", "field"),
    [
        ("staff/x", _membership(f"departments/{uuid.uuid4()}"), "parent"),
        ("staff/-", _membership(f"departments/{uuid.uuid4()}"), "parent"),
        (None, _membership(""), "membership.department"),
        (None, _membership("departments/CARD"), "membership.department"),
        (
            None,
            _membership(f"departments/{uuid.uuid4()}", start=NOW, end=NOW),
            "membership.period.end_time",
        ),
        (
            None,
            _membership(f"departments/{uuid.uuid4()}", start=NOW, end=NOW - dt.timedelta(days=1)),
            "membership.period.end_time",
        ),
        (
            None,
            _membership(
                f"departments/{uuid.uuid4()}", start=dt.datetime(1800, 1, 1, tzinfo=dt.UTC)
            ),
            "membership.period.start_time",
        ),
    ],
)
async def test_bad_membership_names_the_field(
    iam: Stub, parent: str | None, membership: pb.DepartmentMembership, field: str
) -> None:
    member = await create_staff(iam)

    assert await invalid(_add(iam, parent or member.name, membership)) == [field]


async def test_add_without_a_membership_names_it(iam: Stub) -> None:
    member = await create_staff(iam)

    fields = await invalid(iam.AddMembership(pb.AddMembershipRequest(parent=member.name)))

    assert fields == ["membership", "membership.department"]


async def test_only_administrators_add_memberships(iam: Stub, issuer: Issuer) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    own_token = issuer.staff("DOCTOR", staff_id=member.name.removeprefix("staff/"))

    failure = await fails(
        iam.AddMembership(
            pb.AddMembershipRequest(parent=member.name, membership=_membership(department.name)),
            metadata=as_(own_token),
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


# --- remove ------------------------------------------------------------------------------------


async def test_removal_ends_the_membership_now_and_keeps_it(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    added = await _add(iam, member.name, _membership(department.name, start=_days(-3)))

    removed = await iam.RemoveMembership(pb.RemoveMembershipRequest(name=added.name))

    end = removed.period.end_time.ToDatetime(tzinfo=dt.UTC)
    assert abs(end - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=30)
    assert removed.period.start_time == added.period.start_time
    listed = await iam.ListMemberships(pb.ListMembershipsRequest(parent=member.name))
    assert list(listed.memberships) == [removed]
    again = await iam.RemoveMembership(pb.RemoveMembershipRequest(name=added.name))
    assert again == removed


async def test_removing_a_future_membership_ends_it_at_its_start(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    added = await _add(iam, member.name, _membership(department.name, start=_days(7)))

    removed = await iam.RemoveMembership(pb.RemoveMembershipRequest(name=added.name))

    assert removed.period.end_time == added.period.start_time
    readded = await _add(iam, member.name, _membership(department.name, start=_days(7)))
    assert readded.name != added.name


async def test_removal_of_a_missing_membership_is_not_found(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    added = await add_membership(iam, member.name, department.name)
    other = await create_staff(iam)

    for name in (
        f"{member.name}/memberships/{uuid.uuid4()}",
        added.name.replace(member.name, other.name),
    ):
        failure = await fails(iam.RemoveMembership(pb.RemoveMembershipRequest(name=name)))
        assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["", "staff/x/memberships/y", f"memberships/{uuid.uuid4()}"])
async def test_removal_with_a_bad_name_names_the_field(iam: Stub, name: str) -> None:
    assert await invalid(iam.RemoveMembership(pb.RemoveMembershipRequest(name=name))) == ["name"]


async def test_only_administrators_remove_memberships(iam: Stub, issuer: Issuer) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    added = await add_membership(iam, member.name, department.name)

    failure = await fails(
        iam.RemoveMembership(
            pb.RemoveMembershipRequest(name=added.name), metadata=as_(issuer.staff("REGISTRAR"))
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


# --- list --------------------------------------------------------------------------------------


async def test_list_is_newest_start_first_and_pages(iam: Stub) -> None:
    member = await create_staff(iam)
    departments = [await create_department(iam) for _ in range(5)]
    for offset, department in enumerate(departments):
        await _add(iam, member.name, _membership(department.name, start=_days(-offset)))

    seen: list[pb.DepartmentMembership] = []
    token = ""
    while True:
        page = await iam.ListMemberships(
            pb.ListMembershipsRequest(parent=member.name, page_size=2, page_token=token)
        )
        seen.extend(page.memberships)
        token = page.next_page_token
        if not token:
            break

    assert [m.department for m in seen] == [d.name for d in departments]


async def test_list_of_all_staff_filters_by_department(iam: Stub) -> None:
    department = await create_department(iam)
    members = [await create_staff(iam) for _ in range(3)]
    for member in members:
        await add_membership(iam, member.name, department.name)
    removed = await add_membership(iam, (await create_staff(iam)).name, department.name)
    await iam.RemoveMembership(pb.RemoveMembershipRequest(name=removed.name))

    everyone = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent="staff/-", department=department.name)
    )
    current = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent="staff/-", department=department.name, current_only=True)
    )

    assert len(everyone.memberships) == 4
    assert {m.name.split("/memberships/")[0] for m in current.memberships} == {
        m.name for m in members
    }


async def test_current_only_leaves_out_future_and_ended_memberships(iam: Stub) -> None:
    member = await create_staff(iam)
    past, now, future = [await create_department(iam) for _ in range(3)]
    await _add(iam, member.name, _membership(past.name, start=_days(-9), end=_days(-1)))
    present = await _add(iam, member.name, _membership(now.name, start=_days(-1)))
    await _add(iam, member.name, _membership(future.name, start=_days(1)))

    current = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent=member.name, current_only=True)
    )

    assert list(current.memberships) == [present]


async def test_list_of_a_missing_staff_member_is_not_found(iam: Stub) -> None:
    failure = await fails(
        iam.ListMemberships(pb.ListMembershipsRequest(parent=f"staff/{uuid.uuid4()}"))
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListMembershipsRequest(parent=""), "parent"),
        (pb.ListMembershipsRequest(parent="staff/*"), "parent"),
        (pb.ListMembershipsRequest(parent="staff/-", department="departments/x"), "department"),
        (pb.ListMembershipsRequest(parent="staff/-", page_size=-1), "page_size"),
        (pb.ListMembershipsRequest(parent="staff/-", page_token="x"), "page_token"),
    ],
)
async def test_bad_list_request_names_the_field(
    iam: Stub, request_: pb.ListMembershipsRequest, field: str
) -> None:
    assert await invalid(iam.ListMemberships(request_)) == [field]


async def test_page_token_of_another_parent_is_refused(iam: Stub) -> None:
    member = await create_staff(iam)
    for _ in range(2):
        await add_membership(iam, member.name, (await create_department(iam)).name)
    page = await iam.ListMemberships(pb.ListMembershipsRequest(parent=member.name, page_size=1))

    fields = await invalid(
        iam.ListMemberships(
            pb.ListMembershipsRequest(
                parent="staff/-", page_size=1, page_token=page.next_page_token
            )
        )
    )

    assert fields == ["page_token"]


async def test_services_list_memberships(iam: Stub, issuer: Issuer) -> None:
    member = await create_staff(iam)
    added = await add_membership(iam, member.name, (await create_department(iam)).name)

    listed = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent=member.name), metadata=as_(issuer.service("scheduling"))
    )

    assert list(listed.memberships) == [added]
