"""Staff members: create (replays, unique usernames, licences), read, list, update, deactivate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.common.v1 import types_pb2
from his.iam.config import IamConfig
from his.iam.v1 import iam_service_pb2 as pb
from his.iam.v1 import iam_service_pb2_grpc as pb_grpc
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, start
from tests.conftest import service_config
from tests.iam.conftest import fresh_database, iam_spec
from tests.iam.helpers import (
    LICENCE_SYSTEM,
    Stub,
    add_membership,
    approve,
    as_,
    bootstrap_login,
    create_department,
    create_staff,
    invalid,
    make_staff,
    request_id,
    unique_username,
    word,
)
from tests.identity import Issuer, channel_as
from tests.support import fails

R = pb.StaffRole


def _update(member: pb.StaffMember, *paths: str) -> pb.UpdateStaffMemberRequest:
    return pb.UpdateStaffMemberRequest(staff_member=member, update_mask=FieldMask(paths=paths))


# --- create ------------------------------------------------------------------------------------


async def test_created_staff_member_is_active_and_reads_back_unchanged(iam: Stub) -> None:
    sent = make_staff(R.STAFF_ROLE_DOCTOR, R.STAFF_ROLE_AUDITOR, licence=uuid.uuid4().hex)
    sent.name = f"staff/{uuid.uuid4()}"
    sent.active = False
    sent.etag = "7"

    created = await iam.CreateStaffMember(pb.CreateStaffMemberRequest(staff_member=sent))

    assert created.name != sent.name and created.name.startswith("staff/")
    assert created.active is True
    assert created.username == sent.username
    assert created.display_name == sent.display_name
    # Two-person rule: no role until a second administrator approves the ones asked for.
    assert list(created.roles) == []
    assert created.pending_access_change.startswith("accessChanges/")
    assert created.practitioner_identifier == sent.practitioner_identifier
    assert created.etag and created.etag != "7"
    assert created.create_time == created.update_time
    read = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=created.name))
    expected = pb.StaffMember()
    expected.CopyFrom(created)
    expected.ClearField("pending_access_change")  # named only in the create's answer
    assert read == expected
    await approve(iam, created.pending_access_change)
    approved = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=created.name))
    assert list(approved.roles) == [R.STAFF_ROLE_DOCTOR, R.STAFF_ROLE_AUDITOR]


async def test_a_second_staff_member_with_the_same_username_already_exists(iam: Stub) -> None:
    first = await create_staff(iam)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=first.name))

    failure = await fails(create_staff(iam, username=first.username))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "USERNAME_EXISTS"


async def test_a_second_staff_member_with_the_same_licence_already_exists(iam: Stub) -> None:
    licence = uuid.uuid4().hex
    await create_staff(iam, licence=licence)

    failure = await fails(create_staff(iam, licence=licence))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "PRACTITIONER_IDENTIFIER_EXISTS"


async def test_a_replayed_create_returns_the_first_staff_member(iam: Stub) -> None:
    request = pb.CreateStaffMemberRequest(staff_member=make_staff(), request_id=request_id())

    assert await iam.CreateStaffMember(request) == await iam.CreateStaffMember(request)


async def test_a_request_id_reused_for_another_staff_member_is_refused(iam: Stub) -> None:
    key = request_id()
    await iam.CreateStaffMember(
        pb.CreateStaffMemberRequest(staff_member=make_staff(), request_id=key)
    )

    fields = await invalid(
        iam.CreateStaffMember(
            pb.CreateStaffMemberRequest(staff_member=make_staff(), request_id=key)
        )
    )

    assert fields == ["request_id"]


async def test_concurrent_replays_create_one_staff_member(iam: Stub, iam_db: AsyncEngine) -> None:
    request = pb.CreateStaffMemberRequest(
        staff_member=make_staff(licence=uuid.uuid4().hex), request_id=request_id()
    )

    replies = await asyncio.gather(*(iam.CreateStaffMember(request) for _ in range(30)))

    assert len({reply.name for reply in replies}) == 1
    async with iam_db.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM iam.staff WHERE username = :u"),
            {"u": request.staff_member.username},
        )
    assert count == 1


async def test_concurrent_creates_of_one_username_let_exactly_one_win(iam: Stub) -> None:
    name = unique_username()
    results = await asyncio.gather(
        *(create_staff(iam, username=name) for _ in range(10)), return_exceptions=True
    )

    won = [r for r in results if isinstance(r, pb.StaffMember)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert [e.code() for e in lost] == [grpc.StatusCode.ALREADY_EXISTS] * 9


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"username": ""}, "staff_member.username"),
        ({"username": "ab"}, "staff_member.username"),
        ({"username": "Dr.Chen"}, "staff_member.username"),
        ({"username": "1chen"}, "staff_member.username"),
        ({"username": "dr chen"}, "staff_member.username"),
        ({"username": "a" * 65}, "staff_member.username"),
        ({"username": "service:patient"}, "staff_member.username"),
        ({"display_name": ""}, "staff_member.display_name"),
        ({"display_name": "x" * 201}, "staff_member.display_name"),
        ({"display_name": "Dr.\u202eevil"}, "staff_member.display_name"),
        ({"roles": []}, "staff_member.roles"),
        ({"roles": [R.STAFF_ROLE_UNSPECIFIED]}, "staff_member.roles[0]"),
        ({"roles": [R.STAFF_ROLE_NURSE, 77]}, "staff_member.roles[1]"),
        ({"roles": [R.STAFF_ROLE_NURSE, R.STAFF_ROLE_NURSE]}, "staff_member.roles[1]"),
        (
            {"practitioner_identifier": types_pb2.Identifier(system=LICENCE_SYSTEM)},
            "staff_member.practitioner_identifier.value",
        ),
        (
            {"practitioner_identifier": types_pb2.Identifier(value="123")},
            "staff_member.practitioner_identifier.system",
        ),
        (
            {"practitioner_identifier": types_pb2.Identifier(system="s", value="v" * 201)},
            "staff_member.practitioner_identifier.value",
        ),
    ],
)
async def test_bad_staff_member_names_the_field(
    iam: Stub, change: dict[str, object], field: str
) -> None:
    member = make_staff()
    for key, value in change.items():
        if key == "roles":
            member.ClearField("roles")
            member.roles.extend(value)  # type: ignore[arg-type]
        elif key == "practitioner_identifier":
            member.practitioner_identifier.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(member, key, value)

    fields = await invalid(iam.CreateStaffMember(pb.CreateStaffMemberRequest(staff_member=member)))

    assert fields == [field]


@pytest.mark.parametrize("role", ["DOCTOR", "REGISTRAR", "AUDITOR", "SERVICE"])
async def test_only_administrators_create_staff(iam: Stub, issuer: Issuer, role: str) -> None:
    token = issuer.service("patient") if role == "SERVICE" else issuer.staff(role)

    failure = await fails(
        iam.CreateStaffMember(
            pb.CreateStaffMemberRequest(staff_member=make_staff()), metadata=as_(token)
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


# --- read and list -----------------------------------------------------------------------------


async def test_get_returns_inactive_staff_members_too(iam: Stub) -> None:
    member = await create_staff(iam)
    gone = await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=member.name))

    assert await iam.GetStaffMember(pb.GetStaffMemberRequest(name=member.name)) == gone


async def test_services_read_staff_members(iam: Stub, issuer: Issuer) -> None:
    member = await create_staff(iam)

    read = await iam.GetStaffMember(
        pb.GetStaffMemberRequest(name=member.name), metadata=as_(issuer.service("emr"))
    )

    assert read == member


@pytest.mark.parametrize("name", ["", "staff/", "staff/-", "staff/abc", "departments/x"])
async def test_get_with_a_malformed_name_names_the_field(iam: Stub, name: str) -> None:
    assert await invalid(iam.GetStaffMember(pb.GetStaffMemberRequest(name=name))) == ["name"]


async def test_get_of_a_missing_staff_member_is_not_found(iam: Stub) -> None:
    failure = await fails(
        iam.GetStaffMember(pb.GetStaffMemberRequest(name=f"staff/{uuid.uuid4()}"))
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND


async def _all_staff(iam: Stub, **filters: object) -> list[pb.StaffMember]:
    found: list[pb.StaffMember] = []
    token = ""
    while True:
        reply = await iam.ListStaffMembers(
            pb.ListStaffMembersRequest(page_size=3, page_token=token, **filters)  # type: ignore[arg-type]
        )
        found.extend(reply.staff_members)
        token = reply.next_page_token
        if not token:
            return found


async def test_list_pages_every_active_staff_member_once_ordered_by_username(iam: Stub) -> None:
    created = [await create_staff(iam) for _ in range(4)]
    gone = await create_staff(iam)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=gone.name))

    listed = await _all_staff(iam)
    everyone = await _all_staff(iam, include_inactive=True)

    usernames = [m.username for m in listed]
    assert usernames == sorted(usernames) and len(usernames) == len(set(usernames))
    assert {m.username for m in created} <= set(usernames)
    assert all(m.active for m in listed)
    assert gone.username not in usernames
    assert gone.username in {m.username for m in everyone}


async def test_list_filters_by_exact_username(iam: Stub) -> None:
    member = await create_staff(iam)

    reply = await iam.ListStaffMembers(pb.ListStaffMembersRequest(username=member.username))

    assert list(reply.staff_members) == [member]


async def test_list_filters_by_case_insensitive_display_name_prefix(iam: Stub) -> None:
    stem = word(12)
    match = await create_staff(iam, display_name=f"Zz{stem.capitalize()} Wei")
    await create_staff(iam, display_name=f"Other {stem}")

    reply = await iam.ListStaffMembers(pb.ListStaffMembersRequest(display_name_prefix=f"ZZ{stem}"))

    assert list(reply.staff_members) == [match]


async def test_list_prefix_treats_like_wildcards_literally(iam: Stub) -> None:
    stem = word(12)
    await create_staff(iam, display_name=f"{stem}Xabc")

    reply = await iam.ListStaffMembers(pb.ListStaffMembersRequest(display_name_prefix=f"{stem}%"))

    assert list(reply.staff_members) == []


async def test_list_filters_by_role(iam: Stub) -> None:
    pharmacist = await create_staff(iam, R.STAFF_ROLE_LAB_TECHNICIAN, R.STAFF_ROLE_PHARMACIST)

    listed = await _all_staff(iam, role=R.STAFF_ROLE_PHARMACIST)

    assert pharmacist in listed
    assert all(R.STAFF_ROLE_PHARMACIST in m.roles for m in listed)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListStaffMembersRequest(page_size=-5), "page_size"),
        (pb.ListStaffMembersRequest(role=99), "role"),  # type: ignore[arg-type]
        (pb.ListStaffMembersRequest(username="Not A Username"), "username"),
        (pb.ListStaffMembersRequest(display_name_prefix="x" * 101), "display_name_prefix"),
        (pb.ListStaffMembersRequest(page_token="garbage"), "page_token"),
    ],
)
async def test_bad_list_request_names_the_field(
    iam: Stub, request_: pb.ListStaffMembersRequest, field: str
) -> None:
    assert await invalid(iam.ListStaffMembers(request_)) == [field]


async def test_page_token_of_another_filter_is_refused(iam: Stub) -> None:
    for _ in range(2):
        await create_staff(iam, R.STAFF_ROLE_BILLING_CLERK)
    page = await iam.ListStaffMembers(
        pb.ListStaffMembersRequest(page_size=1, role=R.STAFF_ROLE_BILLING_CLERK)
    )

    fields = await invalid(
        iam.ListStaffMembers(
            pb.ListStaffMembersRequest(page_size=1, page_token=page.next_page_token)
        )
    )

    assert fields == ["page_token"]


async def test_doctors_look_up_colleagues_but_cannot_add_staff(iam: Stub, issuer: Issuer) -> None:
    doctor = as_(issuer.staff("DOCTOR"))
    listed = await iam.ListStaffMembers(pb.ListStaffMembersRequest(), metadata=doctor)
    failure = await fails(
        iam.CreateStaffMember(
            pb.CreateStaffMemberRequest(
                staff_member=pb.StaffMember(
                    username="not.by.doctor", display_name="X", roles=[R.STAFF_ROLE_NURSE]
                )
            ),
            metadata=doctor,
        )
    )

    assert listed.staff_members  # the staff directory is not patient data
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


# --- update ------------------------------------------------------------------------------------


async def test_update_changes_only_the_masked_fields_and_the_etag(iam: Stub) -> None:
    member = await create_staff(iam, R.STAFF_ROLE_NURSE)
    change = pb.StaffMember(
        name=member.name,
        username="ignored.name",
        display_name="Nurse Li Na",
        roles=[R.STAFF_ROLE_DOCTOR],
        etag=member.etag,
    )
    change.practitioner_identifier.CopyFrom(
        types_pb2.Identifier(system=LICENCE_SYSTEM, value=uuid.uuid4().hex)
    )

    updated = await iam.UpdateStaffMember(
        _update(change, "display_name", "practitioner_identifier")
    )

    assert updated.display_name == "Nurse Li Na"
    assert updated.practitioner_identifier == change.practitioner_identifier
    assert list(updated.roles) == [R.STAFF_ROLE_NURSE]
    assert updated.username == member.username
    assert updated.etag != member.etag
    assert updated.update_time.ToDatetime() > member.update_time.ToDatetime()


async def test_update_can_clear_the_licence(iam: Stub) -> None:
    member = await create_staff(iam, licence=uuid.uuid4().hex)
    member.ClearField("practitioner_identifier")

    updated = await iam.UpdateStaffMember(_update(member, "practitioner_identifier"))

    assert not updated.HasField("practitioner_identifier")


async def test_update_with_a_stale_etag_is_aborted(iam: Stub) -> None:
    member = await create_staff(iam)
    first = pb.StaffMember(name=member.name, display_name="First", etag=member.etag)
    await iam.UpdateStaffMember(_update(first, "display_name"))
    second = pb.StaffMember(name=member.name, display_name="Second", etag=member.etag)

    failure = await fails(iam.UpdateStaffMember(_update(second, "display_name")))

    assert failure.code == grpc.StatusCode.ABORTED
    assert failure.reason == "ETAG_MISMATCH"


async def test_a_retried_update_succeeds_whatever_the_etag(iam: Stub) -> None:
    member = await create_staff(iam)
    change = pb.StaffMember(name=member.name, display_name="Dr. Retry", etag=member.etag)

    first = await iam.UpdateStaffMember(_update(change, "display_name"))
    again = await iam.UpdateStaffMember(_update(change, "display_name"))

    assert again == first


async def test_update_to_another_members_licence_already_exists(iam: Stub) -> None:
    licence = uuid.uuid4().hex
    await create_staff(iam, licence=licence)
    member = await create_staff(iam)
    member.practitioner_identifier.CopyFrom(
        types_pb2.Identifier(system=LICENCE_SYSTEM, value=licence)
    )

    failure = await fails(iam.UpdateStaffMember(_update(member, "practitioner_identifier")))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "PRACTITIONER_IDENTIFIER_EXISTS"


async def test_update_of_an_inactive_staff_member_fails_precondition(iam: Stub) -> None:
    member = await create_staff(iam)
    await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=member.name))
    member.display_name = "Too Late"

    failure = await fails(iam.UpdateStaffMember(_update(member, "display_name")))

    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "STAFF_INACTIVE"


async def test_update_of_a_missing_staff_member_is_not_found(iam: Stub) -> None:
    ghost = make_staff()
    ghost.name = f"staff/{uuid.uuid4()}"

    failure = await fails(iam.UpdateStaffMember(_update(ghost, "display_name")))

    assert failure.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("paths", "change", "field"),
    [
        ((), {}, "update_mask"),
        (("username",), {}, "update_mask"),
        (("active",), {}, "update_mask"),
        (("etag",), {}, "update_mask"),
        (("shoe_size",), {}, "update_mask"),
        (("roles",), {"roles": []}, "staff_member.roles"),
        (("display_name",), {"display_name": ""}, "staff_member.display_name"),
        (("display_name",), {"name": "staff/nope"}, "staff_member.name"),
    ],
)
async def test_bad_update_names_the_field(
    iam: Stub, paths: tuple[str, ...], change: dict[str, object], field: str
) -> None:
    member = await create_staff(iam)
    for key, value in change.items():
        if key == "roles":
            member.ClearField("roles")
        else:
            setattr(member, key, value)

    assert await invalid(iam.UpdateStaffMember(_update(member, *paths))) == [field]


async def test_only_administrators_update_staff(iam: Stub, issuer: Issuer) -> None:
    member = await create_staff(iam)
    member.display_name = "Self Promoted"
    own_token = issuer.staff("DOCTOR", staff_id=member.name.removeprefix("staff/"))

    failure = await fails(
        iam.UpdateStaffMember(_update(member, "display_name"), metadata=as_(own_token))
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


# --- deactivate --------------------------------------------------------------------------------


async def test_deactivation_ends_open_memberships_and_keeps_history(iam: Stub) -> None:
    member = await create_staff(iam)
    department = await create_department(iam)
    membership = await add_membership(iam, member.name, department.name, primary=True)

    gone = await iam.DeactivateStaffMember(
        pb.DeactivateStaffMemberRequest(name=member.name, etag=member.etag)
    )

    assert gone.active is False
    assert gone.etag != member.etag
    listed = await iam.ListMemberships(pb.ListMembershipsRequest(parent=member.name))
    assert [m.name for m in listed.memberships] == [membership.name]
    assert listed.memberships[0].period.HasField("end_time")
    current = await iam.ListMemberships(
        pb.ListMembershipsRequest(parent=member.name, current_only=True)
    )
    assert list(current.memberships) == []


async def test_deactivating_an_inactive_staff_member_changes_nothing(iam: Stub) -> None:
    member = await create_staff(iam)
    first = await iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=member.name))

    again = await iam.DeactivateStaffMember(
        pb.DeactivateStaffMemberRequest(name=member.name, etag=member.etag)
    )

    assert again == first


async def test_deactivation_with_a_stale_etag_is_aborted(iam: Stub) -> None:
    member = await create_staff(iam)
    member.display_name = "Changed"
    await iam.UpdateStaffMember(_update(member, "display_name"))

    failure = await fails(
        iam.DeactivateStaffMember(
            pb.DeactivateStaffMemberRequest(name=member.name, etag=member.etag)
        )
    )

    assert failure.code == grpc.StatusCode.ABORTED


async def test_deactivation_of_a_missing_staff_member_is_not_found(iam: Stub) -> None:
    failure = await fails(
        iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=f"staff/{uuid.uuid4()}"))
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_deactivation_with_a_bad_name_names_the_field(iam: Stub) -> None:
    assert await invalid(
        iam.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name="staff"))
    ) == ["name"]


async def test_authorization_comes_before_existence(iam: Stub, issuer: Issuer) -> None:
    failure = await fails(
        iam.DeactivateStaffMember(
            pb.DeactivateStaffMemberRequest(name=f"staff/{uuid.uuid4()}"),
            metadata=as_(issuer.staff("NURSE")),
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


# --- the last administrator --------------------------------------------------------------------


@pytest.fixture
async def lone_admin(
    postgres: EmbeddedPostgres, make_iam_config: Callable[..., IamConfig], admin_token: str
) -> AsyncIterator[tuple[Stub, pb.StaffMember]]:
    """An iam on a fresh database whose only staff member is its bootstrap administrator."""
    url = await fresh_database(postgres, f"his_iam_admins_{uuid.uuid4().hex[:8]}")
    config = make_iam_config(bootstrap_admin="only.admin")
    running: RunningService = await start(iam_spec(config), service_config("iam"), url)
    try:
        async with channel_as(running.address, admin_token) as channel:
            stub: Stub = pb_grpc.IamServiceStub(channel)
            await bootstrap_login(stub, "only.admin")
            admins = await stub.ListStaffMembers(pb.ListStaffMembersRequest())
            assert [m.username for m in admins.staff_members] == ["only.admin"]
            yield stub, admins.staff_members[0]
    finally:
        await running.stop(grace_s=1)


async def test_the_last_administrator_cannot_be_deactivated_or_demoted(
    lone_admin: tuple[Stub, pb.StaffMember],
) -> None:
    stub, admin = lone_admin
    demoted = pb.StaffMember(name=admin.name, roles=[R.STAFF_ROLE_REGISTRAR])

    for call in (
        stub.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=admin.name)),
        stub.UpdateStaffMember(_update(demoted, "roles")),
    ):
        failure = await fails(call)
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == "LAST_ADMINISTRATOR"

    await create_staff(stub, R.STAFF_ROLE_ADMINISTRATOR)
    updated = await stub.UpdateStaffMember(_update(demoted, "roles"))
    # ADMINISTRATOR is taken away at once; REGISTRAR waits for a second administrator.
    assert list(updated.roles) == []
    await approve(stub, updated.pending_access_change)
    approved = await stub.GetStaffMember(pb.GetStaffMemberRequest(name=admin.name))
    assert list(approved.roles) == [R.STAFF_ROLE_REGISTRAR]


async def test_two_administrators_deactivating_each_other_leave_one(
    lone_admin: tuple[Stub, pb.StaffMember],
) -> None:
    stub, admin = lone_admin
    other = await create_staff(stub, R.STAFF_ROLE_ADMINISTRATOR, R.STAFF_ROLE_AUDITOR)

    results = await asyncio.gather(
        *(
            stub.DeactivateStaffMember(pb.DeactivateStaffMemberRequest(name=name))
            for name in (admin.name, other.name)
        ),
        return_exceptions=True,
    )

    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert [e.code() for e in refused] == [grpc.StatusCode.FAILED_PRECONDITION]
    remaining = await stub.ListStaffMembers(
        pb.ListStaffMembersRequest(role=R.STAFF_ROLE_ADMINISTRATOR)
    )
    assert len(remaining.staff_members) == 1
