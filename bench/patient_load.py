"""Load benchmark of the patient service: latency percentiles and throughput per rpc.

Starts its own embedded PostgreSQL and real `his serve` processes (patient, with iam and audit:
every call is authenticated, authorized and audited), registers patients as a registrar,
then drives each rpc at a fixed concurrency from this process, alternating with the echo server
(bench/echo.py) and printing every figure also as a ratio to it. Run: `make bench`. Figures depend
on the machine; this measures one server process (the unit that scales out by pods).
"""

from __future__ import annotations

import argparse
import asyncio
import random

from google.protobuf.message import Message

from bench.harness import (
    HEADER,
    Call,
    Hospital,
    address,
    channel,
    compare,
    echo_call,
    services,
    staff_token,
)
from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc

FAMILIES = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou")


def patient(i: int) -> pb.Patient:
    """A distinct, valid patient."""
    return pb.Patient(
        family_name=f"{FAMILIES[i % len(FAMILIES)]}{i // 100}",
        given_names=[f"Given{i}"],
        gender=pb.ADMINISTRATIVE_GENDER_UNKNOWN,
        birth_date=types_pb2.Date(year=1950 + i % 60, month=1 + i % 12, day=1 + i % 28),
        national_id=types_pb2.Identifier(system="urn:bench", value=f"B{i:09d}"),
        phone=f"+86139{i:08d}",
    )


async def _bench(hospital: Hospital, calls: int, concurrency: int, seed: int, rounds: int) -> None:
    token = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    async with (
        channel(address("patient"), token) as patient_channel,
        channel(hospital.echo, token) as echo_channel,
    ):
        stub = pb_grpc.PatientServiceStub(patient_channel)
        names: list[str] = []

        async def create(i: int) -> None:
            created = await stub.CreatePatient(
                pb.CreatePatientRequest(patient=patient(i), request_id=f"bench-{i}"), timeout=10
            )
            names.append(created.name)

        def like(message: Message) -> Call:
            return echo_call(echo_channel, message)

        print(HEADER)
        await compare(
            {"CreatePatient": create},
            seed // rounds,
            concurrency,
            like(pb.CreatePatientRequest(patient=patient(0), request_id="bench-0")),
            rounds=rounds,
        )
        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)
        await compare(
            {
                "GetPatient": lambda i: stub.GetPatient(
                    pb.GetPatientRequest(name=rng.choice(names)), timeout=10
                )
            },
            calls // rounds,
            concurrency,
            like(pb.GetPatientRequest(name=names[0])),
            rounds=rounds,
        )
        await compare(
            {
                "ListPatients": lambda i: stub.ListPatients(
                    pb.ListPatientsRequest(name_prefix=FAMILIES[i % len(FAMILIES)], page_size=20),
                    timeout=10,
                )
            },
            calls // 2 // rounds,
            concurrency,
            like(pb.ListPatientsRequest(name_prefix=FAMILIES[0], page_size=20)),
            rounds=rounds,
        )
        seeded = len(names)
        await compare(
            {
                "CreatePatient/replay": lambda i: stub.CreatePatient(
                    pb.CreatePatientRequest(
                        patient=patient(i % seeded), request_id=f"bench-{i % seeded}"
                    ),
                    timeout=10,
                )
            },
            calls // 2 // rounds,
            concurrency,
            like(pb.CreatePatientRequest(patient=patient(0), request_id="bench-0")),
            rounds=rounds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2000, help="patients registered first")
    parser.add_argument("--rounds", type=int, default=2, help="echo/service alternations per rpc")
    args = parser.parse_args()
    with services("patient") as hospital:
        asyncio.run(_bench(hospital, args.calls, args.concurrency, args.seed, args.rounds))


if __name__ == "__main__":
    main()
