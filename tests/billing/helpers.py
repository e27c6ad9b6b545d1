"""Factories of the billing tests: events as the source services' relays deliver them, manual
charges, priced codes, invoices and payments made by a billing clerk."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.outbox import envelope
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from tests.emr.helpers import ADMINISTRATOR
from tests.iam.helpers import make_department
from tests.identity import ISSUER, channel_as, metadata
from tests.pharmacy.helpers import (
    PHARMACIST,
    Pharmacy,
    create_medication,
    dispensing,
    prescribe,
    receive,
)

if TYPE_CHECKING:
    from his.billing.v1.billing_service_pb2_grpc import BillingServiceAsyncStub

    Billing: TypeAlias = BillingServiceAsyncStub
else:
    Billing = Any

DOMAIN = "billing.his"
CURRENCY = "CNY"
LOINC = "http://loinc.org"
SERVICE_TYPES = "http://terminology.hl7.org/CodeSystem/service-type"
MEDICATION = "urn:his:medication"
CLERK_TOKEN = ISSUER.staff("BILLING_CLERK")
CLERK = metadata(CLERK_TOKEN)
SCHEDULING = metadata(ISSUER.service("scheduling"))
ORDERS = metadata(ISSUER.service("orders"))
PHARMACY = metadata(ISSUER.service("pharmacy"))
_counter = itertools.count(1)


def request_id() -> str:
    """A fresh idempotency key."""
    return f"billing-{next(_counter)}-{uuid.uuid4().hex}"


def missing(collection: str) -> str:
    """A well-formed name of a resource that does not exist."""
    return f"{collection}/{uuid.uuid4()}"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stamp(value: dt.datetime) -> Timestamp:
    made = Timestamp()
    made.FromDatetime(value)
    return made


def cny(amount: int) -> types_pb2.Money:
    return types_pb2.Money(currency_code=CURRENCY, amount_minor=amount)


def unique_code(system: str = "urn:test:billing") -> types_pb2.Coding:
    """A code no other test prices."""
    return types_pb2.Coding(system=system, code=f"T-{uuid.uuid4().hex[:12]}", display="test")


async def price(
    billing: Billing, code: types_pb2.Coding, amount: int, *, since: dt.datetime | None = None
) -> pb.TariffItem:
    """A tariff item for `code` in force from `since` (default: a year ago)."""
    effective = since or now() - dt.timedelta(days=365)
    return await billing.CreateTariffItem(
        pb.CreateTariffItemRequest(
            tariff_item=pb.TariffItem(
                code=code, unit_price=cny(amount), effective_time=stamp(effective)
            )
        ),
        metadata=CLERK,
    )


def charge_item(
    patient: str, *, amount: int = 1000, quantity: float = 1, **kw: Any
) -> pb.ChargeItem:
    """A valid manual charge item."""
    return pb.ChargeItem(
        patient=patient,
        code=kw.pop("code", None) or unique_code(),
        quantity=types_pb2.Quantity(value=quantity, unit=kw.pop("unit", "1")),
        unit_price=cny(amount),
        **kw,
    )


async def charge(billing: Billing, patient: str, **kw: Any) -> pb.ChargeItem:
    """A BILLABLE manual charge, made by a clerk."""
    return await billing.CreateChargeItem(
        pb.CreateChargeItemRequest(charge_item=charge_item(patient, **kw)), metadata=CLERK
    )


async def invoice(billing: Billing, patient: str, *charges: str, **kw: Any) -> pb.Invoice:
    """A draft invoice of the listed charges (all billable ones when none are listed)."""
    return await billing.CreateInvoice(
        pb.CreateInvoiceRequest(
            invoice=pb.Invoice(patient=patient, charge_items=list(charges)), **kw
        ),
        metadata=CLERK,
    )


async def issued(billing: Billing, patient: str, *amounts: int) -> pb.Invoice:
    """An issued invoice of new charges of these amounts."""
    names = [(await charge(billing, patient, amount=a)).name for a in amounts]
    draft = await invoice(billing, patient, *names)
    return await billing.IssueInvoice(pb.IssueInvoiceRequest(name=draft.name), metadata=CLERK)


def payment(amount: int, method: int = pb.PAYMENT_METHOD_CASH, reference: str = "") -> pb.Payment:
    return pb.Payment(amount=cny(amount), method=method, external_reference=reference)  # type: ignore[arg-type]


async def pay(billing: Billing, invoice_name: str, amount: int, **kw: Any) -> pb.Payment:
    """A cash payment of `amount` against the invoice."""
    return await billing.RecordPayment(
        pb.RecordPaymentRequest(parent=invoice_name, payment=payment(amount), **kw),
        metadata=CLERK,
    )


async def get_invoice(billing: Billing, name: str) -> pb.Invoice:
    return await billing.GetInvoice(pb.GetInvoiceRequest(name=name), metadata=CLERK)


async def charges_of(billing: Billing, source: str) -> list[pb.ChargeItem]:
    """The charge items of one source resource."""
    found = await billing.ListChargeItems(
        pb.ListChargeItemsRequest(source=source, page_size=100), metadata=CLERK
    )
    return list(found.charge_items)


# --- events as the sources' relays deliver them -------------------------------------------------


def checked_in(
    patient: str, code: types_pb2.Coding, *, arrived: dt.datetime | None = None, **kw: Any
) -> Any:
    """The envelope of scheduling's AppointmentCheckedIn for a new appointment."""
    appointment = scheduling_pb.Appointment(
        name=kw.pop("name", None) or missing("appointments"),
        patient=patient,
        department=kw.pop("department", None) or missing("departments"),
        service_type=code,
        status=scheduling_pb.APPOINTMENT_STATUS_ARRIVED,
        arrive_time=stamp(arrived or now()),
        **kw,
    )
    event = scheduling_pb.AppointmentCheckedIn(appointment=appointment)
    return envelope(event, source="scheduling", subject=appointment.name, patient=patient)


def order_changed(
    patient: str,
    code: types_pb2.Coding,
    *,
    revision: int,
    status: int = orders_pb.SERVICE_REQUEST_STATUS_COMPLETED,
    name: str | None = None,
    when: dt.datetime | None = None,
) -> Any:
    """The envelope of orders' ServiceRequestChanged (a lab order) at `revision`."""
    order = orders_pb.ServiceRequest(
        name=name or missing("serviceRequests"),
        patient=patient,
        encounter=missing("encounters"),
        requester=missing("staff"),
        code=code,
        status=status,  # type: ignore[arg-type]
        reason=types_pb2.Coding(system="http://hl7.org/fhir/sid/icd-10", code="I10"),
        note="clinical note that billing must not keep",
        performer=missing("departments"),
        update_time=stamp(when or now()),
    )
    event = orders_pb.ServiceRequestChanged(service_request=order, revision=revision)
    return envelope(event, source="orders", subject=order.name, patient=patient)


def dispense_changed(
    patient: str,
    medication: str,
    quantity: int,
    *,
    revision: int,
    status: int = pharmacy_pb.MEDICATION_DISPENSE_STATUS_COMPLETED,
    name: str | None = None,
    when: dt.datetime | None = None,
) -> Any:
    """The envelope of pharmacy's MedicationDispenseChanged at `revision`."""
    completed = status == pharmacy_pb.MEDICATION_DISPENSE_STATUS_COMPLETED
    dispense = pharmacy_pb.MedicationDispense(
        name=name or missing("medicationDispenses"),
        medication_request=missing("medicationRequests"),
        patient=patient,
        encounter=missing("encounters"),
        medication=medication,
        location=missing("departments"),
        quantity=quantity,
        unit_price=cny(25),
        status=status,  # type: ignore[arg-type]
        handed_over_time=stamp(when or now()) if completed else None,
    )
    event = pharmacy_pb.MedicationDispenseChanged(medication_dispense=dispense, revision=revision)
    return envelope(event, source="pharmacy", subject=dispense.name, patient=patient)


async def deliver(billing: Billing, caller: Any, *events: Any) -> pb.DeliverEventsResponse:
    """DeliverEvents as the source service's relay (`caller`: its metadata)."""
    return await billing.DeliverEvents(
        pb.DeliverEventsRequest(events=list(events)), metadata=caller
    )


def source_of(event: Any) -> str:
    """The source resource name of an event's charge (the envelope's subject)."""
    return str(event.subject)


# --- what the pharmacy really rendered -------------------------------------------------------


async def handed_over(
    pharmacy: Pharmacy, iam_service: RunningService, patient: str
) -> tuple[str, str]:
    """A dispense the pharmacy handed over just now (and its medication), not charged yet."""
    async with channel_as(iam_service.address, ADMINISTRATOR) as channel:
        location = await iam_grpc.IamServiceStub(channel).CreateDepartment(
            iam_pb.CreateDepartmentRequest(
                department=make_department(iam_pb.DEPARTMENT_KIND_PHARMACY)
            )
        )
    drug = await create_medication(pharmacy)
    lot = await receive(pharmacy, drug.name, location.name, 10)
    order = await prescribe(pharmacy, drug.name, patient=patient)
    made = await pharmacy.DispenseMedication(
        dispensing(order.name, 2, stock_item=lot.name), metadata=PHARMACIST
    )
    done = await pharmacy.HandOverMedicationDispense(
        pharmacy_pb.HandOverMedicationDispenseRequest(name=made.name), metadata=PHARMACIST
    )
    return str(done.name), drug.name
