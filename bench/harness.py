"""What the load benchmarks share: a private PostgreSQL, real service processes, a timed driver."""

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
from pathlib import Path

import grpc

from his.runtime.catalog import lookup
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING, wait_for_status
from his.runtime.migrations import upgrade

# Ports away from the local `his up` table, so a running hospital does not disturb a benchmark.
PORT_OFFSET = 100

HEADER = (
    f"{'rpc':<20} {'calls':>7} {'conc':>5} {'calls/s':>9} "
    f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  codes"
)


def address(service: str) -> str:
    """Where the benchmark runs `service`."""
    return f"localhost:{lookup(service).port + PORT_OFFSET}"


@contextlib.contextmanager
def services(*names: str) -> Iterator[None]:
    """A fresh embedded PostgreSQL and one `his serve` process per named service."""
    with tempfile.TemporaryDirectory(prefix="his-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = pg.start()
        processes = []
        try:
            for name in names:
                upgrade(name, url)
            env = dict(
                os.environ,
                HIS_DATABASE_URL=url,
                HIS_METRICS_PORT="-1",
                HIS_MIGRATE="0",
                HIS_LOG_LEVEL="WARNING",
                **{f"HIS_{n.upper()}_ADDR": address(n) for n in names},
            )
            for name in names:
                env["HIS_PORT"] = str(lookup(name).port + PORT_OFFSET)
                command = [sys.executable, "-m", "his.cli", "serve", name]
                processes.append(subprocess.Popen(command, env=dict(env)))  # noqa: S603
            for name in names:
                asyncio.run(wait_for_status(address(name), lookup(name).grpc_service, SERVING))
            yield
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
            pg.stop()


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
