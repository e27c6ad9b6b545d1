"""Fixtures of the billing tests: a registered patient per test, direct database access."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.patient.v1 import patient_service_pb2_grpc
from his.runtime.database import async_url
from tests.emr.helpers import new_patient


@pytest.fixture
async def patient(patients: patient_service_pb2_grpc.PatientServiceAsyncStub) -> str:
    """A new active patient of the session's patient service."""
    return await new_patient(patients)


@pytest.fixture(scope="session")
async def billing_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to look behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()
