"""GetPatient driven by h2load, a load generator that is not Python, against the echo server.

The client is C (nghttp2's h2load: `apt-get install nghttp2-client`), so what is measured is the
server. Each request is a gRPC-framed body (a 5-byte prefix, then a serialized GetPatientRequest)
POSTed with `content-type: application/grpc`, `te: trailers` and a real bearer token of the
benchmark hospital: the call is authenticated, authorized and audited as in production. The echo
server (bench/echo.py) gets the same bytes with the same h2load settings in the same run,
alternating, and every figure is also printed as a ratio to the echo run before it.

h2load sees HTTP 200 even for a gRPC error (the status rides in the trailers), so besides h2load's
own counts every run is checked against the server's `grpc_server_handled_total{grpc_code="OK"}`
from its /metrics, read before and after: the run fails unless every request h2load counted as
done was an OK call. Run: `make bench` or `python -m bench.grpc_h2load`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench import echo
from bench.harness import (
    HEADER,
    Hospital,
    Run,
    address,
    channel,
    cpu_line,
    cpu_seconds,
    handled_ok,
    metrics_url,
    report,
    services,
    staff_token,
)
from bench.patient_load import patient
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc

PATIENT_SERVICE = "his.patient.v1.PatientService"
GET_PATIENT = "GetPatient"


def grpc_frame(payload: bytes) -> bytes:
    """One length-prefixed gRPC message: not compressed (0), then the length, big-endian."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@dataclass(frozen=True)
class Target:
    """Where h2load sends its requests and how the server's OK count is read."""

    name: str
    url: str
    metrics: str
    service: str
    method: str


@dataclass(frozen=True)
class Load:
    """One h2load setting: connections x streams per connection, and the number of calls."""

    label: str
    connections: int
    streams: int
    calls: int

    @property
    def concurrency(self) -> int:
        return self.connections * self.streams


def h2load(target: Target, load: Load, body: Path, token: str, work: Path) -> Run:
    """One h2load run against `target`; its latencies from h2load's per-request log, its codes
    from h2load's counts and the server's OK counter (raises when they disagree)."""
    log = work / "requests.tsv"
    log.unlink(missing_ok=True)
    before = handled_ok(target.metrics, target.service, target.method)
    command = [
        "h2load",
        f"--requests={load.calls}",
        f"--clients={load.connections}",
        f"--max-concurrent-streams={load.streams}",
        "--threads=1",
        f"--data={body}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--header=authorization: Bearer {token}",
        f"--log-file={log}",
        target.url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # noqa: S603
    ok = handled_ok(target.metrics, target.service, target.method) - before
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    finished = re.search(r"finished in ([\d.]+)(ms|s),", out)
    if counts is None or statuses is None or finished is None:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    _, _, done, succeeded, failed, errored, timeout = (int(x) for x in counts.groups())
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    codes = {"OK": ok}
    if succeeded - ok:
        codes["gRPC-not-OK"] = succeeded - ok
    for what, n in (("h2-failed", failed), ("h2-errored", errored), ("h2-timeout", timeout)):
        if n:
            codes[what] = n
    if int(statuses.group(1)) != load.calls or ok != load.calls or done != load.calls:
        raise RuntimeError(
            f"{target.name}: {load.calls} requests, {done} done, {statuses.group(1)} HTTP 2xx, "
            f"but {ok} gRPC OK on the server; h2load said:\n{out}"
        )
    latencies = sorted(
        int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line.strip()
    )
    return Run(target.name, done, load.concurrency, elapsed, latencies, codes)


def _h2load_cpu() -> float:
    """CPU used so far by this process's finished children: the h2load runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(
    hospital: Hospital, target: Target, load: Load, *, body: Path, token: str, work: Path
) -> tuple[Run, dict[str, float]]:
    """One h2load run and the CPU each process spent on it, in microseconds per call."""
    before, client_before = cpu_seconds(hospital), _h2load_cpu()
    run = h2load(target, load, body, token, work)
    after, client_after = cpu_seconds(hospital), _h2load_cpu()
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    used["h2load"] = client_after - client_before
    return run, {name: seconds / run.calls * 1e6 for name, seconds in used.items()}


async def _prepare(hospital: Hospital, patients: int) -> tuple[str, str]:
    """A registrar's token and the name of one of `patients` registered patients."""
    token = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    async with channel(address("patient"), token) as patient_channel:
        stub = pb_grpc.PatientServiceStub(patient_channel)
        names = [
            (await stub.CreatePatient(pb.CreatePatientRequest(patient=patient(i)))).name
            for i in range(patients)
        ]
    return token, names[len(names) // 2]


def compare_h2load(
    hospital: Hospital, token: str, name: str, loads: list[Load], rounds: int
) -> dict[str, list[float]]:
    """Echo, GetPatient, echo, GetPatient ... for each load; returns the throughput ratios."""
    body_bytes = grpc_frame(pb.GetPatientRequest(name=name).SerializeToString())
    patient_target = Target(
        "GetPatient (h2load)",
        f"http://{address('patient')}/{PATIENT_SERVICE}/{GET_PATIENT}",
        metrics_url("patient"),
        PATIENT_SERVICE,
        GET_PATIENT,
    )
    echo_target = Target(
        "echo (h2load)",
        f"http://{hospital.echo}{echo.PATH}",
        metrics_url("echo"),
        echo.SERVICE,
        echo.METHOD,
    )
    ratios: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="his-h2load-") as tmp:
        work = Path(tmp)
        body = work / "body.bin"
        body.write_bytes(body_bytes)
        warm = Load("warm-up", 4, 16, 500)
        h2load(echo_target, warm, body, token, work)
        h2load(patient_target, warm, body, token, work)
        for load in loads:
            print(f"-- h2load {load.connections} connections x {load.streams} streams")
            print(HEADER)
            for _ in range(rounds):
                echo_run, echo_cpu = measured(
                    hospital, echo_target, load, body=body, token=token, work=work
                )
                report(echo_run)
                run, run_cpu = measured(
                    hospital, patient_target, load, body=body, token=token, work=work
                )
                ratio = report(run, echo_run)
                assert ratio is not None
                ratios.setdefault(load.label, []).append(ratio.rate)
                print(cpu_line("echo", echo_cpu))
                print(cpu_line("GetPatient", run_cpu))
                totals = (sum(run_cpu.values()), sum(echo_cpu.values()))
                cpu.setdefault(load.label, []).append(totals)
            print(
                f"GetPatient/echo throughput at {load.label}: "
                f"median {statistics.median(ratios[load.label]):.3f} over {rounds} rounds"
            )
            # Both runs keep the 2 cores busy at 4x16, so the throughput ratio can be no better
            # than the inverse ratio of all the CPU a call costs, in every process it touches.
            ours = statistics.median(total for total, _ in cpu[load.label])
            theirs = statistics.median(echo for _, echo in cpu[load.label])
            print(
                f"CPU per call at {load.label} (all processes): GetPatient {ours:.0f} µs, "
                f"echo {theirs:.0f} µs; echo/GetPatient {theirs / ours:.3f}"
            )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls-c1", type=int, default=500, help="calls per run at 1 x 1")
    parser.add_argument("--calls", type=int, default=4000, help="calls per run at 4 x 16")
    parser.add_argument("--rounds", type=int, default=2, help="echo/GetPatient alternations")
    parser.add_argument("--patients", type=int, default=20, help="patients registered first")
    parser.add_argument(
        "--flush-share",
        action="store_true",
        help="then once more at c=1 with PostgreSQL not waiting for the WAL flush (diagnostic: "
        "shows how much of a call's latency is the disk's; the product never runs so)",
    )
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is needed: apt-get install -y nghttp2-client")
    loads = [Load("c=1", 1, 1, args.calls_c1), Load("4x16", 4, 16, args.calls)]
    with services("patient") as hospital:
        token, name = asyncio.run(_prepare(hospital, args.patients))
        compare_h2load(hospital, token, name, loads, args.rounds)
        if args.flush_share:
            asyncio.run(_synchronous_commit(hospital, "off"))
            print("-- diagnostic: synchronous_commit = off (a read's audit event is NOT durable)")
            compare_h2load(hospital, token, name, loads[:1], args.rounds)
            asyncio.run(_synchronous_commit(hospital, "on"))


async def _synchronous_commit(hospital: Hospital, value: str) -> None:
    """Set the server-wide default of synchronous_commit; reloading applies it to open sessions
    that have not set it themselves."""
    connection = await asyncpg.connect(hospital.env["HIS_DATABASE_URL"])
    try:
        await connection.execute(f"ALTER SYSTEM SET synchronous_commit = {value}")
        await connection.execute("SELECT pg_reload_conf()")
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
