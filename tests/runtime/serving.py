"""`his serve <service>` in a child process, as a container runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import IO

from his.runtime.server import RunningService
from tests.conftest import addresses
from tests.identity import ISSUER


def his_serve(
    service: str,
    database_url: str,
    port: int,
    *upstreams: RunningService,
    stderr: IO[bytes] | int,
    **env: str,
) -> subprocess.Popen[bytes]:
    """Start `his serve <service>` on `port` over the session database, trusting the session's
    issuer and calling `upstreams`; no metrics endpoint, no migration; `env` adds or overrides."""
    settings = dict(
        os.environ,
        **ISSUER.service_env(service),
        **addresses(*upstreams),
        HIS_DATABASE_URL=database_url,
        HIS_PORT=str(port),
        HIS_METRICS_PORT="-1",
        HIS_MIGRATE="0",
        **env,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "his.cli", "serve", service],
        env=settings,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
