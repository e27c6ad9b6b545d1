"""`his serve` loads what serving needs and nothing else: migrations tooling, research and mesh
code, OpenTelemetry's SDK and instrumentation (without a collector) and the stubs of services
that do not exist yet stay out of a service process.

Start-up time is a benchmark's figure (bench/startup.py), never a test's; what a test can hold
is the cause: each module below cost start-up tens to hundreds of milliseconds before it was
taken off the path. The process is a real `his serve <service>` over the session database
(schema at head, so the schema check runs as in production) under `python -X importtime`, whose
report names every module the process imported, from start to its exit after SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import Popen
from typing import IO

import pytest

from his.base.catalog import CATALOG, lookup
from his.runtime.health import SERVING
from tests.conftest import DEV_CREDENTIAL, SERVICE_CREDENTIAL_KEY
from tests.identity import ISSUER
from tests.support import free_port, wait_for_health

_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)

# Never needed to serve: loaded only by other commands, or when there is work they exist for.
NEVER = (
    # Migrations run only when the schema is not at head (his.runtime.schema_version).
    "alembic",
    "mako",
    # Other commands' code.
    "his.research_export",
    "his.local",
    "his.mesh",
    "yaml",
    # Spans and their export only with HIS_OTLP_ENDPOINT (his.runtime.telemetry); the SDK's
    # trace propagation needs only the API (his_client.tracing).
    "opentelemetry.sdk",
    "opentelemetry.instrumentation",
    "opentelemetry.exporter",
    "wrapt",
    "psutil",
)
# HisClients imports a service's stubs when it is first called, not those of all nine.
UNBUILT = tuple(f"his.{entry.name}.v1" for entry in CATALOG if not entry.implemented)


def _loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in prefixes))


def _env(service: str, database_url: str, port: int) -> dict[str, str]:
    env = dict(
        os.environ,
        **ISSUER.service_env(service),
        HIS_DATABASE_URL=database_url,
        HIS_PORT=str(port),
        HIS_METRICS_PORT="-1",
        HIS_LOG_LEVEL="WARNING",
    )
    env.pop("HIS_OTLP_ENDPOINT", None)
    if service == "iam":
        env.update(
            HIS_IAM_SIGNING_KEYS=str(ISSUER.signing_key_path),
            HIS_IAM_DEV_CREDENTIAL=DEV_CREDENTIAL,
            HIS_SERVICE_CREDENTIAL_KEY=SERVICE_CREDENTIAL_KEY,
        )
    return env


def _his_serve_importtime(
    service: str, database_url: str, port: int, log: IO[bytes]
) -> Popen[bytes]:
    """`python -X importtime -m his.cli serve <service>`, its report going to `log`."""
    command = [sys.executable, "-X", "importtime", "-m", "his.cli", "serve", service]
    return subprocess.Popen(command, env=_env(service, database_url, port), stderr=log)


def _imported(report: Path) -> set[str]:
    return set(_IMPORTED.findall(report.read_text(errors="replace")))


async def _modules_of_a_start(service: str, database_url: str, report: Path) -> set[str]:
    """Every module `his serve <service>` imported until SERVING and a SIGTERM stop."""
    port = free_port()
    with report.open("wb") as log:
        process = _his_serve_importtime(service, database_url, port, log)
        try:
            await wait_for_health(f"localhost:{port}", lookup(service).grpc_service, SERVING)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.wait)
    return _imported(report)


@pytest.mark.parametrize("service", [entry.name for entry in CATALOG if entry.implemented])
async def test_a_service_loads_only_what_serving_needs(
    service: str, database_url: str, tmp_path: Path
) -> None:
    modules = await _modules_of_a_start(service, database_url, tmp_path / "importtime.txt")

    # The report was read: the server, its database layer and the service itself are in it.
    assert {"his.runtime.server", "sqlalchemy", f"his.{service}.service"} <= modules
    assert _loaded(modules, NEVER) == []
    assert _loaded(modules, UNBUILT) == []
