"""What a full VerifyChain costs the hospital: GetPatient latency without and with full passes.

Starts a real hospital (iam, audit, patient `his serve` processes, embedded PostgreSQL), fills
the audit trail with `--events` hash-chained events through the audit service's own group-commit
writer (straight to the database: WriteAuditEvents over the wire would take too long to fill),
then drives GetPatient as a registrar, first alone and then while `--verifiers` auditors run full
VerifyChains back to back; prints both latency lines, the p99 ratio (target: at most 1.5), and the
verification's throughput. Last, an incremental check after a few new events.

With anchoring (ADR 0006) the trail is sealed by a signed checkpoint every `--checkpoint-every`
events while it is filled (CreateChainCheckpoint), so every pass also checks the events against
the checkpoints; a third phase drives GetPatient while the auditors run routine incremental
VerifyChains back to back (each one verifies the newest checkpoints' signatures and the events
they name).
Run: `python -m bench.verify_cost` (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from bench import harness
from bench.harness import (
    HEADER,
    Hospital,
    Run,
    address,
    channel,
    drive,
    services,
    staff_token,
)
from bench.patient_load import patient
from his.audit.v1 import audit_service_pb2 as audit_pb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.audit.writer import GroupCommitWriter
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.config import DatabaseConfig
from his.runtime.database import Database
from tests.audit.helpers import make_event

FILL_BATCH = 5000


async def _fill(
    hospital: Hospital,
    count: int,
    auditor: audit_grpc.AuditServiceAsyncStub,
    checkpoint_every: int,
) -> None:
    """Append `count` events as the audit service would (numbered, hash-chained, head moved),
    sealing the chain with a checkpoint every `checkpoint_every` events."""
    database = Database(
        hospital.env["HIS_DATABASE_URL"],
        DatabaseConfig.from_env(hospital.env),
        application_name="his-bench-fill",
    )
    writer = GroupCommitWriter(database)
    started = time.perf_counter()
    checkpoints = 0
    try:
        for done in range(0, count, FILL_BATCH):
            batch = [make_event() for _ in range(min(FILL_BATCH, count - done))]
            await writer.write(batch, writer="patient", service_account="bench")
            if checkpoint_every and (done + len(batch)) % checkpoint_every < FILL_BATCH:
                await auditor.CreateChainCheckpoint(
                    audit_pb.CreateChainCheckpointRequest(), timeout=600
                )
                checkpoints += 1
    finally:
        await database.dispose()
    print(
        f"filled {count} events in {time.perf_counter() - started:.0f} s"
        f" ({checkpoints} signed checkpoints)",
        flush=True,
    )


async def _verify_forever(
    auditor: audit_grpc.AuditServiceAsyncStub,
    stop: asyncio.Event,
    passes: list[tuple[int, float]],
    *,
    incremental: bool = False,
) -> None:
    request = audit_pb.VerifyChainRequest(incremental=incremental)
    while not stop.is_set():
        started = time.perf_counter()
        reply = await auditor.VerifyChain(request, timeout=600)
        assert reply.intact, reply
        passes.append((reply.end_sequence_number, time.perf_counter() - started))
        if incremental:
            await asyncio.sleep(0.05)  # routine checks, not a spin on an idle chain


async def _bench(hospital: Hospital, args: argparse.Namespace) -> None:
    registrar = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    auditor_token = await staff_token(hospital, "bench.auditor", "AUDITOR")
    async with (
        channel(address("patient"), registrar) as patient_channel,
        channel(address("audit"), auditor_token) as audit_channel,
    ):
        stub = pb_grpc.PatientServiceStub(patient_channel)
        auditor = audit_grpc.AuditServiceStub(audit_channel)
        await _fill(hospital, args.events, auditor, args.checkpoint_every)
        names = [
            (await stub.CreatePatient(pb.CreatePatientRequest(patient=patient(i)))).name
            for i in range(args.seed)
        ]
        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)

        async def get(_: int) -> object:
            return await stub.GetPatient(pb.GetPatientRequest(name=rng.choice(names)), timeout=30)

        async def measure(label: str) -> Run:
            return await drive(label, args.calls, args.concurrency, get)

        print(HEADER)
        await drive("warm-up", args.calls // 5, args.concurrency, get)
        alone: list[Run] = []
        loaded: list[Run] = []
        routine: list[Run] = []
        passes: list[tuple[int, float]] = []
        increments: list[tuple[int, float]] = []
        for _ in range(args.rounds):
            alone.append(await measure("GetPatient alone"))
            stop = asyncio.Event()
            verifiers = [
                asyncio.create_task(_verify_forever(auditor, stop, passes))
                for _ in range(args.verifiers)
            ]
            await asyncio.sleep(1)  # the passes are under way
            loaded.append(await measure(f"GetPatient +{args.verifiers} full"))
            stop.set()
            await asyncio.gather(*verifiers)
            stop = asyncio.Event()
            verifiers = [
                asyncio.create_task(_verify_forever(auditor, stop, increments, incremental=True))
                for _ in range(args.verifiers)
            ]
            routine.append(await measure(f"GetPatient +{args.verifiers} incr"))
            stop.set()
            await asyncio.gather(*verifiers)
        print()
        for label, runs in (("full", loaded), ("incremental", routine)):
            for without, with_ in zip(alone, runs, strict=True):
                print(
                    f"{label}: p50 {without.p(50):.1f} -> {with_.p(50):.1f} ms, "
                    f"p99 {without.p(99):.1f} -> {with_.p(99):.1f} ms (ratio "
                    f"{with_.p(99) / without.p(99):.2f}), calls/s {without.rate:.0f} -> "
                    f"{with_.rate:.0f}"
                )
        if increments:
            times = sorted(t for _, t in increments)
            print(
                f"{len(increments)} incremental VerifyChain answers while GetPatient ran;"
                f" p50 {times[len(times) // 2] * 1000:.0f} ms,"
                f" max {times[-1] * 1000:.0f} ms"
            )
        events = sum(end for end, _ in passes)
        seconds = sum(took for _, took in passes)
        print(
            f"{len(passes)} full VerifyChain answers over {passes[-1][0]} events; "
            f"{events / seconds:.0f} events/s per caller while GetPatient ran"
        )
        started = time.perf_counter()
        alone_pass = await auditor.VerifyChain(audit_pb.VerifyChainRequest(), timeout=600)
        took = time.perf_counter() - started
        print(
            f"full pass alone: {alone_pass.end_sequence_number} events in {took:.1f} s "
            f"({alone_pass.end_sequence_number / took:.0f} events/s)"
        )
        if args.incremental:
            for i in range(20):
                await get(i)
            started = time.perf_counter()
            reply = await auditor.VerifyChain(audit_pb.VerifyChainRequest(incremental=True))
            print(
                f"incremental: events {reply.start_sequence_number}..{reply.end_sequence_number}"
                f" intact={reply.intact} in {(time.perf_counter() - started) * 1000:.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events in the trail")
    parser.add_argument("--calls", type=int, default=1500, help="GetPatient calls per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--verifiers", type=int, default=4, help="auditors verifying at once")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=100, help="patients registered first")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=20_000,
        help="events between signed checkpoints while filling (0: none)",
    )
    parser.add_argument(
        "--no-incremental", dest="incremental", action="store_false", help="(code before it)"
    )
    parser.add_argument(
        "--port-offset",
        type=int,
        default=harness.PORT_OFFSET,
        help="ports above the local table (another offset when another benchmark runs)",
    )
    args = parser.parse_args()
    harness.PORT_OFFSET = args.port_offset
    with services("patient") as hospital:
        asyncio.run(_bench(hospital, args))


if __name__ == "__main__":
    main()
