"""What security costs a read: GetPatient with and without authentication, authorization and audit.

One run, one database, two patient processes: the production one (bearer token verified, policy
decided, the read audited and committed in the audit service before the answer) and one started
with HIS_SECURITY=off (nothing of that). The same patients are read from both, alternately, at
concurrency 1 and 16; the last lines give the ratios. Run: `make bench` (or `python -m
bench.security_cost`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from bench.harness import (
    HEADER,
    PORT_OFFSET,
    Hospital,
    address,
    channel,
    drive,
    services,
    staff_token,
)
from bench.patient_load import patient
from his.base.catalog import lookup
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc

# The unsecured patient process listens here (the secured one at the usual benchmark port).
INSECURE_PORT = lookup("patient").port + 2 * PORT_OFFSET


async def _rate(
    stub: pb_grpc.PatientServiceAsyncStub, names: list[str], calls: int, c: int
) -> float:
    rng = random.Random(11)  # noqa: S311 (a reproducible pick, not a secret)
    started = time.perf_counter()
    await drive(
        f"GetPatient c={c}",
        calls,
        c,
        lambda i: stub.GetPatient(pb.GetPatientRequest(name=rng.choice(names)), timeout=10),
    )
    return calls / (time.perf_counter() - started)


async def _bench(hospital: Hospital, insecure: str, calls: int, seed: int) -> None:
    token = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    async with (
        channel(address("patient"), token) as secure_channel,
        channel(insecure, None) as open_channel,
    ):
        secure = pb_grpc.PatientServiceStub(secure_channel)
        open_ = pb_grpc.PatientServiceStub(open_channel)
        names = [
            (await secure.CreatePatient(pb.CreatePatientRequest(patient=patient(i)))).name
            for i in range(seed)
        ]
        ratios = []
        for concurrency in (1, 16):
            print(HEADER)
            print("-- without authn/authz/audit (HIS_SECURITY=off)")
            await _rate(open_, names, calls // 5, concurrency)  # warm-up
            plain = await _rate(open_, names, calls, concurrency)
            print("-- with authn + authz + audit (production)")
            await _rate(secure, names, calls // 5, concurrency)  # warm-up
            guarded = await _rate(secure, names, calls, concurrency)
            ratios.append((concurrency, plain, guarded))
        print()
        for concurrency, plain, guarded in ratios:
            print(
                f"concurrency {concurrency:>2}: {plain:.0f}/s without, {guarded:.0f}/s with "
                f"security -> throughput ratio {guarded / plain:.2f} "
                f"(cost per call x{plain / guarded:.2f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=200, help="patients registered first")
    args = parser.parse_args()
    with services("patient") as hospital:
        insecure = hospital.serve("patient", INSECURE_PORT, HIS_SECURITY="off")
        asyncio.run(_bench(hospital, insecure, args.calls, args.seed))


if __name__ == "__main__":
    main()
