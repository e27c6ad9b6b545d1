"""Load benchmark of the orders service: CreateServiceRequest and a read of an order, each as a
ratio to echo.

Starts its own embedded PostgreSQL and real `his serve` processes (orders with patient,
scheduling, emr, iam and audit), opens encounters as a cardiologist of a real iam department,
then drives CreateServiceRequest (patient, encounter as the doctor and laboratory asked first,
then the order, its ServiceRequestChanged event for the lab and its audit event in one
transaction) and GetMedicationRequest (policy on the order's stored encounter facts, no remote
call, an audit event group-committed), alternating with the echo server (bench/echo.py).

Prescribing needs the pharmacy's formulary: while the pharmacy service is not implemented (its
catalog entry), the read measured is GetServiceRequest, the same path over the other table.
The lab is not running either way: the lab orders' events wait in the outbox, as in production
while the lab is away. Run: `python -m bench.orders_load`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable

from google.protobuf.message import Message

from bench.emr_load import _doctor
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
from his.base.catalog import BY_NAME
from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.emr.v1 import emr_service_pb2_grpc as emr_grpc
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.login import issue_token
from his.orders.v1 import orders_service_pb2 as pb
from his.orders.v1 import orders_service_pb2_grpc as pb_grpc
from his.patient.v1 import patient_service_pb2 as patient_pb
from his.patient.v1 import patient_service_pb2_grpc as patient_grpc
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pharmacy_grpc
from his_client import HisClients, static_token
from his_client.config import ClientConfig

GLUCOSE = types_pb2.Coding(system="http://loinc.org", code="2345-7", display="Glucose")
ORAL = types_pb2.Coding(system="http://snomed.info/sct", code="26643006", display="Oral route")
TABLET = "{tablet}"


async def _laboratory(hospital: Hospital) -> str:
    """A laboratory department of the bench's iam."""
    config = ClientConfig.from_env(hospital.env)
    admin = await issue_token("admin", data_dir=hospital.data_dir, config=config)
    async with HisClients(config, token=static_token(admin)) as his:
        lab = await his.iam.CreateDepartment(
            iam_pb.CreateDepartmentRequest(
                department=iam_pb.Department(
                    code="BENCH-LAB",
                    display_name="Bench laboratory",
                    kind=iam_pb.DEPARTMENT_KIND_LAB,
                ),
                request_id="bench-lab",
            ),
            timeout=10,
        )
    return str(lab.name)


async def _medication(hospital: Hospital) -> str:
    """A formulary medication, created by a pharmacist (only when the pharmacy runs)."""
    pharmacist = await staff_token(hospital, "bench.pharmacist", "PHARMACIST")
    async with channel(address("pharmacy"), pharmacist) as pharmacy_channel:
        made = await pharmacy_grpc.PharmacyServiceStub(pharmacy_channel).CreateMedication(
            pharmacy_pb.CreateMedicationRequest(
                medication=pharmacy_pb.Medication(
                    code=types_pb2.Coding(system="http://www.whocc.no/atc", code="N02BE01"),
                    display_name="Paracetamol 500 mg tablet",
                    form=types_pb2.Coding(system="http://snomed.info/sct", code="385055001"),
                    strength=types_pb2.Quantity(value=500, unit="mg"),
                    dispense_unit=TABLET,
                    unit_price=types_pb2.Money(currency_code="CNY", amount_minor=35),
                ),
                request_id="bench-medication",
            ),
            timeout=10,
        )
    return str(made.name)


def _prescription(patient: str, encounter: str, medication: str) -> pb.MedicationRequest:
    return pb.MedicationRequest(
        patient=patient,
        encounter=encounter,
        medication=medication,
        dosage=pb.Dosage(
            dose=types_pb2.Quantity(value=500, unit="mg"),
            route=ORAL,
            frequency_per_day=3,
            duration_days=5,
        ),
        dispense_quantity=types_pb2.Quantity(value=15, unit=TABLET),
    )


async def _bench(
    hospital: Hospital, calls: int, concurrency: int, seed: int, rounds: int, *, pharmacy: bool
) -> None:
    registrar = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    token, doctor, department = await _doctor(hospital)
    lab = await _laboratory(hospital)
    medication = await _medication(hospital) if pharmacy else ""
    async with (
        channel(address("patient"), registrar) as patient_channel,
        channel(address("emr"), token) as emr_channel,
        channel(address("orders"), token) as orders_channel,
        channel(hospital.echo, token) as echo_channel,
    ):
        visits = []
        emr = emr_grpc.EmrServiceStub(emr_channel)
        for i in range(seed):
            patient = await patient_grpc.PatientServiceStub(patient_channel).CreatePatient(
                patient_pb.CreatePatientRequest(
                    patient=patient_pb.Patient(
                        family_name=f"Bench{i}",
                        given_names=["Orders"],
                        gender=patient_pb.ADMINISTRATIVE_GENDER_UNKNOWN,
                        birth_date=types_pb2.Date(year=1960 + i % 40, month=1, day=1),
                    ),
                    request_id=f"bench-orders-patient-{i}",
                ),
                timeout=10,
            )
            encounter = await emr.CreateEncounter(
                emr_pb.CreateEncounterRequest(
                    encounter=emr_pb.Encounter(
                        patient=patient.name,
                        encounter_class=emr_pb.ENCOUNTER_CLASS_AMBULATORY,
                        status=emr_pb.ENCOUNTER_STATUS_ARRIVED,
                        department=department,
                        attending_practitioner=doctor,
                    ),
                    request_id=f"bench-orders-encounter-{i}",
                ),
                timeout=10,
            )
            visits.append((patient.name, encounter.name))
        orders = pb_grpc.OrdersServiceStub(orders_channel)

        def lab_order(i: int) -> pb.CreateServiceRequestRequest:
            patient, encounter = visits[i % len(visits)]
            return pb.CreateServiceRequestRequest(
                service_request=pb.ServiceRequest(
                    patient=patient,
                    encounter=encounter,
                    code=GLUCOSE,
                    priority=pb.REQUEST_PRIORITY_ROUTINE,
                    performer=lab,
                ),
                request_id=f"bench-order-{i}",
            )

        def like(message: Message) -> Call:
            return echo_call(echo_channel, message)

        if pharmacy:
            read_name = "GetMedicationRequest"
            names = [
                (
                    await orders.CreateMedicationRequest(
                        pb.CreateMedicationRequestRequest(
                            medication_request=_prescription(patient, encounter, medication),
                            request_id=f"bench-prescription-{i}",
                        ),
                        timeout=10,
                    )
                ).name
                for i, (patient, encounter) in enumerate(visits)
            ]
        else:
            read_name = "GetServiceRequest"
            names = [
                (await orders.CreateServiceRequest(lab_order(10**6 + i), timeout=10)).name
                for i in range(len(visits))
            ]
        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)

        def read(i: int) -> Awaitable[object]:
            name = rng.choice(names)
            if pharmacy:
                return orders.GetMedicationRequest(
                    pb.GetMedicationRequestRequest(name=name), timeout=10
                )
            return orders.GetServiceRequest(pb.GetServiceRequestRequest(name=name), timeout=10)

        print(HEADER)
        await compare(
            {read_name: read},
            calls // rounds,
            concurrency,
            like(pb.GetMedicationRequestRequest(name=names[0])),
            rounds=rounds,
        )
        await compare(
            {
                "CreateServiceRequest": lambda i: orders.CreateServiceRequest(
                    lab_order(i), timeout=10
                )
            },
            calls // 2 // rounds,
            concurrency,
            like(lab_order(0)),
            rounds=rounds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=50, help="encounters opened first")
    parser.add_argument("--rounds", type=int, default=2, help="echo/service alternations per rpc")
    args = parser.parse_args()
    pharmacy = BY_NAME["pharmacy"].implemented
    names = ("patient", "scheduling", "emr", "orders", *(("pharmacy",) if pharmacy else ()))
    with services(*names) as hospital:
        asyncio.run(
            _bench(
                hospital, args.calls, args.concurrency, args.seed, args.rounds, pharmacy=pharmacy
            )
        )


if __name__ == "__main__":
    main()
