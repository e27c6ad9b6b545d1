"""How long `his serve <service>` takes to be SERVING, and what it imports on the way.

With its database up and migrated (a private embedded PostgreSQL), starts `his serve <service>`
several times and measures from the process start to the first health answer SERVING (readiness,
so the schema check is included: `his serve` migrates after listening), polling every 5 ms,
alternating with the start of the bare echo server (bench/echo.py: Python, grpc, one method) to
its first answer, so the figure is also a ratio to what any grpc.aio process costs here. Beside
the wall-clock time it reads the CPU time the process had used when it answered (user + system,
from /proc): on a machine shared with other work the wall clock moves by tens of percent, the
CPU time much less. Then once more under `python -X importtime`, and prints the import time
grouped by top-level package: what start-up spends importing, and where.

Our own modules are compiled to bytecode first, as `pip install` does in the image: the
development install is editable and this machine sets PYTHONDONTWRITEBYTECODE, so without it
every start would compile `his` from source (~0.2 s here) — a cost no deployed pod pays.

Run: `make bench` or `python -m bench.startup [--service patient] [--runs 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc

import his
import his_client
from bench import echo
from his.base.catalog import lookup
from his.local_secrets import local_secrets
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING, probe
from his.runtime.migrations import upgrade

# Reconnect at once while the server is not listening yet (grpc's default backoff starts at 1 s).
_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 5),
]
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


async def _until_serving(where: str, service: str, process: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(where, options=_FAST_RECONNECT) as channel:
        while process.poll() is None:
            try:
                if await probe(channel, service) == SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.005)
    raise RuntimeError(f"the service exited ({process.returncode}) before SERVING")


@dataclass(frozen=True)
class Start:
    """One start: seconds of wall clock to the first good answer, and the CPU seconds (user +
    system, all threads) the process had used by then."""

    wall: float
    cpu: float


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far (/proc/<pid>/stat, 10 ms steps)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def time_to_serving(env: dict[str, str], service: str, port: int, *python_flags: str) -> Start:
    """From starting `his serve <service>` to readiness SERVING; the process is stopped again
    (its stderr goes to `env["BENCH_STDERR"]` when set)."""
    command = [sys.executable, *python_flags, "-m", "his.cli", "serve", service]
    stderr_path = env.get("BENCH_STDERR")
    with open(stderr_path or os.devnull, "wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stderr=stderr)  # noqa: S603
        try:
            asyncio.run(_until_serving(f"localhost:{port}", lookup(service).grpc_service, process))
            return Start(time.perf_counter() - started, cpu_seconds(process.pid))
        finally:
            process.terminate()
            process.wait(timeout=30)


def time_to_echo(env: dict[str, str], port: int) -> Start:
    """From starting the echo server to its first answer; the process is stopped again."""
    command = [sys.executable, "-m", "bench.echo", "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env)  # noqa: S603
    try:
        asyncio.run(_until_echoed(f"localhost:{port}", process))
        return Start(time.perf_counter() - started, cpu_seconds(process.pid))
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _until_echoed(where: str, process: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(where, options=_FAST_RECONNECT) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(echo.PATH)
        while process.poll() is None:
            try:
                await call(b"", timeout=1)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.005)
    raise RuntimeError(f"the echo server exited ({process.returncode}) before answering")


@dataclass(frozen=True)
class Imports:
    """What `-X importtime` said: the total and the self time by top-level package (µs), and
    each package of others that one of ours imports, with its cumulative time and importer."""

    total: int
    by_package: Counter[str]
    pulled_in: list[tuple[int, str, str]]


def import_profile(text: str) -> Imports:
    by_package: Counter[str] = Counter()
    pulled_in: list[tuple[int, str, str]] = []
    # The tree comes children first: a line at depth d adopts the lines at depth d + 1 before it.
    pending: dict[int, list[tuple[int, str]]] = {}
    total = 0
    for line in text.splitlines():
        match = _IMPORT_LINE.match(line)
        if match is None:
            continue
        own, cumulative, indent, module = match.groups()
        depth = len(indent) // 2
        total += int(own)
        by_package[module.split(".")[0]] += int(own)
        children = pending.pop(depth + 1, [])
        if module.split(".")[0] in ("his", "his_client"):
            pulled_in += [
                (micros, child, module)
                for micros, child in children
                if child.split(".")[0] not in ("his", "his_client")
            ]
        pending.setdefault(depth, []).append((int(cumulative), module))
    return Imports(total, by_package, sorted(pulled_in, reverse=True))


def _median(starts: list[Start], what: str) -> float:
    return float(statistics.median(getattr(start, what) for start in starts))


def _ratio(starts: list[Start], echoes: list[Start], what: str) -> float:
    """Median of each start's ratio to the echo start just before it."""
    return float(
        statistics.median(
            getattr(start, what) / max(getattr(echo, what), 1e-9)
            for start, echo in zip(starts, echoes, strict=True)
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", default="patient")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=25, help="packages listed")
    args = parser.parse_args()
    port = lookup(args.service).port + 300
    for ours in (his, his_client):
        for directory in ours.__path__:
            compileall.compile_dir(directory, quiet=1)
    with tempfile.TemporaryDirectory(prefix="his-startup-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = pg.start()
        try:
            upgrade(args.service, url)
            env = dict(
                os.environ,
                **local_secrets(Path(tmp)).env(args.service),
                HIS_DATA_DIR=tmp,
                HIS_DATABASE_URL=url,
                HIS_PORT=str(port),
                HIS_METRICS_PORT="-1",
                HIS_IAM_HTTP_PORT="0",  # iam's key documents: any free port, beside `his up`
                HIS_LOG_LEVEL="WARNING",
            )
            time_to_serving(env, args.service, port)  # warm the file cache
            time_to_echo(env, port + 1)
            starts: list[Start] = []
            unmigrated: list[Start] = []
            echoes: list[Start] = []
            for _ in range(args.runs):
                echoes.append(time_to_echo(env, port + 1))
                starts.append(time_to_serving(env, args.service, port))
                unmigrated.append(time_to_serving(dict(env, HIS_MIGRATE="0"), args.service, port))
            log = Path(tmp) / "importtime.txt"
            time_to_serving(
                dict(env, BENCH_STDERR=str(log)), args.service, port, "-X", "importtime"
            )
            imports = import_profile(log.read_text())
        finally:
            pg.stop()
    times = [start.wall for start in starts]
    print(
        f"his serve {args.service}: SERVING after {statistics.median(times):.2f} s "
        f"(median of {args.runs}; min {min(times):.2f}, max {max(times):.2f}); bare grpc.aio echo "
        f"server answering after {_median(echoes, 'wall'):.2f} s; "
        f"ratio {_ratio(starts, echoes, 'wall'):.1f}"
    )
    print(
        f"  CPU used by then: {_median(starts, 'cpu'):.2f} s (median); "
        f"echo {_median(echoes, 'cpu'):.2f} s; ratio {_ratio(starts, echoes, 'cpu'):.1f}"
    )
    print(
        f"  with HIS_MIGRATE=0 (no schema check, no alembic): {_median(unmigrated, 'wall'):.2f} s"
        f"; ratio to echo {_ratio(unmigrated, echoes, 'wall'):.1f}"
    )
    total = imports.total
    print(f"imports: {total / 1e6:.2f} s under -X importtime (self times added up), by package:")
    for package, micros in imports.by_package.most_common(args.top):
        print(f"  {micros / 1000:8.1f} ms  {100 * micros / total:5.1f} %  {package}")
    print("what our modules pull in (cumulative, first importer):")
    for micros, module, importer in imports.pulled_in[: args.top]:
        print(f"  {micros / 1000:8.1f} ms  {module:<40} <- {importer}")


if __name__ == "__main__":
    main()
