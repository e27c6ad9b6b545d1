"""Fixtures of the audit tests: an audit service on its own database, stubs per kind of caller.

The audit tests get a database of their own in the session's PostgreSQL: they count every row,
check that sequence numbers have no gaps and tamper with rows behind the service's back (putting
them back afterwards), none of which may disturb or be disturbed by other services' tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.audit.spec import SPEC as AUDIT
from his.audit.v1 import audit_service_pb2_grpc as pb_grpc
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, start
from tests.audit.helpers import Stub
from tests.conftest import service_config
from tests.identity import Issuer, channel_as
from tests.support import fresh_database

_DATABASE = "his_audit_tests"


@pytest.fixture(scope="session")
async def audit_url(postgres: EmbeddedPostgres) -> str:
    """A fresh database holding only the audit schema, migrated."""
    return await fresh_database(postgres.url, _DATABASE, "audit")


@pytest.fixture(scope="session")
async def audit_server(audit_url: str) -> AsyncIterator[RunningService]:
    """An audit service of the audit tests' own, on a free port (not the session's shared one)."""
    running = await start(AUDIT, service_config("audit"), audit_url)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="session")
async def audit_db(audit_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the audit database, to count and tamper with rows behind the API's back."""
    engine = create_async_engine(async_url(audit_url), poolclass=NullPool)
    yield engine
    await engine.dispose()


async def _stub(address: str, token: str) -> AsyncIterator[Stub]:
    async with channel_as(address, token) as channel:
        yield pb_grpc.AuditServiceStub(channel)


@pytest.fixture(scope="session")
async def writer(audit_server: RunningService, issuer: Issuer) -> AsyncIterator[Stub]:
    """The audit service as the patient service calls it (its own service token)."""
    async for stub in _stub(audit_server.address, issuer.service("patient")):
        yield stub


@pytest.fixture(scope="session")
async def other_writer(audit_server: RunningService, issuer: Issuer) -> AsyncIterator[Stub]:
    """The audit service as the scheduling service calls it."""
    async for stub in _stub(audit_server.address, issuer.service("scheduling")):
        yield stub


@pytest.fixture(scope="session")
async def auditor(audit_server: RunningService, issuer: Issuer) -> AsyncIterator[Stub]:
    """The audit service as an auditor calls it."""
    async for stub in _stub(audit_server.address, issuer.staff("AUDITOR")):
        yield stub


@pytest.fixture(scope="session")
async def doctor(audit_server: RunningService, issuer: Issuer) -> AsyncIterator[Stub]:
    """The audit service as a doctor calls it (no audit rights at all)."""
    async for stub in _stub(audit_server.address, issuer.staff("DOCTOR")):
        yield stub


@pytest.fixture(scope="session")
async def anonymous(audit_server: RunningService) -> AsyncIterator[Stub]:
    """The audit service called without any token."""
    async with grpc.aio.insecure_channel(audit_server.address) as channel:
        yield pb_grpc.AuditServiceStub(channel)
