"""Fixtures of the pharmacy tests: pharmacies of the session's iam, direct database access."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.runtime.database import async_url
from his.runtime.server import RunningService
from tests.emr.helpers import ADMINISTRATOR, Clinic
from tests.iam.helpers import make_department
from tests.identity import channel_as


async def _department(iam_service: RunningService, kind: iam_pb.DepartmentKind.ValueType) -> str:
    async with channel_as(iam_service.address, ADMINISTRATOR) as channel:
        made = await iam_grpc.IamServiceStub(channel).CreateDepartment(
            iam_pb.CreateDepartmentRequest(department=make_department(kind))
        )
    return str(made.name)


@pytest.fixture(scope="session")
async def pharmacy_location(iam_service: RunningService) -> str:
    """A department of kind PHARMACY in the session's iam."""
    return await _department(iam_service, iam_pb.DEPARTMENT_KIND_PHARMACY)


@pytest.fixture(scope="session")
async def other_pharmacy(iam_service: RunningService) -> str:
    """A second pharmacy."""
    return await _department(iam_service, iam_pb.DEPARTMENT_KIND_PHARMACY)


@pytest.fixture(scope="session")
async def clinic_department(iam_service: RunningService) -> str:
    """An outpatient clinic: not a place that holds stock."""
    return await _department(iam_service, iam_pb.DEPARTMENT_KIND_OUTPATIENT)


@pytest.fixture(scope="session")
async def clinic(iam_service: RunningService) -> AsyncIterator[Clinic]:
    """Departments and clinicians of the session's iam (the emr tests' clinic, made again)."""
    async with channel_as(iam_service.address, ADMINISTRATOR) as channel:
        yield await Clinic(iam_grpc.IamServiceStub(channel)).build()


@pytest.fixture(scope="session")
async def pharmacy_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to look behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()
