"""Fixtures of the orders tests: the hospital in the session's iam, the formulary, database
access behind the API's back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pharmacy_grpc
from his.runtime.database import async_url
from his.runtime.server import RunningService
from tests.emr.helpers import ADMINISTRATOR
from tests.identity import channel_as
from tests.orders.formulary import Formulary, in_pharmacy
from tests.orders.helpers import Hospital
from tests.support import relay_paused


@pytest.fixture(scope="session")
async def hospital(iam_service: RunningService) -> AsyncIterator[Hospital]:
    """Departments (clinics, laboratories, a pharmacy) and their staff, made once."""
    async with channel_as(iam_service.address, ADMINISTRATOR) as channel:
        yield await Hospital(iam_grpc.IamServiceStub(channel)).build()


@pytest.fixture(scope="session")
async def formulary(
    hospital: Hospital, pharmacy_service: RunningService
) -> AsyncIterator[Formulary]:
    """The medications prescriptions name, in the session's pharmacy."""
    async with channel_as(pharmacy_service.address, "") as channel:
        stub = pharmacy_grpc.PharmacyServiceStub(channel)
        yield await in_pharmacy(stub, hospital.pharmacist)


@pytest.fixture(scope="session")
async def orders_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to look behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
async def orders_outbox_held(orders_service: RunningService) -> AsyncIterator[None]:
    """Orders' relay paused for the test: its Changed events stay in the outbox to be read
    (the session's lab and pharmacy would otherwise take them away at once)."""
    async with relay_paused(orders_service):
        yield
