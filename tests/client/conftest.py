"""Fixtures for the client SDK: a scripted upstream on a free port, clients pointed at it, and a
real HIS server (the runtime's `start`) whose servicer calls that upstream through the SDK."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from his.patient.service import PatientService
from his.patient.spec import SPEC as PATIENT
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.server import RunningService, ServiceResources, ServiceSpec, start
from his_client import HisClients
from his_client.config import ClientConfig
from tests.client.upstream import Upstream, serve_upstream
from tests.conftest import service_config
from tests.identity import registrar_channel

# Fast backoff and a breaker that stays out of the way, unless a test says otherwise.
FAST = ClientConfig(
    default_timeout_s=5.0,
    max_attempts=3,
    backoff_base_s=0.01,
    backoff_max_s=0.05,
    breaker_fail_max=1000,
    breaker_reset_s=10.0,
)

MakeClients = Callable[..., HisClients]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A scripted patient server on a free port, for one test."""
    running = await serve_upstream()
    yield running
    await running.server.stop(0)


@pytest.fixture
async def make_clients(upstream: Upstream) -> AsyncIterator[MakeClients]:
    """`make_clients(max_attempts=50, ...)`: HisClients on the upstream with FAST's settings,
    changed by the keywords, and its own metrics registry. All are closed after the test."""
    opened: list[HisClients] = []

    def make(**settings: Any) -> HisClients:
        config = dataclasses.replace(FAST, addresses={"patient": upstream.address}, **settings)
        clients = HisClients(config, registry=CollectorRegistry())
        opened.append(clients)
        return clients

    yield make
    for clients in opened:
        await clients.close()


class FrontPatientService(PatientService):
    """A servicer whose GetPatient depends on an upstream, as a real service's calls do."""

    def __init__(self, resources: ServiceResources) -> None:
        super().__init__(resources)
        self._upstreams = resources.clients

    async def GetPatient(
        self, request: pb.GetPatientRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Patient:
        return await self._upstreams.patient.GetPatient(request)


FRONT = ServiceSpec(
    name=PATIENT.name,
    grpc_service=PATIENT.grpc_service,
    add_to_server=pb_grpc.add_PatientServiceServicer_to_server,
    make_servicer=FrontPatientService,
)


@pytest.fixture
async def front(upstream: Upstream, database_url: str) -> AsyncIterator[RunningService]:
    """A server started by the runtime, whose clients reach the scripted upstream."""
    config = service_config("patient")
    clients = ClientConfig(addresses={"patient": upstream.address}, default_timeout_s=30.0)
    running = await start(FRONT, dataclasses.replace(config, clients=clients), database_url)
    yield running
    await running.stop(grace_s=0)


@pytest.fixture
async def front_stub(
    front: RunningService,
) -> AsyncIterator[pb_grpc.PatientServiceAsyncStub]:
    """A plain (SDK-less) stub of the front server."""
    async with registrar_channel(front.address) as channel:
        yield pb_grpc.PatientServiceStub(channel)
