"""MedicationDispenseChanged: every change of a dispense puts its event for orders in the outbox,
in the same transaction, with the next revision; a refused or replayed call puts none. A hand-over
and a cancellation put the same event (one id) there for billing too; a preparation does not.

orders may or may not run in the session (its relay then deletes delivered rows), so the test
watches the outbox's inserts: a trigger copies each row into a table of its own schema, outside
`pharmacy` (which tables.py must match exactly)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.common.v1 import types_pb2
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from tests.pharmacy.helpers import (
    DOMAIN,
    PHARMACIST,
    Pharmacy,
    create_medication,
    dispensing,
    prescribe,
    receive,
    request_id,
)
from tests.support import fails, invalid_in

_INSTALL = [
    "CREATE SCHEMA IF NOT EXISTS pharmacy_test_capture",
    "CREATE TABLE IF NOT EXISTS pharmacy_test_capture.outbox "
    "(seq bigserial PRIMARY KEY, destination text, event_type text, envelope bytea)",
    """
    CREATE OR REPLACE FUNCTION pharmacy_test_capture.copy() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO pharmacy_test_capture.outbox (destination, event_type, envelope)
      VALUES (NEW.destination, NEW.event_type, NEW.envelope);
      RETURN NEW;
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS capture ON pharmacy.outbox",
    "CREATE TRIGGER capture AFTER INSERT ON pharmacy.outbox "
    "FOR EACH ROW EXECUTE FUNCTION pharmacy_test_capture.copy()",
]
_REMOVE = [
    "DROP TRIGGER IF EXISTS capture ON pharmacy.outbox",
    "DROP SCHEMA IF EXISTS pharmacy_test_capture CASCADE",
]


@pytest.fixture(scope="module")
async def captured(pharmacy_db: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The pharmacy outbox's inserts from now on, copied aside."""
    async with pharmacy_db.begin() as connection:
        for statement in _INSTALL:
            await connection.execute(text(statement))
    yield pharmacy_db
    async with pharmacy_db.begin() as connection:
        for statement in _REMOVE:
            await connection.execute(text(statement))


async def _sent(db: AsyncEngine, dispense: str) -> dict[str, list[EventEnvelope]]:
    """The MedicationDispenseChanged envelopes of one dispense by destination, in insert order."""
    async with db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT destination, envelope FROM pharmacy_test_capture.outbox "
                "WHERE event_type = 'his.pharmacy.v1.MedicationDispenseChanged' ORDER BY seq"
            )
        )
        found: dict[str, list[EventEnvelope]] = {}
        for destination, raw in rows:
            envelope = EventEnvelope.FromString(raw)
            if envelope.subject == dispense:
                found.setdefault(destination, []).append(envelope)
    return found


def _event(envelope: EventEnvelope) -> pb.MedicationDispenseChanged:
    assert envelope.source == "pharmacy"
    event = pb.MedicationDispenseChanged()
    assert envelope.payload.Unpack(event)
    assert envelope.patient == event.medication_dispense.patient
    return event


async def _changes(db: AsyncEngine, dispense: str) -> list[pb.MedicationDispenseChanged]:
    """The MedicationDispenseChanged events of one dispense, in insert order; checks that billing
    got exactly the hand-overs and cancellations among them, the same envelopes (one event id)."""
    sent = await _sent(db, dispense)
    assert set(sent) <= {"orders", "billing"}
    for_orders = sent.get("orders", [])
    billed = [
        envelope
        for envelope in for_orders
        if _event(envelope).medication_dispense.status
        in (pb.MEDICATION_DISPENSE_STATUS_COMPLETED, pb.MEDICATION_DISPENSE_STATUS_CANCELLED)
    ]
    assert sent.get("billing", []) == billed
    return [_event(envelope) for envelope in for_orders]


async def test_dispense_and_hand_over_each_send_their_revision(
    pharmacy: Pharmacy, pharmacy_location: str, captured: AsyncEngine
) -> None:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, pharmacy_location, 10)
    order = await prescribe(pharmacy, medication.name, quantity=6)
    request = dispensing(order.name, 4, stock_item=item.name)
    request.request_id = request_id()
    made = await pharmacy.DispenseMedication(request, metadata=PHARMACIST)
    await pharmacy.DispenseMedication(request, metadata=PHARMACIST)  # a replay: no new event
    done = await pharmacy.HandOverMedicationDispense(
        pb.HandOverMedicationDispenseRequest(name=made.name), metadata=PHARMACIST
    )
    await pharmacy.HandOverMedicationDispense(  # already handed over: no new event
        pb.HandOverMedicationDispenseRequest(name=made.name), metadata=PHARMACIST
    )
    events = await _changes(captured, made.name)
    assert [e.revision for e in events] == [1, 2]
    assert events[0].medication_dispense == made
    assert events[1].medication_dispense == done
    # Billing hears of the hand-over only: the drug is charged when it leaves the pharmacy.
    assert [_event(e).revision for e in (await _sent(captured, made.name))["billing"]] == [2]
    assert events[1].medication_dispense.status == pb.MEDICATION_DISPENSE_STATUS_COMPLETED
    assert events[0].medication_dispense.prescription_remaining_quantity == 2


async def test_cancel_sends_its_revision_and_a_refusal_sends_nothing(
    pharmacy: Pharmacy, pharmacy_location: str, captured: AsyncEngine
) -> None:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, pharmacy_location, 10)
    order = await prescribe(pharmacy, medication.name, quantity=6)
    made = await pharmacy.DispenseMedication(
        dispensing(order.name, 6, stock_item=item.name), metadata=PHARMACIST
    )
    before = await _count(captured)
    refused = await fails(
        pharmacy.DispenseMedication(
            dispensing(order.name, 1, stock_item=item.name), metadata=PHARMACIST
        )
    )
    assert refused.reason == "EXCEEDS_PRESCRIPTION"
    # A refused call leaves nothing in the outbox.
    assert await _count(captured) == before
    cancelled = await pharmacy.CancelMedicationDispense(
        pb.CancelMedicationDispenseRequest(name=made.name, reason="not collected"),
        metadata=PHARMACIST,
    )
    events = await _changes(captured, made.name)
    assert [e.revision for e in events] == [1, 2]
    assert events[1].medication_dispense == cancelled
    assert [_event(e).revision for e in (await _sent(captured, made.name))["billing"]] == [2]
    assert events[1].medication_dispense.prescription_remaining_quantity == 6


async def _count(db: AsyncEngine) -> int:
    """How many dispense changes reached the outbox so far."""
    async with db.connect() as connection:
        count = await connection.scalar(
            text(
                "SELECT count(*) FROM pharmacy_test_capture.outbox "
                "WHERE event_type = 'his.pharmacy.v1.MedicationDispenseChanged'"
            )
        )
    return int(count or 0)


# --- what billing reconciles its drug charges with ---------------------------------------------


def _period(start: dt.datetime | None, end: dt.datetime | None) -> types_pb2.Period:
    period = types_pb2.Period()
    if start is not None:
        period.start_time.FromDatetime(start)
    if end is not None:
        period.end_time.FromDatetime(end)
    return period


async def test_the_dispenses_handed_over_in_a_period_are_listed(
    pharmacy: Pharmacy, pharmacy_location: str
) -> None:
    medication = await create_medication(pharmacy)
    item = await receive(pharmacy, medication.name, pharmacy_location, 10)
    order = await prescribe(pharmacy, medication.name, quantity=6)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    handed, prepared = [
        await pharmacy.DispenseMedication(
            dispensing(order.name, 2, stock_item=item.name), metadata=PHARMACIST
        )
        for _ in range(2)
    ]
    done = await pharmacy.HandOverMedicationDispense(
        pb.HandOverMedicationDispenseRequest(name=handed.name), metadata=PHARMACIST
    )
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    async def listed(period: types_pb2.Period, medication_request: str = "") -> list[str]:
        request = pb.ListMedicationDispensesRequest(
            handed_over_period=period, medication_request=medication_request
        )
        reply = await pharmacy.ListMedicationDispenses(request, metadata=PHARMACIST)
        return [d.name for d in reply.medication_dispenses]

    mine = await listed(_period(start, end), medication_request=order.name)
    assert mine == [done.name]
    # What billing asks: the whole pharmacy's hand-overs of the period, the prepared one left out.
    everyone = await listed(_period(start, end))
    assert done.name in everyone and prepared.name not in everyone
    assert await listed(_period(None, start), medication_request=order.name) == []
    assert await listed(_period(end, None), medication_request=order.name) == []
    assert await listed(_period(start, None), medication_request=order.name) == [done.name]


async def test_a_backwards_hand_over_period_is_invalid(pharmacy: Pharmacy) -> None:
    now = dt.datetime.now(dt.UTC)
    request = pb.ListMedicationDispensesRequest(
        handed_over_period=_period(now, now - dt.timedelta(days=1))
    )
    assert await invalid_in(
        DOMAIN, pharmacy.ListMedicationDispenses(request, metadata=PHARMACIST)
    ) == ["handed_over_period.end_time"]
