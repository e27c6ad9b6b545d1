"""What the load benchmarks share: a private PostgreSQL, real service processes (with iam and
audit, as in production: every call authenticated, authorized, audited), staff tokens, a driver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from his.base.catalog import CATALOG, lookup
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.local_secrets import local_secrets
from his.login import issue_token
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING, wait_for_status
from his.runtime.migrations import upgrade
from his_client import HisClients, static_token
from his_client.config import ClientConfig
from his_client.credentials import IdentityInterceptor

# Ports away from the local `his up` table, so a running hospital does not disturb a benchmark.
PORT_OFFSET = 100

HEADER = (
    f"{'rpc':<20} {'calls':>7} {'conc':>5} {'calls/s':>9} "
    f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  codes"
)


def address(service: str) -> str:
    """Where the benchmark runs `service`."""
    return f"localhost:{lookup(service).port + PORT_OFFSET}"


@dataclass
class Hospital:
    """The benchmark's running services: their shared settings, and a way to start more."""

    env: dict[str, str]
    data_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def serve(self, name: str, port: int, **settings: str) -> str:
        """Start one more `his serve <name>` on `port` (e.g. a second, differently configured
        patient service on the same database); returns its address once SERVING."""
        env = dict(self.env, HIS_PORT=str(port), **settings)
        command = [sys.executable, "-m", "his.cli", "serve", name]
        self.processes.append(subprocess.Popen(command, env=env))  # noqa: S603
        where = f"localhost:{port}"
        asyncio.run(wait_for_status(where, lookup(name).grpc_service, SERVING, timeout_s=60))
        return where


@contextlib.contextmanager
def services(*names: str) -> Iterator[Hospital]:
    """A fresh embedded PostgreSQL, iam and audit, and one `his serve` process per named service."""
    wanted = list(dict.fromkeys(("iam", "audit", *names)))
    with tempfile.TemporaryDirectory(prefix="his-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = pg.start()
        hospital = Hospital(
            env=dict(
                os.environ,
                **local_secrets(Path(tmp)).env(),
                HIS_DATA_DIR=tmp,
                HIS_DATABASE_URL=url,
                HIS_METRICS_PORT="-1",
                HIS_MIGRATE="0",
                HIS_LOG_LEVEL=os.environ.get("HIS_LOG_LEVEL", "WARNING"),
                **{f"HIS_{entry.name.upper()}_ADDR": address(entry.name) for entry in CATALOG},
            ),
            data_dir=Path(tmp),
        )
        try:
            for name in wanted:
                upgrade(name, url)
            for name in wanted:
                hospital.serve(name, lookup(name).port + PORT_OFFSET)
            yield hospital
        finally:
            for process in hospital.processes:
                process.terminate()
            for process in hospital.processes:
                process.wait(timeout=30)
            pg.stop()


async def staff_token(hospital: Hospital, username: str, *roles: str) -> str:
    """A token for a staff member created (once) by the bootstrap administrator."""
    config = ClientConfig.from_env(hospital.env)

    async def login(user: str) -> str:
        return await issue_token(user, data_dir=hospital.data_dir, config=config)

    admin = await login("admin")
    async with HisClients(config, token=static_token(admin)) as his:
        await his.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(
                staff_member=iam_pb.StaffMember(
                    username=username,
                    display_name=username,
                    roles=[iam_pb.StaffRole.Value(f"STAFF_ROLE_{role}") for role in roles],
                ),
                request_id=f"bench-{username}",
            ),
            timeout=10,
        )
    return await login(username)


def channel(where: str, token: str | None) -> grpc.aio.Channel:
    """A channel to `where` whose calls carry `token` (None: no credentials at all)."""
    interceptors = [IdentityInterceptor(static_token(token))] if token else []
    return grpc.aio.insecure_channel(where, interceptors=interceptors)


async def drive(
    name: str, calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]
) -> None:
    """Run `calls` calls, `concurrency` in flight; print latency percentiles and status codes."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            code = "OK"
            try:
                await call(i)
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            latencies.append(time.perf_counter() - started)
            codes[code] = codes.get(code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100)
    summary = " ".join(f"{k}={v}" for k, v in sorted(codes.items()))
    print(
        f"{name:<20} {calls:>7} {concurrency:>5} {calls / elapsed:>9.0f} "
        f"{q[49]:>8.2f} {q[94]:>8.2f} {q[98]:>8.2f} {ms[-1]:>8.2f}  {summary}",
        flush=True,
    )
