"""What security costs a read: GetPatient with and without authentication, authorization and audit.

One run, one database, two patient processes: the production one (bearer token verified, policy
decided, the read audited and committed in the audit service before the answer) and one started
with HIS_SECURITY=off (nothing of that). The same patients are read from both and from the echo
server (bench/echo.py), alternately, at concurrency 1 and 16; every line has its ratios to the echo
run before it, the last lines the ratio secured/unsecured. Run: `make bench` (or `python -m
bench.security_cost`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics

from bench.harness import (
    HEADER,
    PORT_OFFSET,
    Call,
    Hospital,
    address,
    channel,
    compare,
    echo_call,
    services,
    staff_token,
)
from bench.patient_load import patient
from his.base.catalog import lookup
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc

# The unsecured patient process listens here (the secured one at the usual benchmark port).
INSECURE_PORT = lookup("patient").port + 2 * PORT_OFFSET


async def _bench(hospital: Hospital, insecure: str, calls: int, seed: int, rounds: int) -> None:
    token = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    async with (
        channel(address("patient"), token) as secure_channel,
        channel(insecure, None) as open_channel,
        channel(hospital.echo, token) as echo_channel,
    ):
        secure = pb_grpc.PatientServiceStub(secure_channel)
        open_ = pb_grpc.PatientServiceStub(open_channel)
        names = [
            (await secure.CreatePatient(pb.CreatePatientRequest(patient=patient(i)))).name
            for i in range(seed)
        ]
        rng = random.Random(11)  # noqa: S311 (a reproducible pick, not a secret)

        def read(stub: pb_grpc.PatientServiceAsyncStub) -> Call:
            return lambda i: stub.GetPatient(
                pb.GetPatientRequest(name=rng.choice(names)), timeout=10
            )

        summary = []
        for concurrency in (1, 16):
            print(HEADER)
            seen = await compare(
                {
                    f"GetPatient off c={concurrency}": read(open_),
                    f"GetPatient on c={concurrency}": read(secure),
                },
                calls // rounds,
                concurrency,
                echo_call(echo_channel, pb.GetPatientRequest(name=names[0])),
                rounds=rounds,
                warm_up=calls // 5,
            )
            plain, guarded = (
                statistics.median(c.run.rate for c in comparisons) for comparisons in seen.values()
            )
            on_echo = statistics.median(
                c.ratio.rate for c in seen[f"GetPatient on c={concurrency}"]
            )
            summary.append((concurrency, plain, guarded, on_echo))
        print()
        for concurrency, plain, guarded, on_echo in summary:
            print(
                f"concurrency {concurrency:>2}: {plain:.0f}/s without, {guarded:.0f}/s with "
                f"security -> throughput ratio {guarded / plain:.2f} "
                f"(cost per call x{plain / guarded:.2f}); with security / echo {on_echo:.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=200, help="patients registered first")
    parser.add_argument("--rounds", type=int, default=2, help="echo/off/on alternations")
    args = parser.parse_args()
    with services("patient") as hospital:
        insecure = hospital.serve("patient", INSECURE_PORT, HIS_SECURITY="off")
        asyncio.run(_bench(hospital, insecure, args.calls, args.seed, args.rounds))


if __name__ == "__main__":
    main()
