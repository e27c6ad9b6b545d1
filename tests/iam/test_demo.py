"""The demo data set: every role present, memberships in place, and loading twice creates
nothing twice."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.iam import demo, demo_seed
from his.iam.v1 import iam_service_pb2 as pb
from his.runtime.server import RunningService
from his_client import HisClients
from his_client.config import ClientConfig
from his_client.credentials import static_token
from tests.iam.helpers import Stub, bootstrap_login, enrolled_token, verify


async def _counts(iam_db: AsyncEngine) -> tuple[int, int, int]:
    async with iam_db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT (SELECT count(*) FROM iam.departments), (SELECT count(*) FROM iam.staff), "
                "(SELECT count(*) FROM iam.memberships)"
            )
        )
        departments, staff, memberships = rows.one()
    return int(departments), int(staff), int(memberships)


async def _token(iam: Stub, name: str) -> str:
    """Enrol a demo staff member (as `his up --demo` does) and log them in."""
    member = await iam.GetStaffMember(pb.GetStaffMemberRequest(name=name))
    return (await enrolled_token(iam, member)).access_token


async def test_demo_loads_once_with_every_role_and_its_departments(
    iam: Stub, iam_server: RunningService, admin_token: str, iam_db: AsyncEngine, iam_url: str
) -> None:
    config = ClientConfig(addresses={"iam": iam_server.address})
    async with HisClients(config, token=static_token(admin_token)) as his:
        summary = await demo.load(his)
        # As `his up --demo` does: the demo's pending roles and memberships approved directly.
        approved = await demo_seed.approve_demo_changes(iam_url)
        after_first = await _counts(iam_db)
        again = await demo.load(his)
        directory = await demo.directory(his)

    assert approved == 0 or approved == len(demo.STAFF) + sum(
        len(person.departments) for person in demo.STAFF
    )
    assert await demo_seed.approve_demo_changes(iam_url) == 0  # nothing waits any more

    assert await _counts(iam_db) == after_first
    assert summary.startswith("7 departments, 11 staff members")
    assert again.startswith("7 departments, 11 staff members")
    assert set(directory.departments) == {d.code for d in demo.DEPARTMENTS}
    assert set(directory.staff) == {s.username for s in demo.STAFF}
    roles: set[int] = set()
    for person in demo.STAFF:
        member = await iam.GetStaffMember(
            pb.GetStaffMemberRequest(name=directory.staff[person.username])
        )
        roles.update(member.roles)
    assert roles == set(pb.StaffRole.values()) - {
        pb.STAFF_ROLE_UNSPECIFIED,
        pb.STAFF_ROLE_ADMINISTRATOR,  # the bootstrap administrator, `demo.USER`
    }
    claims = verify(
        await _token(iam, directory.staff["dr.chen"]), await iam.GetJwks(pb.GetJwksRequest())
    )
    assert claims["departments"] == [directory.departments[demo.CARDIOLOGY]]
    nurse = verify(
        await _token(iam, directory.staff["nurse.li"]), await iam.GetJwks(pb.GetJwksRequest())
    )
    assert sorted(nurse["departments"]) == sorted(
        [directory.departments[demo.ORTHOPAEDIC_WARD], directory.departments[demo.GENERAL_MEDICINE]]
    )
    cardiology_nurse = verify(
        await _token(iam, directory.staff["nurse.wang"]), await iam.GetJwks(pb.GetJwksRequest())
    )
    assert cardiology_nurse["roles"] == ["NURSE"]
    assert cardiology_nurse["departments"] == [directory.departments[demo.CARDIOLOGY]]
    admin = verify(
        (await bootstrap_login(iam, demo.USER)).access_token, await iam.GetJwks(pb.GetJwksRequest())
    )
    assert admin["roles"] == ["ADMINISTRATOR"]
