"""Fixtures of the emr tests: the clinic in the session's iam, direct database access."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.runtime.database import async_url
from his.runtime.server import RunningService
from tests.emr.helpers import ADMINISTRATOR, Clinic
from tests.identity import channel_as


@pytest.fixture(scope="session")
async def clinic(iam_service: RunningService) -> AsyncIterator[Clinic]:
    """Departments and clinicians of the session's iam, made once by an administrator."""
    async with channel_as(iam_service.address, ADMINISTRATOR) as channel:
        yield await Clinic(iam_grpc.IamServiceStub(channel)).build()


@pytest.fixture(scope="session")
async def emr_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to look behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()
