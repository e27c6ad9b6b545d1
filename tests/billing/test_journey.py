"""A patient's visit, end to end, and what it is charged: register, book, check in, the encounter,
a lab order and its final result, a prescription and the drug handed over. Three charges follow
through the outboxes (the registration fee, the lab test, the drug) at the price list's prices,
each exactly once: with billing up, with billing down for the whole visit, with billing killed
while a relay is delivering to it, and with every event delivered twice. Reconciliation then
finds nothing missing and nothing charged twice.

The tests share one world (tests/billing/journey_world.py) and run in order; each visit is a new
patient's, so a test looks at its own patient's charges."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from his.billing.v1 import billing_service_pb2 as billing_pb
from his.billing.v1 import billing_service_pb2_grpc as billing_grpc
from his.common.v1 import types_pb2
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.emr.v1 import emr_service_pb2_grpc as emr_grpc
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.lab.v1 import lab_service_pb2 as lab_pb
from his.lab.v1 import lab_service_pb2_grpc as lab_grpc
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.orders.v1 import orders_service_pb2_grpc as orders_grpc
from his.patient.v1 import patient_service_pb2_grpc as patient_grpc
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pharmacy_grpc
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from his.scheduling.v1 import scheduling_service_pb2_grpc as scheduling_grpc
from tests.billing.helpers import CLERK, MEDICATION, SERVICE_TYPES, stamp
from tests.billing.journey_world import World, billing_world, eventually
from tests.conftest import addresses
from tests.emr.helpers import ADMINISTRATOR, new_patient
from tests.identity import REGISTRAR, channel_as
from tests.lab.helpers import GLUCOSE, quantity, specimen
from tests.orders.formulary import Formulary, in_pharmacy
from tests.orders.helpers import Hospital, lab_order, prescription
from tests.orders.helpers import Visit as OrdersVisit
from tests.pharmacy.helpers import dispensing
from tests.scheduling.helpers import (
    create_schedule,
    future_slots,
    generate,
    make_schedule,
    zone_near_midday,
)
from tests.support import blocked_on_a_lock, failure_of

# One worker runs the whole journey (`make pytest` distributes with --dist loadgroup): its tests
# share one world and follow each other.
pytestmark = pytest.mark.xdist_group("billing_journey")

# What the price list says (billing's migration 0002 seeds the first two; the drug's price is the
# journey's own, its code being the id the pharmacy gave the medication): in CNY fen.
GENERAL_PRACTICE = "124"
REGISTRATION_FEE = 2500
GLUCOSE_TEST = 1200
TABLET_PRICE = 150
TABLETS = 15
BILLABLE = billing_pb.CHARGE_ITEM_STATUS_BILLABLE


@dataclass
class Stubs:
    """The world's services as the journey's people call them."""

    patients: Any
    scheduling: Any
    emr: Any
    orders: Any
    lab: Any
    pharmacy: Any
    billing: Any


@dataclass
class Journey:
    """The world, its stubs, the hospital's staff and the medication prescribed."""

    world: World
    stubs: Stubs
    hospital: Hospital
    formulary: Formulary
    # The general practice slot of the clinic's doctor, under way now, that every visit books.
    slot: str
    # When the world was ready: the start of the reconciled period.
    began: dt.datetime
    # The visits made so far (whichever tests ran).
    visits: list[Visit] = field(default_factory=list)


@dataclass(frozen=True)
class Visit:
    """What one visit rendered, by resource name."""

    patient: str
    appointment: str
    encounter: str
    service_request: str
    medication_dispense: str


@pytest.fixture(scope="module")
async def journey(
    postgres: EmbeddedPostgres,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
) -> AsyncIterator[Journey]:
    """The world with every service up, the hospital's staff in the session's iam, a formulary
    in the world's pharmacy and the drug's price in billing's price list."""
    peers = addresses(patient_service, audit_service, iam_service)
    async with (
        billing_world(postgres, "billing_journey", peers) as world,
        AsyncExitStack() as stack,
    ):
        for name in world.ports:
            await world.start(name)

        channels = {}
        for name in world.ports:
            channels[name] = await stack.enter_async_context(
                channel_as(world.address(name), REGISTRAR)
            )
        patients_channel = await stack.enter_async_context(
            channel_as(patient_service.address, REGISTRAR)
        )
        iam_channel = await stack.enter_async_context(
            channel_as(iam_service.address, ADMINISTRATOR)
        )
        stubs = Stubs(
            patients=patient_grpc.PatientServiceStub(patients_channel),
            scheduling=scheduling_grpc.SchedulingServiceStub(channels["scheduling"]),
            emr=emr_grpc.EmrServiceStub(channels["emr"]),
            orders=orders_grpc.OrdersServiceStub(channels["orders"]),
            lab=lab_grpc.LabServiceStub(channels["lab"]),
            pharmacy=pharmacy_grpc.PharmacyServiceStub(channels["pharmacy"]),
            billing=billing_grpc.BillingServiceStub(channels["billing"]),
        )
        hospital = await Hospital(iam_grpc.IamServiceStub(iam_channel)).build()
        formulary = await in_pharmacy(stubs.pharmacy, hospital.pharmacist)
        slot = await _slot_now(stubs.scheduling, hospital)
        await stubs.billing.CreateTariffItem(
            billing_pb.CreateTariffItemRequest(
                tariff_item=billing_pb.TariffItem(
                    code=_drug_code(formulary),
                    unit_price=types_pb2.Money(currency_code="CNY", amount_minor=TABLET_PRICE),
                    effective_time=stamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=365)),
                ),
                request_id=uuid.uuid4().hex,
            ),
            metadata=CLERK,
        )
        yield Journey(world, stubs, hospital, formulary, slot, dt.datetime.now(dt.UTC))


def _drug_code(formulary: Formulary) -> types_pb2.Coding:
    return types_pb2.Coding(
        system=MEDICATION, code=formulary.active.name.removeprefix("medications/")
    )


# --- the visit ---------------------------------------------------------------------------------


async def visit(journey: Journey) -> Visit:
    """One patient's visit, every step through the services' APIs as the staff would."""
    s, hospital = journey.stubs, journey.hospital
    assert hospital.doctor and hospital.lab_technician and hospital.pharmacist
    doctor, tech, pharmacist = hospital.doctor, hospital.lab_technician, hospital.pharmacist
    # Registration and booking at the desk: a general practice slot with the clinic's doctor,
    # under way now.
    patient = await new_patient(s.patients)
    booked = await s.scheduling.BookAppointment(
        scheduling_pb.BookAppointmentRequest(patient=patient, slot=journey.slot)
    )
    await s.scheduling.CheckInAppointment(scheduling_pb.CheckInAppointmentRequest(name=booked.name))

    # The encounter, opened in emr by the check-in's event.
    async def opened() -> emr_pb.Encounter | None:
        found = await s.emr.ListEncounters(
            emr_pb.ListEncountersRequest(appointment=booked.name), metadata=doctor.md
        )
        return found.encounters[0] if found.encounters else None

    encounter = await eventually(opened, "the visit's encounter")
    at = OrdersVisit(patient, encounter.name)

    # A glucose test: ordered, through orders' outbox to the laboratory, resulted and final.
    ordered = await s.orders.CreateServiceRequest(
        orders_pb.CreateServiceRequestRequest(service_request=lab_order(at, hospital.lab)),
        metadata=doctor.md,
    )

    async def in_worklist() -> Any:
        page = await s.lab.ListLabOrders(
            lab_pb.ListLabOrdersRequest(patient=patient), metadata=tech.md
        )
        return next((o for o in page.service_requests if o.name == ordered.name), None)

    await eventually(in_worklist, "the lab order in the worklist")
    taken = await s.lab.CreateSpecimen(
        lab_pb.CreateSpecimenRequest(specimen=specimen([ordered.name], tech.name)),
        metadata=tech.md,
    )
    report = await s.lab.CreateDiagnosticReport(
        lab_pb.CreateDiagnosticReportRequest(
            diagnostic_report=lab_pb.DiagnosticReport(
                service_request=ordered.name, specimens=[taken.name]
            )
        ),
        metadata=tech.md,
    )
    await s.lab.RecordObservations(
        lab_pb.RecordObservationsRequest(
            parent=report.name, observations=[quantity(GLUCOSE, 95, "mg/dL")]
        ),
        metadata=tech.md,
    )
    await s.lab.FinalizeReport(lab_pb.FinalizeReportRequest(name=report.name), metadata=tech.md)

    async def completed() -> bool | None:
        got = await s.orders.GetServiceRequest(
            orders_pb.GetServiceRequestRequest(name=ordered.name), metadata=doctor.md
        )
        return True if got.status == orders_pb.SERVICE_REQUEST_STATUS_COMPLETED else None

    await eventually(completed, "the lab order completed by its report")

    # Fifteen tablets: prescribed, through orders' outbox to the pharmacy, dispensed, handed over.
    lot = await s.pharmacy.ReceiveStock(
        pharmacy_pb.ReceiveStockRequest(
            parent=journey.formulary.active.name,
            location=hospital.pharmacy,
            lot_number=f"JOURNEY-{uuid.uuid4().hex[:8]}",
            expiry_date=types_pb2.Date(year=dt.datetime.now(dt.UTC).year + 1, month=6, day=30),
            quantity=TABLETS,
            request_id=uuid.uuid4().hex,
        ),
        metadata=pharmacist.md,
    )
    written = await s.orders.CreateMedicationRequest(
        orders_pb.CreateMedicationRequestRequest(
            medication_request=prescription(at, journey.formulary.active.name)
        ),
        metadata=doctor.md,
    )

    async def dispensed() -> pharmacy_pb.MedicationDispense | None:
        try:
            made: pharmacy_pb.MedicationDispense = await s.pharmacy.DispenseMedication(
                dispensing(written.name, TABLETS, stock_item=lot.name, location=hospital.pharmacy),
                metadata=pharmacist.md,
            )
            return made
        except grpc.aio.AioRpcError as error:
            # Until the prescription has reached the pharmacy.
            if failure_of(error).reason != "ORDER_NOT_KNOWN":
                raise
            return None

    dispense = await eventually(dispensed, "the prescription at the pharmacy")
    await s.pharmacy.HandOverMedicationDispense(
        pharmacy_pb.HandOverMedicationDispenseRequest(name=dispense.name), metadata=pharmacist.md
    )
    done = Visit(patient, booked.name, encounter.name, ordered.name, dispense.name)
    journey.visits.append(done)
    return done


async def _slot_now(scheduling: Any, hospital: Hospital) -> str:
    """A general practice slot of the clinic's doctor, two hours from an hour ago, for up to
    eight patients (as tests.scheduling.helpers.current_slot, in the clinic's schedule)."""
    assert hospital.doctor is not None
    schedule = await create_schedule(
        scheduling,
        make_schedule(
            department_name=hospital.clinic,
            practitioner_name=hospital.doctor.name,
            horizon_start=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
            code=GENERAL_PRACTICE,
        ),
    )
    zone_name, zone = zone_near_midday()
    opens = dt.datetime.now(zone).replace(second=0, microsecond=0) - dt.timedelta(hours=1)
    closes = opens + dt.timedelta(hours=2)
    slots = await generate(
        scheduling,
        schedule.name,
        first=opens.date(),
        opens=(opens.hour, opens.minute),
        closes=(closes.hour, closes.minute),
        length=120,
        capacity=8,
        time_zone=zone_name,
    )
    assert len(slots) == 1
    return str(slots[0].name)


# --- what billing holds -------------------------------------------------------------------------


async def charges_of(journey: Journey, patient: str) -> list[billing_pb.ChargeItem]:
    reply = await journey.stubs.billing.ListChargeItems(
        billing_pb.ListChargeItemsRequest(patient=patient, page_size=100), metadata=CLERK
    )
    assert not reply.next_page_token
    return list(reply.charge_items)


async def all_charged(journey: Journey, done: Visit) -> list[billing_pb.ChargeItem]:
    """The visit's charges once all three are there."""

    async def three() -> list[billing_pb.ChargeItem] | None:
        found = await charges_of(journey, done.patient)
        return found if len(found) >= 3 else None

    return await eventually(three, f"the three charges of {done.patient}")


def assert_charged_once_at_the_tariffs_prices(
    journey: Journey, done: Visit, charges: list[billing_pb.ChargeItem]
) -> None:
    """Exactly the registration, the lab test and the drug, each once, at the price list's
    prices, billable, each from its own event."""
    by_source = {c.source: c for c in charges}
    assert len(charges) == len(by_source) == 3, [c.source for c in charges]
    registration = by_source[done.appointment]
    lab_test = by_source[done.service_request]
    drug = by_source[done.medication_dispense]
    assert (registration.code.system, registration.code.code) == (SERVICE_TYPES, GENERAL_PRACTICE)
    assert (lab_test.code.system, lab_test.code.code) == (GLUCOSE.system, GLUCOSE.code)
    drug_code = _drug_code(journey.formulary)
    assert (drug.code.system, drug.code.code) == (drug_code.system, drug_code.code)
    expected = {
        done.appointment: (1, REGISTRATION_FEE, REGISTRATION_FEE),
        done.service_request: (1, GLUCOSE_TEST, GLUCOSE_TEST),
        done.medication_dispense: (TABLETS, TABLET_PRICE, TABLETS * TABLET_PRICE),
    }
    for source, (units, unit_price, total) in expected.items():
        charge = by_source[source]
        assert charge.quantity.value == units
        assert (charge.unit_price.currency_code, charge.unit_price.amount_minor) == (
            "CNY",
            unit_price,
        )
        assert charge.total_price.amount_minor == total
        assert charge.status == BILLABLE
        assert charge.patient == done.patient
        assert charge.source_event
        assert not charge.reverses
    assert len({c.source_event for c in charges}) == 3
    assert lab_test.encounter == drug.encounter == done.encounter


# --- the journeys ------------------------------------------------------------------------------


async def test_a_visit_is_charged_its_registration_lab_test_and_drug_once(
    journey: Journey,
) -> None:
    done = await visit(journey)
    await all_charged(journey, done)
    await journey.world.all_delivered_to_billing()
    assert_charged_once_at_the_tariffs_prices(
        journey, done, await charges_of(journey, done.patient)
    )


async def test_billing_down_for_the_whole_visit_charges_it_when_back_once(
    journey: Journey,
) -> None:
    world = journey.world
    await world.stop("billing")
    try:
        done = await visit(journey)
        # Every source stored its charging event; none could be delivered.
        await asyncio.sleep(1.0)
        assert await world.waiting_for_billing() >= 3
    finally:
        await world.start("billing")
    await all_charged(journey, done)
    await world.all_delivered_to_billing()
    assert_charged_once_at_the_tariffs_prices(
        journey, done, await charges_of(journey, done.patient)
    )


async def test_billing_killed_while_a_relay_delivers_to_it_charges_once_after_restart(
    journey: Journey,
) -> None:
    world = journey.world
    # While this lock is held, billing can record an event as received but not charge it: the
    # delivery in flight waits inside billing's transaction until billing is killed.
    async with world.engine.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(text("LOCK TABLE billing.charge_items IN SHARE MODE"))
        done = await visit(journey)
        await blocked_on_a_lock(world.url, "his-billing")
        await world.stop("billing", grace_s=0)
        await transaction.rollback()
    assert await world.waiting_for_billing() >= 1
    await world.start("billing")
    await all_charged(journey, done)
    await world.all_delivered_to_billing()
    assert_charged_once_at_the_tariffs_prices(
        journey, done, await charges_of(journey, done.patient)
    )


async def test_every_event_delivered_twice_charges_nothing_more(journey: Journey) -> None:
    world = journey.world
    done = await visit(journey)
    await all_charged(journey, done)
    await world.all_delivered_to_billing()
    applied = await world.billing_inbox()
    before = {
        name: running.relay.delivered.get("billing", 0)
        for name, running in world.running.items()
        if running.relay is not None and name != "billing"
    }
    stored = await world.captured()
    again = await world.store_again_for_billing()
    # Every event for billing of every visit so far, this one's among them.
    assert again == len(stored) == 3 * len(journey.visits)
    await world.all_delivered_to_billing()
    after = {
        name: running.relay.delivered.get("billing", 0)
        for name, running in world.running.items()
        if running.relay is not None and name != "billing"
    }
    # Delivered (and accepted, not buried as dead letters) a second time ...
    assert sum(after.values()) - sum(before.values()) == again
    # ... and billing applied none of them again.
    assert await world.billing_inbox() == applied
    assert_charged_once_at_the_tariffs_prices(
        journey, done, await charges_of(journey, done.patient)
    )


async def test_reconciliation_finds_nothing_missing_and_nothing_charged_twice(
    journey: Journey,
) -> None:
    if not journey.visits:  # run on its own
        await all_charged(journey, await visit(journey))
    await journey.world.all_delivered_to_billing()
    period = types_pb2.Period()
    period.start_time.FromDatetime(journey.began - dt.timedelta(minutes=1))
    period.end_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    report = await journey.stubs.billing.ReconcileCharges(
        billing_pb.ReconcileChargesRequest(period=period), metadata=CLERK
    )
    assert (report.missing, report.duplicated) == (0, 0), report
    # Every visit's three billable services, all charged, nothing unexplained.
    rendered = 3 * len(journey.visits)
    assert (report.rendered, report.charge_items) == (rendered, rendered), report
    assert list(report.discrepancies) == []


async def test_an_early_check_in_is_reconciled_in_the_period_it_happened(
    journey: Journey,
) -> None:
    s, hospital = journey.stubs, journey.hospital
    assert hospital.doctor is not None
    # A patient who comes in three days before their appointment, and is checked in.
    later = await future_slots(
        s.scheduling,
        day=dt.datetime.now(dt.UTC).date() + dt.timedelta(days=3),
        schedule=make_schedule(
            department_name=hospital.clinic,
            practitioner_name=hospital.doctor.name,
            code=GENERAL_PRACTICE,
        ),
    )
    patient = await new_patient(s.patients)
    booked = await s.scheduling.BookAppointment(
        scheduling_pb.BookAppointmentRequest(patient=patient, slot=later.slot.name)
    )
    await s.scheduling.CheckInAppointment(scheduling_pb.CheckInAppointmentRequest(name=booked.name))

    async def charged() -> list[billing_pb.ChargeItem] | None:
        return await charges_of(journey, patient) or None

    assert [c.source for c in await eventually(charged, "the registration charge")] == [booked.name]
    period = types_pb2.Period()
    period.start_time.FromDatetime(journey.began - dt.timedelta(minutes=1))
    period.end_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    report = await s.billing.ReconcileCharges(
        billing_pb.ReconcileChargesRequest(period=period), metadata=CLERK
    )
    # Checked in (and charged) in the period: rendered in it, whenever the appointment starts.
    assert [d for d in report.discrepancies if d.source == booked.name] == []
