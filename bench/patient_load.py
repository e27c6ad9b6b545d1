"""Load benchmark of the patient service: latency percentiles and throughput per rpc.

Starts its own embedded PostgreSQL and a real `his serve patient` process, seeds patients, then
drives a fixed number of calls per rpc at a fixed concurrency from this process. Run: `make bench`.
Figures depend on the machine; this measures one server process (the unit that scales out by pods).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING, wait_for_status
from his.runtime.migrations import upgrade

FAMILIES = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou")


def _patient(i: int) -> pb.Patient:
    return pb.Patient(
        family_name=f"{FAMILIES[i % len(FAMILIES)]}{i // 100}",
        given_names=[f"Given{i}"],
        gender=pb.ADMINISTRATIVE_GENDER_UNKNOWN,
        birth_date=types_pb2.Date(year=1950 + i % 60, month=1 + i % 12, day=1 + i % 28),
        national_id=types_pb2.Identifier(system="urn:bench", value=f"B{i:09d}"),
        phone=f"+86139{i:08d}",
    )


async def _drive(
    name: str, calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]
) -> None:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(calls))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            try:
                await call(i)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100)
    print(
        f"{name:<16} {calls:>7} {concurrency:>5} {calls / elapsed:>9.0f} "
        f"{q[49]:>8.2f} {q[94]:>8.2f} {q[98]:>8.2f} {ms[-1]:>8.2f} {errors:>6}"
    )


async def _bench(address: str, calls: int, concurrency: int, seed: int) -> None:
    await wait_for_status(address, "his.patient.v1.PatientService", SERVING)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.PatientServiceStub(channel)
        names: list[str] = []

        async def create(i: int) -> None:
            created = await stub.CreatePatient(
                pb.CreatePatientRequest(patient=_patient(i), request_id=f"bench-{i}"), timeout=10
            )
            names.append(created.name)

        print(
            f"{'rpc':<16} {'calls':>7} {'conc':>5} {'calls/s':>9} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}"
        )
        await _drive("CreatePatient", seed, concurrency, create)
        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)
        await _drive(
            "GetPatient",
            calls,
            concurrency,
            lambda i: stub.GetPatient(pb.GetPatientRequest(name=rng.choice(names)), timeout=10),
        )
        await _drive(
            "ListPatients",
            calls // 2,
            concurrency,
            lambda i: stub.ListPatients(
                pb.ListPatientsRequest(name_prefix=FAMILIES[i % len(FAMILIES)], page_size=20),
                timeout=10,
            ),
        )
        await _drive(
            "CreatePatient/rid",
            calls // 2,
            concurrency,  # replays: the dedup path
            lambda i: stub.CreatePatient(
                pb.CreatePatientRequest(patient=_patient(i % seed), request_id=f"bench-{i % seed}"),
                timeout=10,
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2000, help="patients registered first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="his-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = pg.start()
        upgrade("patient", url)
        port = 50151
        env = dict(
            os.environ,
            HIS_DATABASE_URL=url,
            HIS_PORT=str(port),
            HIS_METRICS_PORT="-1",
            HIS_MIGRATE="0",
            HIS_LOG_LEVEL="WARNING",
        )
        server = subprocess.Popen([sys.executable, "-m", "his.cli", "serve", "patient"], env=env)
        try:
            asyncio.run(_bench(f"localhost:{port}", args.calls, args.concurrency, args.seed))
        finally:
            server.terminate()
            server.wait(timeout=30)
            pg.stop()


if __name__ == "__main__":
    main()
