"""The pharmacy records of the security matrix, made through the public API: a formulary entry,
a lot of it in a pharmacy of the session's iam, the world patient's prescription (delivered as
orders' relay delivers it, written by PRACTITIONER in the world's encounter) and a dispense of it.
Fresh dispenses serve the callers allowed to change one."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

from his.common.v1 import types_pb2
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.runtime.outbox import envelope
from tests.iam.helpers import make_department
from tests.identity import ISSUER, metadata
from tests.security.helpers import PRACTITIONER, World

PHARMACIST = metadata(ISSUER.staff("PHARMACIST"))
ORDERS = metadata(ISSUER.service("orders"))
# Enough for every fresh dispense of the matrix.
PRESCRIBED = 100_000


def medication() -> pb.Medication:
    """A formulary entry of its own strength (entries never collide)."""
    return pb.Medication(
        code=types_pb2.Coding(system="http://www.whocc.no/atc", code="N02BE01"),
        display_name="Paracetamol tablet",
        form=types_pb2.Coding(system="http://snomed.info/sct", code="385055001"),
        strength=types_pb2.Quantity(value=random.randint(1, 10**8) / 10, unit="mg"),
        dispense_unit="{tablet}",
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=8),
    )


def receipt(world: World) -> pb.ReceiveStockRequest:
    """A delivery of one unit of the world's medication into the world's pharmacy."""
    expiry = dt.date.today() + dt.timedelta(days=365)
    return pb.ReceiveStockRequest(
        parent=world.medication,
        location=world.pharmacy_location,
        lot_number="MATRIX-1",
        expiry_date=types_pb2.Date(year=expiry.year, month=expiry.month, day=expiry.day),
        quantity=1,
    )


async def build(world: World, pharmacy: Any) -> None:
    """Make the world's pharmacy records."""
    world.pharmacy = pharmacy
    department = await world.iam.CreateDepartment(
        iam_pb.CreateDepartmentRequest(department=make_department(iam_pb.DEPARTMENT_KIND_PHARMACY))
    )
    world.pharmacy_location = department.name
    made = await pharmacy.CreateMedication(
        pb.CreateMedicationRequest(medication=medication()), metadata=PHARMACIST
    )
    world.medication = made.name
    lot = receipt(world)
    lot.quantity = PRESCRIBED
    world.stock_item = (await pharmacy.ReceiveStock(lot, metadata=PHARMACIST)).name
    world.prescription = f"medicationRequests/{uuid.uuid4()}"
    request = orders_pb.MedicationRequest(
        name=world.prescription,
        patient=world.patient,
        encounter=world.encounter,
        prescriber=PRACTITIONER,
        medication=world.medication,
        dispense_quantity=types_pb2.Quantity(value=PRESCRIBED, unit="{tablet}"),
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=8),
        status=orders_pb.MEDICATION_REQUEST_STATUS_ACTIVE,
    )
    changed = orders_pb.MedicationRequestChanged(medication_request=request, revision=1)
    await pharmacy.DeliverEvents(
        pb.DeliverEventsRequest(events=[envelope(changed, source="orders")]), metadata=ORDERS
    )
    world.dispense = await fresh_dispense(world)


def dispensing(world: World) -> pb.DispenseMedicationRequest:
    """One unit of the world's prescription, from the world's pharmacy."""
    return pb.DispenseMedicationRequest(
        medication_dispense=pb.MedicationDispense(
            medication_request=world.prescription, location=world.pharmacy_location, quantity=1
        )
    )


async def fresh_dispense(world: World) -> str:
    """A new prepared dispense of the world's prescription."""
    made = await world.pharmacy.DispenseMedication(dispensing(world), metadata=PHARMACIST)
    return str(made.name)


async def etag_of(world: World) -> str:
    """The world's stock item's etag as it is now (AdjustStock requires it)."""
    item = await world.pharmacy.GetStockItem(
        pb.GetStockItemRequest(name=world.stock_item), metadata=PHARMACIST
    )
    return str(item.etag)


def prescription_changed() -> pb.DeliverEventsRequest:
    """A prescription the pharmacy does not know yet: applied (recorded), dispensing nothing."""
    request = orders_pb.MedicationRequest(
        name=f"medicationRequests/{uuid.uuid4()}",
        patient=f"patients/{uuid.uuid4()}",
        encounter=f"encounters/{uuid.uuid4()}",
        medication=f"medications/{uuid.uuid4()}",
        dispense_quantity=types_pb2.Quantity(value=1, unit="{tablet}"),
        status=orders_pb.MEDICATION_REQUEST_STATUS_ACTIVE,
    )
    changed = orders_pb.MedicationRequestChanged(medication_request=request, revision=1)
    return pb.DeliverEventsRequest(events=[envelope(changed, source="orders")])
