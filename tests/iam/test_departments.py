"""Departments: create (replays, unique codes), read, list by code with filters and pages."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.iam.v1 import iam_service_pb2 as pb
from tests.iam.helpers import (
    DOMAIN,
    Stub,
    as_,
    create_department,
    invalid,
    make_department,
    request_id,
    unique_code,
)
from tests.identity import Issuer
from tests.support import fails


async def test_created_department_gets_a_name_and_reads_back_unchanged(iam: Stub) -> None:
    sent = make_department(pb.DEPARTMENT_KIND_SURGERY)
    sent.name = f"departments/{uuid.uuid4()}"

    created = await create_department(iam, sent)

    assert created.name != sent.name
    assert created.name.startswith("departments/")
    uuid.UUID(created.name.removeprefix("departments/"))
    assert (created.code, created.display_name, created.kind) == (
        sent.code,
        sent.display_name,
        pb.DEPARTMENT_KIND_SURGERY,
    )
    assert created.HasField("create_time")
    assert await iam.GetDepartment(pb.GetDepartmentRequest(name=created.name)) == created


async def test_a_second_department_with_the_same_code_already_exists(iam: Stub) -> None:
    first = await create_department(iam)

    failure = await fails(create_department(iam, make_department(code=first.code)))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "DEPARTMENT_CODE_EXISTS"
    assert failure.domain == DOMAIN


async def test_a_replayed_create_returns_the_first_department(iam: Stub) -> None:
    request = pb.CreateDepartmentRequest(department=make_department(), request_id=request_id())

    first = await iam.CreateDepartment(request)
    second = await iam.CreateDepartment(request)

    assert first == second


async def test_a_request_id_reused_for_another_department_is_refused(iam: Stub) -> None:
    key = request_id()
    await iam.CreateDepartment(
        pb.CreateDepartmentRequest(department=make_department(), request_id=key)
    )

    fields = await invalid(
        iam.CreateDepartment(
            pb.CreateDepartmentRequest(department=make_department(), request_id=key)
        )
    )

    assert fields == ["request_id"]


async def test_concurrent_replays_create_one_department(iam: Stub, iam_db: AsyncEngine) -> None:
    request = pb.CreateDepartmentRequest(department=make_department(), request_id=request_id())

    replies = await asyncio.gather(*(iam.CreateDepartment(request) for _ in range(20)))

    assert len({reply.name for reply in replies}) == 1
    async with iam_db.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM iam.departments WHERE code = :code"),
            {"code": request.department.code},
        )
    assert count == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code": ""}, "department.code"),
        ({"code": "card-op"}, "department.code"),
        ({"code": "A" * 21}, "department.code"),
        ({"code": "CARD OP"}, "department.code"),
        ({"display_name": " "}, "department.display_name"),
        ({"display_name": "x" * 201}, "department.display_name"),
        ({"kind": pb.DEPARTMENT_KIND_UNSPECIFIED}, "department.kind"),
        ({"kind": 99}, "department.kind"),
    ],
)
async def test_bad_department_names_the_field(
    iam: Stub, change: dict[str, object], field: str
) -> None:
    department = make_department()
    for key, value in change.items():
        setattr(department, key, value)

    assert await invalid(create_department(iam, department)) == [field]


async def test_create_without_a_department_names_it(iam: Stub) -> None:
    assert await invalid(iam.CreateDepartment(pb.CreateDepartmentRequest())) == [
        "department",
        "department.code",
        "department.display_name",
        "department.kind",
    ]


@pytest.mark.parametrize("role", ["DOCTOR", "REGISTRAR", "AUDITOR", "SERVICE"])
async def test_only_administrators_create_departments(iam: Stub, issuer: Issuer, role: str) -> None:
    token = issuer.service("patient") if role == "SERVICE" else issuer.staff(role)

    failure = await fails(
        iam.CreateDepartment(
            pb.CreateDepartmentRequest(department=make_department()), metadata=as_(token)
        )
    )

    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


async def test_services_read_departments(iam: Stub, issuer: Issuer) -> None:
    created = await create_department(iam)

    read = await iam.GetDepartment(
        pb.GetDepartmentRequest(name=created.name), metadata=as_(issuer.service("scheduling"))
    )

    assert read == created


@pytest.mark.parametrize(
    "name", ["", "departments/", "departments/x", "staff/" + str(uuid.uuid4()), "departments/A-1"]
)
async def test_get_with_a_malformed_name_names_the_field(iam: Stub, name: str) -> None:
    assert await invalid(iam.GetDepartment(pb.GetDepartmentRequest(name=name))) == ["name"]


async def test_get_of_a_missing_department_is_not_found(iam: Stub) -> None:
    failure = await fails(
        iam.GetDepartment(pb.GetDepartmentRequest(name=f"departments/{uuid.uuid4()}"))
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND


async def _all_departments(iam: Stub, **filters: object) -> list[pb.Department]:
    found: list[pb.Department] = []
    token = ""
    while True:
        reply = await iam.ListDepartments(
            pb.ListDepartmentsRequest(page_size=2, page_token=token, **filters)  # type: ignore[arg-type]
        )
        assert len(reply.departments) <= 2
        found.extend(reply.departments)
        token = reply.next_page_token
        if not token:
            return found


async def test_pages_list_every_department_once_ordered_by_code(iam: Stub) -> None:
    created = [await create_department(iam) for _ in range(5)]

    listed = await _all_departments(iam)

    codes = [department.code for department in listed]
    assert codes == sorted(codes)
    assert len(codes) == len(set(codes))
    assert {d.code for d in created} <= set(codes)


async def test_list_filters_by_kind(iam: Stub) -> None:
    lab = await create_department(iam, make_department(pb.DEPARTMENT_KIND_LAB))
    ward = await create_department(iam, make_department(pb.DEPARTMENT_KIND_INPATIENT))

    labs = await _all_departments(iam, kind=pb.DEPARTMENT_KIND_LAB)

    assert lab in labs
    assert ward not in labs
    assert {d.kind for d in labs} == {pb.DEPARTMENT_KIND_LAB}


async def test_list_default_page_is_fifty(iam: Stub) -> None:
    for _ in range(51 - len((await iam.ListDepartments(pb.ListDepartmentsRequest())).departments)):
        await create_department(iam, make_department(code=unique_code()))

    reply = await iam.ListDepartments(pb.ListDepartmentsRequest())

    assert len(reply.departments) == 50
    assert reply.next_page_token


async def test_page_token_of_another_filter_is_refused(iam: Stub) -> None:
    for _ in range(2):
        await create_department(iam, make_department(pb.DEPARTMENT_KIND_PHARMACY))
    page = await iam.ListDepartments(
        pb.ListDepartmentsRequest(page_size=1, kind=pb.DEPARTMENT_KIND_PHARMACY)
    )

    fields = await invalid(
        iam.ListDepartments(pb.ListDepartmentsRequest(page_size=1, page_token=page.next_page_token))
    )

    assert fields == ["page_token"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListDepartmentsRequest(page_size=-1), "page_size"),
        (pb.ListDepartmentsRequest(kind=42), "kind"),  # type: ignore[arg-type]
        (pb.ListDepartmentsRequest(page_token="not-a-token"), "page_token"),
    ],
)
async def test_bad_list_request_names_the_field(
    iam: Stub, request_: pb.ListDepartmentsRequest, field: str
) -> None:
    assert await invalid(iam.ListDepartments(request_)) == [field]
