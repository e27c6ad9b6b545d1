"""Fixtures of the lab tests: the hospital in the session's iam, direct database access."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.runtime.database import async_url
from his.runtime.server import RunningService
from tests.identity import channel_as
from tests.lab.helpers import ADMINISTRATOR, Hospital
from tests.support import relay_paused


@pytest.fixture(scope="session")
async def hospital(iam_service: RunningService) -> AsyncIterator[Hospital]:
    """Laboratories, clinics and their people in the session's iam, made once."""
    async with channel_as(iam_service.address, ADMINISTRATOR) as channel:
        yield await Hospital(iam_grpc.IamServiceStub(channel)).build()


@pytest.fixture(scope="session")
async def lab_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to look behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
async def lab_outbox_held(lab_service: RunningService) -> AsyncIterator[None]:
    """Lab's relay paused for the test: its DiagnosticReportIssued events stay in the outbox to
    be read (the session's orders would otherwise take them away at once)."""
    async with relay_paused(lab_service):
        yield
