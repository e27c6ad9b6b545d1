"""The closed loop against the running services: a doctor's lab order reaches the laboratory, its
final report completes the order; a prescription reaches the pharmacy, the dispense handed over
takes exactly its quantity from stock and completes the prescription. And a laboratory or a
pharmacy that is down while orders change catches up when it is back, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from his.common.v1 import types_pb2
from his.lab.spec import SPEC as LAB
from his.lab.v1 import lab_service_pb2 as lab_pb
from his.lab.v1 import lab_service_pb2_grpc as lab_grpc
from his.orders.spec import SPEC as ORDERS
from his.orders.v1 import orders_service_pb2 as pb
from his.orders.v1 import orders_service_pb2_grpc as orders_grpc
from his.pharmacy.spec import SPEC as PHARMACY
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pharmacy_grpc
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, start
from tests.conftest import addresses, service_config
from tests.identity import channel_as
from tests.lab.helpers import GLUCOSE, quantity, specimen
from tests.orders.formulary import Formulary, in_pharmacy
from tests.orders.helpers import (
    Emr,
    Hospital,
    Orders,
    Patients,
    dosage,
    place_lab_order,
    prescribe,
    visit,
)
from tests.pharmacy.helpers import dispensing
from tests.support import failure_of, free_port, fresh_database

T = TypeVar("T")
# How long a test waits for a relay: a destination that was down is retried with a backoff of at
# most 30 s (his.runtime.relay), and this machine may be busy.
SETTLE_S = 45.0


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first value `probe` gives that is not None, polling until SETTLE_S."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while True:
        found = await probe()
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {SETTLE_S} s: {what}")
        await asyncio.sleep(0.1)


def _next_year() -> types_pb2.Date:
    return types_pb2.Date(year=dt.datetime.now(dt.UTC).year + 1, month=6, day=30)


async def _in_worklist(lab: Any, hospital: Hospital, patient: str, name: str) -> Any:
    assert hospital.lab_technician is not None
    page = await lab.ListLabOrders(
        lab_pb.ListLabOrdersRequest(patient=patient), metadata=hospital.lab_technician.md
    )
    return next((o for o in page.service_requests if o.name == name), None)


async def _stock(pharmacy: Any, hospital: Hospital, medication: str, on_hand: int) -> str:
    assert hospital.pharmacist is not None
    item = await pharmacy.ReceiveStock(
        pharmacy_pb.ReceiveStockRequest(
            parent=medication,
            location=hospital.pharmacy,
            lot_number=f"LOOP-{uuid.uuid4().hex[:8]}",
            expiry_date=_next_year(),
            quantity=on_hand,
            request_id=uuid.uuid4().hex,
        ),
        metadata=hospital.pharmacist.md,
    )
    return str(item.name)


async def test_a_lab_order_and_a_prescription_go_round_the_loop(
    orders: Orders,
    lab: Any,
    pharmacy: Any,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
) -> None:
    assert hospital.doctor and hospital.lab_technician and hospital.pharmacist
    doctor, tech, pharmacist = hospital.doctor, hospital.lab_technician, hospital.pharmacist
    at = await visit(patients, emr, hospital)

    # A blood glucose test, through orders' outbox to the laboratory's worklist.
    ordered = await place_lab_order(orders, hospital, at)
    await eventually(lambda: _in_worklist(lab, hospital, at.patient, ordered.name), "worklist")
    taken = await lab.CreateSpecimen(
        lab_pb.CreateSpecimenRequest(specimen=specimen([ordered.name], tech.name)),
        metadata=tech.md,
    )
    report = await lab.CreateDiagnosticReport(
        lab_pb.CreateDiagnosticReportRequest(
            diagnostic_report=lab_pb.DiagnosticReport(
                service_request=ordered.name, specimens=[taken.name]
            )
        ),
        metadata=tech.md,
    )
    recorded = await lab.RecordObservations(
        lab_pb.RecordObservationsRequest(
            parent=report.name, observations=[quantity(GLUCOSE, 180, "mg/dL")]
        ),
        metadata=tech.md,
    )
    glucose = next(o for o in recorded.results if o.code.code == GLUCOSE.code)
    # The service flags it from the reference range, not the client.
    assert glucose.interpretation == lab_pb.OBSERVATION_INTERPRETATION_HIGH
    final = await lab.FinalizeReport(
        lab_pb.FinalizeReportRequest(name=report.name), metadata=tech.md
    )
    assert final.status == lab_pb.DIAGNOSTIC_REPORT_STATUS_FINAL

    async def completed_order() -> pb.ServiceRequest | None:
        got = await orders.GetServiceRequest(
            pb.GetServiceRequestRequest(name=ordered.name), metadata=doctor.md
        )
        return got if got.status == pb.SERVICE_REQUEST_STATUS_COMPLETED else None

    assert (await eventually(completed_order, "the lab order completed")).report == report.name

    # Fifteen tablets, through orders' outbox to the pharmacy, dispensed from a lot of 40.
    lot = await _stock(pharmacy, hospital, formulary.active.name, 40)
    written = await prescribe(orders, hospital, at, formulary.active.name)

    async def dispensed() -> pharmacy_pb.MedicationDispense | None:
        try:
            made: pharmacy_pb.MedicationDispense = await pharmacy.DispenseMedication(
                dispensing(written.name, 15, stock_item=lot, location=hospital.pharmacy),
                metadata=pharmacist.md,
            )
            return made
        except grpc.aio.AioRpcError as error:
            # Until the prescription has reached the pharmacy.
            if failure_of(error).reason != "ORDER_NOT_KNOWN":
                raise
            return None

    dispense = await eventually(dispensed, "the prescription reached the pharmacy")
    handed = await pharmacy.HandOverMedicationDispense(
        pharmacy_pb.HandOverMedicationDispenseRequest(name=dispense.name), metadata=pharmacist.md
    )
    assert handed.status == pharmacy_pb.MEDICATION_DISPENSE_STATUS_COMPLETED
    item = await pharmacy.GetStockItem(
        pharmacy_pb.GetStockItemRequest(name=lot), metadata=pharmacist.md
    )
    assert item.quantity_on_hand == 40 - 15

    async def completed_prescription() -> pb.MedicationRequest | None:
        got = await orders.GetMedicationRequest(
            pb.GetMedicationRequestRequest(name=written.name), metadata=doctor.md
        )
        return got if got.status == pb.MEDICATION_REQUEST_STATUS_COMPLETED else None

    done = await eventually(completed_prescription, "the prescription completed")
    assert (done.dispensed_quantity.value, done.remaining_quantity.value) == (15, 0)


@dataclass
class Loop:
    """Orders, lab and pharmacy of their own database, each started when the test says (and a
    port for a billing that never is)."""

    url: str
    peers: dict[str, str]
    ports: dict[str, int]
    running: dict[str, RunningService]

    async def start(self, name: str) -> RunningService:
        spec = {"orders": ORDERS, "lab": LAB, "pharmacy": PHARMACY}[name]
        others = {
            f"HIS_{peer.upper()}_ADDR": f"localhost:{port}"
            for peer, port in self.ports.items()
            if peer != name
        }
        config = service_config(name, **self.peers, **others, HIS_PORT=str(self.ports[name]))
        self.running[name] = await start(spec, config, self.url)
        return self.running[name]

    async def stop(self, name: str) -> None:
        await self.running.pop(name).stop(grace_s=1)


@pytest.fixture
async def loop(
    postgres: EmbeddedPostgres,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
    emr_service: RunningService,
) -> AsyncIterator[Loop]:
    url = await fresh_database(postgres.url, "order_loop", "orders", "lab", "pharmacy")
    made = Loop(
        url,
        addresses(patient_service, audit_service, iam_service, emr_service),
        # Billing's port has no listener: completed orders and hand-overs wait for it there
        # (tests/billing/test_journey.py follows them to billing).
        {name: free_port() for name in ("orders", "lab", "pharmacy", "billing")},
        {},
    )
    try:
        yield made
    finally:
        for name in list(made.running):
            await made.stop(name)


async def test_a_laboratory_and_a_pharmacy_that_were_down_catch_up_once(
    loop: Loop, emr: Emr, patients: Patients, hospital: Hospital
) -> None:
    assert hospital.doctor and hospital.lab_technician and hospital.pharmacist
    doctor, pharmacist = hospital.doctor, hospital.pharmacist
    orders_at = (await loop.start("orders")).address
    pharmacy_at = (await loop.start("pharmacy")).address
    async with (
        channel_as(orders_at, "") as orders_channel,
        channel_as(pharmacy_at, "") as pharmacy_channel,
    ):
        orders = orders_grpc.OrdersServiceStub(orders_channel)
        pharmacy = pharmacy_grpc.PharmacyServiceStub(pharmacy_channel)
        formulary = await in_pharmacy(pharmacy, hospital.pharmacist)
        at = await visit(patients, emr, hospital)
        # A prescription needs the formulary; then the pharmacy goes away.
        written = [await prescribe(orders, hospital, at, formulary.active.name) for _ in range(3)]
        await loop.stop("pharmacy")
        # While the laboratory has never been up and the pharmacy is down: three lab orders,
        # and every prescription changed (the dose) or cancelled.
        ordered = [await place_lab_order(orders, hospital, at) for _ in range(3)]
        for prescription in written[:2]:
            await orders.UpdateMedicationRequest(
                pb.UpdateMedicationRequestRequest(
                    medication_request=pb.MedicationRequest(
                        name=prescription.name,
                        dosage=dosage(dose=types_pb2.Quantity(value=1000, unit="mg")),
                    ),
                    update_mask=FieldMask(paths=["dosage"]),
                ),
                metadata=doctor.md,
            )
        await orders.CancelMedicationRequest(
            pb.CancelMedicationRequestRequest(name=written[2].name, reason="allergy"),
            metadata=doctor.md,
        )

        lab_at = (await loop.start("lab")).address
        await loop.start("pharmacy")
        async with channel_as(lab_at, "") as lab_channel:
            lab = lab_grpc.LabServiceStub(lab_channel)
            for order in ordered:
                await eventually(
                    lambda o=order: _in_worklist(lab, hospital, at.patient, o.name),  # type: ignore[misc]
                    f"{order.name} in the worklist",
                )
            worklist = await lab.ListLabOrders(
                lab_pb.ListLabOrdersRequest(patient=at.patient),
                metadata=hospital.lab_technician.md,
            )
        assert sorted(o.name for o in worklist.service_requests) == sorted(o.name for o in ordered)
        # The pharmacy's copies took the changes it missed: the cancelled one is refused, the
        # others dispense.
        lot = await _stock(pharmacy, hospital, formulary.active.name, 100)

        async def refused_as_cancelled() -> str | None:
            try:
                await pharmacy.DispenseMedication(
                    dispensing(written[2].name, 1, stock_item=lot, location=hospital.pharmacy),
                    metadata=pharmacist.md,
                )
            except grpc.aio.AioRpcError as error:
                reason = failure_of(error).reason
                return reason if reason != "ORDER_NOT_KNOWN" else None
            raise AssertionError("a cancelled prescription was dispensed")

        reason = await eventually(refused_as_cancelled, "the cancel reached the pharmacy")
        assert reason == "PRESCRIPTION_NOT_ACTIVE"
        for prescription in written[:2]:
            dispense = await pharmacy.DispenseMedication(
                dispensing(prescription.name, 15, stock_item=lot, location=hospital.pharmacy),
                metadata=hospital.pharmacist.md,
            )
            assert dispense.quantity == 15
        item = await pharmacy.GetStockItem(
            pharmacy_pb.GetStockItemRequest(name=lot), metadata=hospital.pharmacist.md
        )
        assert item.quantity_on_hand == 100 - 30
