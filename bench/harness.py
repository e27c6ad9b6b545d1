"""What the load benchmarks share: a private PostgreSQL, real service processes (with iam and
audit, as in production: every call authenticated, authorized, audited), a bare echo server
(bench/echo.py) as the yardstick, staff tokens, and one way to drive and report load.

Every figure is also printed as a ratio to the echo server measured with the same client in the
same run, alternating (echo, service, echo, service ...): the development machine is shared and
its absolute figures move by tens of percent from minute to minute, the ratios much less.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from bench import echo
from his.base.catalog import CATALOG, lookup
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.local_secrets import LocalSecrets, local_secrets
from his.login import enrol, issue_token
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING, wait_for_status
from his.runtime.migrations import upgrade
from his_client import HisClients, static_token
from his_client.config import ClientConfig
from his_client.credentials import IdentityInterceptor

# Ports away from the local `his up` table, so a running hospital does not disturb a benchmark.
# HIS_BENCH_PORT_OFFSET moves a whole benchmark (services and echo) to another block, so that
# engineers sharing one machine can run benchmarks at the same time (e.g. 500, 600, 700).
PORT_OFFSET = int(os.environ.get("HIS_BENCH_PORT_OFFSET", "100"))
# Credentials a shell may hold; each service gets only its own share (Hospital.serve).
_SECRETS = frozenset(
    {"HIS_SERVICE_CREDENTIAL", "HIS_SERVICE_CREDENTIAL_KEY", "HIS_IAM_DEV_CREDENTIAL"}
)


def echo_ports() -> tuple[int, int]:
    """The echo server's gRPC and /metrics ports: the last of the block, below the +200 block
    security_cost uses for its second patient (50199 and 9199 at the default offset)."""
    return 50099 + PORT_OFFSET, 9099 + PORT_OFFSET


Call = Callable[[int], Awaitable[object]]


def address(service: str) -> str:
    """Where the benchmark runs `service`."""
    return f"localhost:{lookup(service).port + PORT_OFFSET}"


def metrics_url(service: str) -> str:
    """The /metrics of the benchmark's `service` process ("echo": the echo server's)."""
    port = echo_ports()[1] if service == "echo" else lookup(service).metrics_port + PORT_OFFSET
    return f"http://localhost:{port}/metrics"


@dataclass
class Hospital:
    """The benchmark's running services: their shared settings, and a way to start more."""

    env: dict[str, str]
    data_dir: Path
    # Each service is started with its own credential only (iam alone holds their key).
    secrets: LocalSecrets
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Process ids by service name (the first process of each name), for the profiler.
    pids: dict[str, int] = field(default_factory=dict)
    echo: str = field(default_factory=lambda: f"localhost:{echo_ports()[0]}")
    # The embedded PostgreSQL's postmaster: its backends are the database's share of a call.
    postgres_pid: int | None = None

    def serve(self, name: str, port: int, **settings: str) -> str:
        """Start one more `his serve <name>` on `port` (e.g. a second, differently configured
        patient service on the same database); returns its address once SERVING."""
        env = dict(self.env, HIS_PORT=str(port), **self.secrets.env(name), **settings)
        command = [sys.executable, "-m", "his.cli", "serve", name]
        process = subprocess.Popen(command, env=env)  # noqa: S603
        self.processes.append(process)
        self.pids.setdefault(name, process.pid)
        where = f"localhost:{port}"
        asyncio.run(wait_for_status(where, lookup(name).grpc_service, SERVING, timeout_s=60))
        return where

    def serve_echo(self) -> None:
        """Start the echo server (bench/echo.py) in its own process; returns once it answers."""
        port, metrics_port = echo_ports()
        command = [sys.executable, "-m", "bench.echo", "--port", str(port)]
        command += ["--metrics-port", str(metrics_port)]
        process = subprocess.Popen(command, env=self.env)  # noqa: S603
        self.processes.append(process)
        self.pids["echo"] = process.pid
        self.echo = f"localhost:{port}"  # PORT_OFFSET as a benchmark may have moved it
        asyncio.run(_wait_for_echo(self.echo))


async def _wait_for_echo(where: str, timeout_s: float = 30.0) -> None:
    async with grpc.aio.insecure_channel(where) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)


@contextlib.contextmanager
def services(*names: str) -> Iterator[Hospital]:
    """A fresh embedded PostgreSQL, iam and audit, one `his serve` process per named service
    (each with /metrics on its catalog metrics port + PORT_OFFSET), and the echo server."""
    wanted = list(dict.fromkeys(("iam", "audit", *names)))
    with tempfile.TemporaryDirectory(prefix="his-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = pg.start()
        inherited = {k: v for k, v in os.environ.items() if k not in _SECRETS}
        hospital = Hospital(
            env=dict(
                inherited,
                HIS_DATA_DIR=tmp,
                HIS_DATABASE_URL=url,
                HIS_MIGRATE="0",
                # No /metrics unless asked for (services() asks, on ports away from `his up`'s).
                HIS_METRICS_PORT="-1",
                # Nor iam's key documents over HTTP (its fixed local port is `his up`'s).
                HIS_IAM_HTTP_PORT="-1",
                HIS_LOG_LEVEL=os.environ.get("HIS_LOG_LEVEL", "WARNING"),
                **{f"HIS_{entry.name.upper()}_ADDR": address(entry.name) for entry in CATALOG},
            ),
            data_dir=Path(tmp),
            secrets=local_secrets(Path(tmp)),
            postgres_pid=pg.pid(),
        )
        try:
            for name in wanted:
                upgrade(name, url)
            for name in wanted:
                entry = lookup(name)
                hospital.serve(
                    name,
                    entry.port + PORT_OFFSET,
                    HIS_METRICS_PORT=str(entry.metrics_port + PORT_OFFSET),
                )
            hospital.serve_echo()
            yield hospital
        finally:
            for process in hospital.processes:
                process.terminate()
            for process in hospital.processes:
                process.wait(timeout=30)
            pg.stop()


def cpu_seconds(hospital: Hospital) -> dict[str, float]:
    """CPU used so far (user + system, all threads) by each service process, the echo server,
    and PostgreSQL (the postmaster and the backends alive now; pooled connections live through a
    run, so a delta over a run is the database's share of its calls)."""
    used: dict[str, float] = {}
    for name, pid in hospital.pids.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            used[name] = times.user + times.system
    if hospital.postgres_pid is not None:
        postmaster = psutil.Process(hospital.postgres_pid)
        total = 0.0
        for process in [postmaster, *postmaster.children()]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        used["postgres"] = total
    return used


def cpu_line(label: str, per_call: dict[str, float]) -> str:
    """`label: total µs = patient .. + postgres .. + ...`, the largest first, the idle left out."""
    shown = sorted(((us, name) for name, us in per_call.items() if us >= 1), reverse=True)
    parts = " + ".join(f"{name} {us:.0f}" for us, name in shown)
    return f"  CPU per call, {label}: {sum(per_call.values()):.0f} µs = {parts}"


# The bench's second administrator: in a fresh hospital, the first ADMINISTRATOR given by the
# bootstrap administrator takes effect at once (iam's setup window, his.iam.approvals); it then
# approves the roles and memberships `admin` gives the bench's staff (the two-person rule).
APPROVER = "bench.approver"


async def approve(hospital: Hospital, *changes: str) -> None:
    """Approve iam access changes (empty names are skipped) as the bench's second
    administrator, made once by the bootstrap administrator."""
    pending = [change for change in changes if change]
    if not pending:
        return
    config = ClientConfig.from_env(hospital.env)
    admin = await issue_token("admin", data_dir=hospital.data_dir, config=config)
    async with HisClients(config, token=static_token(admin)) as his:
        approver_member = await his.iam.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(
                staff_member=iam_pb.StaffMember(
                    username=APPROVER,
                    display_name="Bench approver",
                    roles=[iam_pb.STAFF_ROLE_ADMINISTRATOR],
                ),
                request_id="bench-approver",
            ),
            timeout=10,
        )
        # Their own development password and TOTP secret, kept for issue_token (once: a replay
        # of the create returns the same member, whose enrolment is already kept).
        with contextlib.suppress(grpc.aio.AioRpcError):
            await enrol(his, approver_member.name, APPROVER, data_dir=hospital.data_dir)
    approver = await issue_token(APPROVER, data_dir=hospital.data_dir, config=config)
    async with HisClients(config, token=static_token(approver)) as his:
        for change in pending:
            await his.iam.ApproveAccessChange(
                iam_pb.ApproveAccessChangeRequest(name=change), timeout=10
            )


async def staff_token(hospital: Hospital, username: str, *roles: str) -> str:
    """A token for a staff member created (once) by the bootstrap administrator, their roles
    approved by the bench's second administrator."""
    config = ClientConfig.from_env(hospital.env)

    async def login(user: str) -> str:
        return await issue_token(user, data_dir=hospital.data_dir, config=config)

    admin = await login("admin")
    async with HisClients(config, token=static_token(admin)) as his:
        member = await his.iam.CreateStaffMember(
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
        # Their own development password and TOTP secret, kept for issue_token.
        await enrol(his, member.name, username, data_dir=hospital.data_dir)
    await approve(hospital, member.pending_access_change)
    return await login(username)


def channel(where: str, token: str | None) -> grpc.aio.Channel:
    """A channel to `where` whose calls carry `token` (None: no credentials at all)."""
    interceptors = [IdentityInterceptor(static_token(token))] if token else []
    return grpc.aio.insecure_channel(where, interceptors=interceptors)


def echo_call(echo_channel: grpc.aio.Channel, message: Message) -> Call:
    """Calls of the echo server that send `message` and parse the answer as its type, as a stub
    would (open `echo_channel` like the service's, with the same token, so the client does the
    same work for both)."""
    method = echo_channel.unary_unary(
        echo.PATH,
        request_serializer=type(message).SerializeToString,
        response_deserializer=type(message).FromString,
    )

    async def call(i: int) -> object:
        return await method(message, timeout=10)

    return call


def percentile(sorted_values: list[float], p: float) -> float:
    """The p-th percentile (0..100) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Run:
    """One measured run: how many calls, how fast, how they ended."""

    name: str
    calls: int
    concurrency: int
    elapsed_s: float
    # Sorted, in milliseconds.
    latencies_ms: list[float]
    codes: dict[str, int]

    @property
    def rate(self) -> float:
        """Calls per second."""
        return self.calls / self.elapsed_s

    def p(self, q: float) -> float:
        """The q-th latency percentile in ms."""
        return percentile(self.latencies_ms, q)


HEADER = (
    f"{'rpc':<28} {'calls':>6} {'conc':>5} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'max ms':>8} | {'/echo:':<6} {'calls/s':>7} {'p50':>6} {'p99':>6}  codes"
)


@dataclass(frozen=True)
class Ratio:
    """A run against the echo run next to it: throughput ratio (below 1: slower than echo) and
    latency ratios (above 1: slower than echo)."""

    rate: float
    p50: float
    p99: float

    @classmethod
    def of(cls, run: Run, echo_run: Run) -> Ratio:
        return cls(run.rate / echo_run.rate, run.p(50) / echo_run.p(50), run.p(99) / echo_run.p(99))


@dataclass(frozen=True)
class Comparison:
    """A target's run, the echo run just before it, and their ratios."""

    run: Run
    echo: Run
    ratio: Ratio


def report(run: Run, against: Run | None = None) -> Ratio | None:
    """Print one line for `run`, with its ratios to the echo run `against` when given."""
    ratio = Ratio.of(run, against) if against is not None else None
    ratios = (
        f"{'':<6} {ratio.rate:>7.3f} {ratio.p50:>6.1f} {ratio.p99:>6.1f}"
        if ratio is not None
        else f"{'':<6} {'':>7} {'':>6} {'':>6}"
    )
    codes = " ".join(f"{k}={v}" for k, v in sorted(run.codes.items()))
    print(
        f"{run.name:<28} {run.calls:>6} {run.concurrency:>5} {run.rate:>8.0f} "
        f"{run.p(50):>8.2f} {run.p(99):>8.2f} {run.latencies_ms[-1]:>8.2f} | {ratios}  {codes}",
        flush=True,
    )
    return ratio


async def drive(
    name: str, calls: int, concurrency: int, call: Call, *, offset: int = 0, quiet: bool = False
) -> Run:
    """Run `calls` calls (`call(offset)` .. `call(offset + calls - 1)`), `concurrency` in flight;
    print a line (unless `quiet`) and return the run."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    counter = iter(range(offset, offset + calls))

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
    run = Run(name, calls, concurrency, elapsed, sorted(x * 1000 for x in latencies), codes)
    if not quiet:
        report(run)
    return run


async def compare(
    targets: Mapping[str, Call],
    calls: int,
    concurrency: int,
    echo: Call,
    *,
    rounds: int = 2,
    offset: int = 0,
    warm_up: int = 0,
) -> dict[str, list[Comparison]]:
    """The one way to measure: `rounds` times, the echo server then each target, `calls` calls
    per run at `concurrency`, each target's line with its ratios to the echo run just before.

    First the echo server and (if `warm_up`) each target get `warm_up` unmeasured calls. A
    target's call index goes on from `offset` through the warm-up and the rounds, so calls that
    create things never repeat: indices up to `offset + warm_up + rounds * calls` are used. With
    several rounds, the median ratios follow. Returns every round's comparison by target.
    """
    seen: dict[str, list[Comparison]] = {name: [] for name in targets}
    warm = warm_up or max(concurrency, min(calls // 10, 200))
    await drive("echo (warm-up)", warm, concurrency, echo, quiet=True)
    if warm_up:
        for name, call in targets.items():
            await drive(name, warm_up, concurrency, call, offset=offset, quiet=True)
        offset += warm_up
    for r in range(rounds):
        echo_run = await drive("echo", calls, concurrency, echo)
        for name, call in targets.items():
            run = await drive(name, calls, concurrency, call, offset=offset + r * calls, quiet=True)
            ratio = report(run, echo_run)
            assert ratio is not None
            seen[name].append(Comparison(run, echo_run, ratio))
    if rounds > 1:
        for name, comparisons in seen.items():
            ratios = [c.ratio for c in comparisons]
            print(
                f"{name + ' (median)':<28} {'':>6} {concurrency:>5} {'':>8} {'':>8} {'':>8} "
                f"{'':>8} | {'':<6} {statistics.median(r.rate for r in ratios):>7.3f} "
                f"{statistics.median(r.p50 for r in ratios):>6.1f} "
                f"{statistics.median(r.p99 for r in ratios):>6.1f}",
                flush=True,
            )
    return seen


def handled_ok(url: str, service: str, method: str) -> int:
    """grpc_server_handled_total{grpc_code="OK"} of one method, read from a /metrics endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (our own localhost)
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handled":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "grpc_server_handled_total"
                and labels.get("grpc_service") == service
                and labels.get("grpc_method") == method
                and labels.get("grpc_code") == "OK"
            ):
                total += sample.value
    return int(total)


async def service_token(hospital: Hospital, name: str) -> str:
    """A HIS service's own token, as its relay logs in (to deliver events as that service)."""
    async with channel(address("iam"), None) as iam_channel:
        reply = await iam_grpc.IamServiceStub(iam_channel).IssueToken(
            iam_pb.IssueTokenRequest(
                username=f"service:{name}", credential=hospital.secrets.service_credential(name)
            ),
            timeout=10,
        )
    return str(reply.access_token)
