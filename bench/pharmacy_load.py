"""Load benchmark of the pharmacy service: DispenseMedication and GetStockItem, each as a ratio to
echo.

Starts its own embedded PostgreSQL and real `his serve` processes (pharmacy with iam and audit:
every call is authenticated, authorized and audited), fills the formulary with `--seed` drugs,
each with a lot of ample stock in a pharmacy department of iam, and delivers one prescription of
each as the orders service's relay would (DeliverEvents as `services/orders`). Then it drives,
alternating with the echo server (bench/echo.py):

- DispenseMedication: the hot path — one driver transaction taking the prescription's allowance
  and the stock by conditional UPDATEs, choosing the lot first-expiry-first-out, inserting the
  dispense with its MedicationDispenseChanged event and its audit event;
- GetStockItem: a stock read (policy from the caller alone, no audit: not patient data).

Calls spread over the drugs (`--seed`) and their prescriptions; `--hot` makes every prescription
one of the first drug, so every dispense takes the same lot (contention on one stock row).
Run: `python -m bench.pharmacy_load`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import uuid

from google.protobuf.message import Message

from bench.harness import (
    HEADER,
    Call,
    Hospital,
    address,
    channel,
    compare,
    echo_call,
    service_token,
    services,
    staff_token,
)
from his.common.v1 import types_pb2
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.login import issue_token
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pb_grpc
from his.runtime.outbox import envelope
from his_client.config import ClientConfig

ATC = "http://www.whocc.no/atc"
TABLET = types_pb2.Coding(system="http://snomed.info/sct", code="385055001", display="Tablet")
# Per prescription: more than any run dispenses of it.
PRESCRIBED = 1_000_000


async def _pharmacy_department(hospital: Hospital) -> str:
    config = ClientConfig.from_env(hospital.env)
    admin = await issue_token("admin", data_dir=hospital.data_dir, config=config)
    async with channel(address("iam"), admin) as iam_channel:
        department = await iam_grpc.IamServiceStub(iam_channel).CreateDepartment(
            iam_pb.CreateDepartmentRequest(
                department=iam_pb.Department(
                    code="BENCH-PHARM",
                    display_name="Bench pharmacy",
                    kind=iam_pb.DEPARTMENT_KIND_PHARMACY,
                ),
                request_id="bench-pharmacy",
            ),
            timeout=10,
        )
    return str(department.name)


def _prescription(medication: str, index: int) -> orders_pb.MedicationRequestChanged:
    request = orders_pb.MedicationRequest(
        name=f"medicationRequests/{uuid.uuid4()}",
        patient=f"patients/{uuid.uuid4()}",
        encounter=f"encounters/{uuid.uuid4()}",
        medication=medication,
        dispense_quantity=types_pb2.Quantity(value=PRESCRIBED, unit="{tablet}"),
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=10 + index),
        status=orders_pb.MEDICATION_REQUEST_STATUS_ACTIVE,
    )
    return orders_pb.MedicationRequestChanged(medication_request=request, revision=1)


async def _bench(
    hospital: Hospital, calls: int, concurrency: int, seed: int, rounds: int, *, hot: bool
) -> None:
    pharmacist = await staff_token(hospital, "bench.pharmacist", "PHARMACIST")
    location = await _pharmacy_department(hospital)
    orders = await service_token(hospital, "orders")
    expiry = dt.date.today() + dt.timedelta(days=400)
    async with (
        channel(address("pharmacy"), pharmacist) as pharmacy_channel,
        channel(address("pharmacy"), orders) as orders_channel,
        channel(hospital.echo, pharmacist) as echo_channel,
    ):
        pharmacy = pb_grpc.PharmacyServiceStub(pharmacy_channel)
        medications: list[str] = []
        stock: list[str] = []
        prescriptions: list[str] = []
        for i in range(seed):
            made = await pharmacy.CreateMedication(
                pb.CreateMedicationRequest(
                    medication=pb.Medication(
                        code=types_pb2.Coding(system=ATC, code="N02BE01"),
                        display_name=f"Bench drug {i}",
                        form=TABLET,
                        strength=types_pb2.Quantity(value=100 + i, unit="mg"),
                        dispense_unit="{tablet}",
                        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=10 + i),
                    ),
                    request_id=f"bench-medication-{i}",
                ),
                timeout=10,
            )
            medications.append(made.name)
            item = await pharmacy.ReceiveStock(
                pb.ReceiveStockRequest(
                    parent=made.name,
                    location=location,
                    lot_number=f"BENCH-{i}",
                    expiry_date=types_pb2.Date(
                        year=expiry.year, month=expiry.month, day=expiry.day
                    ),
                    quantity=1_000_000,
                    request_id=f"bench-lot-{i}",
                ),
                timeout=10,
            )
            stock.append(item.name)
            # --hot: every prescription is of the first drug, so every dispense takes its lot.
            changed = _prescription(medications[0] if hot else made.name, i)
            await pb_grpc.PharmacyServiceStub(orders_channel).DeliverEvents(
                pb.DeliverEventsRequest(events=[envelope(changed, source="orders")]), timeout=10
            )
            prescriptions.append(changed.medication_request.name)

        def like(message: Message) -> Call:
            return echo_call(echo_channel, message)

        def dispensing(i: int) -> pb.DispenseMedicationRequest:
            prescription = prescriptions[i % len(prescriptions)]
            return pb.DispenseMedicationRequest(
                medication_dispense=pb.MedicationDispense(
                    medication_request=prescription, location=location, quantity=1
                ),
                request_id=f"bench-dispense-{i}",
            )

        rng = random.Random(7)  # noqa: S311 (a reproducible pick, not a secret)
        print(HEADER)
        await compare(
            {
                "DispenseMedication" + (" (hot)" if hot else ""): lambda i: (
                    pharmacy.DispenseMedication(dispensing(i), timeout=10)
                )
            },
            calls // rounds,
            concurrency,
            like(dispensing(0)),
            rounds=rounds,
        )
        await compare(
            {
                "GetStockItem": lambda i: pharmacy.GetStockItem(
                    pb.GetStockItemRequest(name=rng.choice(stock)), timeout=10
                )
            },
            calls // rounds,
            concurrency,
            like(pb.GetStockItemRequest(name=stock[0])),
            rounds=rounds,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=50, help="drugs, each with a lot and a patient")
    parser.add_argument("--rounds", type=int, default=2, help="echo/service alternations per rpc")
    parser.add_argument("--hot", action="store_true", help="every dispense from one lot")
    args = parser.parse_args()
    with services("pharmacy") as hospital:
        asyncio.run(
            _bench(hospital, args.calls, args.concurrency, args.seed, args.rounds, hot=args.hot)
        )


if __name__ == "__main__":
    main()
