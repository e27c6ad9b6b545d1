"""The audit service paused (SIGSTOP) under load: care goes on, and the trail misses nothing.

Starts the benchmark hospital (real `his serve` processes, iam, audit, patient), registers
patients, then for `--pause` seconds keeps reading and updating them while the audit process is
stopped with SIGSTOP; resumes it and waits for the patient service's outbox to drain. Prints
the calls and their status codes during the pause, how long the delivery took after the resume,
whether every event of the window is in the chain exactly once, VerifyChain, and the delay
between an event's commit at the source and its place in the chain (record_time - event_time)
for the events delivered while the audit service was up.

Run: `python -m bench.audit_outage --pause 30` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import time
from collections import Counter

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from bench.harness import Hospital, address, channel, services, staff_token
from bench.patient_load import patient
from his.audit.v1 import audit_service_pb2 as apb
from his.audit.v1 import audit_service_pb2_grpc as audit_grpc
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc


async def _trail(auditor: audit_grpc.AuditServiceAsyncStub) -> list[apb.AuditEvent]:
    found: list[apb.AuditEvent] = []
    request = apb.ListAuditEventsRequest(page_size=500)
    while True:
        reply = await auditor.ListAuditEvents(request, timeout=30)
        found.extend(reply.audit_events)
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


def _delays_ms(events: list[apb.AuditEvent]) -> list[float]:
    return [(e.record_time.ToMicroseconds() - e.event_time.ToMicroseconds()) / 1000 for e in events]


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(values):.1f} ms"


async def _load(
    stub: pb_grpc.PatientServiceAsyncStub, names: list[str], seconds: float, codes: Counter[str]
) -> None:
    """Reads, and every fifth time a phone update, from 8 workers for `seconds`; each call's
    status is counted by rpc in `codes` (`GetPatient OK`, ...)."""
    end = time.monotonic() + seconds

    async def call(rpc: str, request: object) -> object | None:
        try:
            reply: object = await getattr(stub, rpc)(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            codes[f"{rpc} {error.code().name}"] += 1
            return None
        codes[f"{rpc} OK"] += 1
        return reply

    async def worker(index: int) -> None:
        step = 0
        while time.monotonic() < end:
            name = names[(index + step) % len(names)]
            step += 1
            current = await call("GetPatient", pb.GetPatientRequest(name=name))
            if step % 5 == 0 and isinstance(current, pb.Patient):
                await call(
                    "UpdatePatient",
                    pb.UpdatePatientRequest(
                        patient=pb.Patient(name=name, phone=f"+86139{step:08d}", etag=current.etag),
                        update_mask=FieldMask(paths=["phone"]),
                    ),
                )

    await asyncio.gather(*(worker(i) for i in range(8)))


async def _run(hospital: Hospital, pause_s: float, patients: int) -> None:
    registrar = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    auditor_token = await staff_token(hospital, "bench.auditor", "AUDITOR")
    audit_process = next(
        p
        for p in hospital.processes
        if p.args[-1] == "audit"  # type: ignore[index]
    )
    async with (
        channel(address("patient"), registrar) as patient_channel,
        channel(address("audit"), auditor_token) as audit_channel,
    ):
        stub = pb_grpc.PatientServiceStub(patient_channel)
        auditor = audit_grpc.AuditServiceStub(audit_channel)
        names = [
            (await stub.CreatePatient(pb.CreatePatientRequest(patient=patient(i)))).name
            for i in range(patients)
        ]
        warm: Counter[str] = Counter()
        await _load(stub, names, 5, warm)
        await asyncio.sleep(1)
        before = await _trail(auditor)
        print(f"warm-up: {sum(warm.values())} calls {dict(warm)}; trail {len(before)} events")
        print(f"commit -> chain delay while audit is up: {_quantiles(_delays_ms(before))}")

        os.kill(audit_process.pid, signal.SIGSTOP)
        window = (time.time(), 0.0)
        paused = time.monotonic()
        codes: Counter[str] = Counter()
        try:
            await _load(stub, names, pause_s, codes)
        finally:
            os.kill(audit_process.pid, signal.SIGCONT)
            window = (window[0], time.time())
        took = time.monotonic() - paused
        served = codes["GetPatient OK"] + codes["UpdatePatient OK"]
        print(
            f"audit SIGSTOPped {took:.1f} s: {sum(codes.values())} patient calls "
            f"({sum(codes.values()) / took:.0f}/s) {dict(codes)}"
        )

        resumed = time.monotonic()
        in_window: list[apb.AuditEvent] = []
        while time.monotonic() - resumed < 180:
            trail = await _trail(auditor)
            in_window = [
                e for e in trail if window[0] <= e.event_time.ToMicroseconds() / 1e6 <= window[1]
            ]
            if len(in_window) >= served:
                break
            await asyncio.sleep(0.5)
        delivered_s = time.monotonic() - resumed
        ids = Counter(e.event_id for e in trail)
        sequence = [e.sequence_number for e in trail]
        verify = await auditor.VerifyChain(apb.VerifyChainRequest(), timeout=120)
        print(
            f"after resume: the window's events chained within {delivered_s:.1f} s; "
            f"{len(in_window)} events of the window for {served} calls served; "
            f"duplicate ids {sum(1 for c in ids.values() if c > 1)}; "
            f"gapless {sequence == list(range(1, len(sequence) + 1))}; "
            f"VerifyChain intact {verify.intact}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=30.0, help="seconds the audit is stopped")
    parser.add_argument("--patients", type=int, default=50)
    args = parser.parse_args()
    with services("patient") as hospital:
        asyncio.run(_run(hospital, args.pause, args.patients))


if __name__ == "__main__":
    main()
