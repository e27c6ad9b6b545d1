"""Load benchmark of the patient service: latency percentiles and throughput per rpc.

Starts its own embedded PostgreSQL and real `his serve` processes (patient, with iam and audit:
every call is authenticated, authorized and audited), registers patients as a registrar,
then drives each rpc at a fixed concurrency from this process. Run: `make bench`. Figures depend on
the machine; this measures one server process (the unit that scales out by pods).
"""

from __future__ import annotations

import argparse
import asyncio
import random

from bench.harness import HEADER, Hospital, address, channel, drive, services, staff_token
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


async def _bench(hospital: Hospital, calls: int, concurrency: int, seed: int) -> None:
    token = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    async with channel(address("patient"), token) as patient_channel:
        stub = pb_grpc.PatientServiceStub(patient_channel)
        names: list[str] = []

        async def create(i: int) -> None:
            created = await stub.CreatePatient(
                pb.CreatePatientRequest(patient=patient(i), request_id=f"bench-{i}"), timeout=10
            )
            names.append(created.name)

        print(HEADER)
        await drive("CreatePatient", seed, concurrency, create)
        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)
        await drive(
            "GetPatient",
            calls,
            concurrency,
            lambda i: stub.GetPatient(pb.GetPatientRequest(name=rng.choice(names)), timeout=10),
        )
        await drive(
            "ListPatients",
            calls // 2,
            concurrency,
            lambda i: stub.ListPatients(
                pb.ListPatientsRequest(name_prefix=FAMILIES[i % len(FAMILIES)], page_size=20),
                timeout=10,
            ),
        )
        await drive(
            "CreatePatient/replay",
            calls // 2,
            concurrency,
            lambda i: stub.CreatePatient(
                pb.CreatePatientRequest(patient=patient(i % seed), request_id=f"bench-{i % seed}"),
                timeout=10,
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2000, help="patients registered first")
    args = parser.parse_args()
    with services("patient") as hospital:
        asyncio.run(_bench(hospital, args.calls, args.concurrency, args.seed))


if __name__ == "__main__":
    main()
