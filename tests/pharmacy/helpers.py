"""Factories of the pharmacy tests: formulary entries, stock, and prescriptions delivered as
orders' relay delivers them (MedicationRequestChanged through DeliverEvents, as the orders
service)."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid
from typing import TYPE_CHECKING, Any, TypeAlias

from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.runtime.outbox import envelope
from tests.identity import ISSUER, metadata

if TYPE_CHECKING:
    from his.pharmacy.v1.pharmacy_service_pb2_grpc import PharmacyServiceAsyncStub

    Pharmacy: TypeAlias = PharmacyServiceAsyncStub
else:
    Pharmacy = Any

DOMAIN = "pharmacy.his"
ATC = "http://www.whocc.no/atc"
SNOMED = "http://snomed.info/sct"
TABLET = types_pb2.Coding(system=SNOMED, code="385055001", display="Tablet")
PHARMACIST_TOKEN = ISSUER.staff("PHARMACIST")
PHARMACIST = metadata(PHARMACIST_TOKEN)
ORDERS = metadata(ISSUER.service("orders"))
_counter = itertools.count(1)


def request_id() -> str:
    """A fresh idempotency key."""
    return f"pharmacy-{next(_counter)}-{uuid.uuid4().hex}"


def missing(collection: str) -> str:
    """A well-formed name of a resource that does not exist."""
    return f"{collection}/{uuid.uuid4()}"


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def date(value: dt.date) -> types_pb2.Date:
    return types_pb2.Date(year=value.year, month=value.month, day=value.day)


def medication(
    *, atc: str = "N02BE01", display_name: str = "Paracetamol 500 mg tablet", price: int = 25
) -> pb.Medication:
    """A valid formulary entry; its strength is random so entries never collide."""
    return pb.Medication(
        code=types_pb2.Coding(system=ATC, code=atc, display="paracetamol"),
        display_name=display_name,
        form=TABLET,
        strength=types_pb2.Quantity(value=random.randint(1, 10**8) / 10, unit="mg"),
        dispense_unit="{tablet}",
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=price),
    )


async def create_medication(pharmacy: Pharmacy, **kw: Any) -> pb.Medication:
    """A new formulary entry, created by a pharmacist."""
    return await pharmacy.CreateMedication(
        pb.CreateMedicationRequest(medication=medication(**kw)), metadata=PHARMACIST
    )


async def receive(
    pharmacy: Pharmacy,
    medication_name: str,
    location: str,
    quantity: int,
    *,
    lot: str | None = None,
    expires_in_days: int = 365,
) -> pb.StockItem:
    """A delivery of one lot into `location`."""
    return await pharmacy.ReceiveStock(
        pb.ReceiveStockRequest(
            parent=medication_name,
            location=location,
            lot_number=lot or f"LOT-{uuid.uuid4().hex[:10]}",
            expiry_date=date(today() + dt.timedelta(days=expires_in_days)),
            quantity=quantity,
        ),
        metadata=PHARMACIST,
    )


def medication_request(
    medication_name: str,
    *,
    name: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    prescriber: str = "",
    quantity: float = 10,
    refills: int = 0,
    status: int = orders_pb.MEDICATION_REQUEST_STATUS_ACTIVE,
    price: int = 25,
) -> orders_pb.MedicationRequest:
    """A medication request as orders would send it."""
    return orders_pb.MedicationRequest(
        name=name or missing("medicationRequests"),
        patient=patient or missing("patients"),
        encounter=encounter or missing("encounters"),
        prescriber=prescriber,
        medication=medication_name,
        dosage=orders_pb.Dosage(
            dose=types_pb2.Quantity(value=1, unit="{tablet}"),
            route=types_pb2.Coding(system=SNOMED, code="26643006"),
            frequency_per_day=3,
        ),
        dispense_quantity=types_pb2.Quantity(value=quantity, unit="{tablet}"),
        refills=refills,
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=price),
        status=status,  # type: ignore[arg-type]
    )


def changed(request: orders_pb.MedicationRequest, revision: int) -> Any:
    """The envelope orders' outbox would hold for this revision of `request`."""
    return envelope(
        orders_pb.MedicationRequestChanged(medication_request=request, revision=revision),
        source="orders",
        subject=request.name,
        patient=request.patient,
    )


async def deliver(pharmacy: Pharmacy, *events: Any) -> pb.DeliverEventsResponse:
    """DeliverEvents as the orders service's relay."""
    return await pharmacy.DeliverEvents(
        pb.DeliverEventsRequest(events=list(events)), metadata=ORDERS
    )


async def prescribe(
    pharmacy: Pharmacy, medication_name: str, **kw: Any
) -> orders_pb.MedicationRequest:
    """A medication request delivered to the pharmacy (revision 1)."""
    request = medication_request(medication_name, **kw)
    await deliver(pharmacy, changed(request, 1))
    return request


def dispensing(
    request: str, quantity: int, *, stock_item: str = "", location: str = ""
) -> pb.DispenseMedicationRequest:
    """A DispenseMedication request."""
    return pb.DispenseMedicationRequest(
        medication_dispense=pb.MedicationDispense(
            medication_request=request, stock_item=stock_item, location=location, quantity=quantity
        )
    )


async def on_hand(pharmacy: Pharmacy, stock_item: str) -> int:
    """The quantity on hand of a stock item now."""
    item = await pharmacy.GetStockItem(pb.GetStockItemRequest(name=stock_item), metadata=PHARMACIST)
    return item.quantity_on_hand
