"""ReconcileCharges against the session's real pharmacy: a handed-over dispense with its charge
reconciles; its charge deleted behind billing's back is MISSING, a second charge of it DUPLICATED,
a charge of a dispense the pharmacy never handed over UNEXPECTED (and UNPRICED while it has no
price)."""

from __future__ import annotations

import datetime as dt
import uuid

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.runtime.server import RunningService
from tests.billing.helpers import (
    CLERK,
    PHARMACY,
    Billing,
    charges_of,
    deliver,
    dispense_changed,
    handed_over,
    missing,
    now,
    stamp,
)
from tests.pharmacy.helpers import Pharmacy
from tests.support import fails

Kind = pb.ChargeDiscrepancy.Kind


def _last_hour() -> types_pb2.Period:
    return types_pb2.Period(
        start_time=stamp(now() - dt.timedelta(hours=1)),
        end_time=stamp(now() + dt.timedelta(minutes=5)),
    )


def _of(report: pb.ReconcileChargesResponse, source: str) -> list[int]:
    return sorted(d.kind for d in report.discrepancies if d.source == source)


async def test_reconcile_reports_missing_duplicated_unexpected_and_unpriced_charges(
    billing: Billing,
    pharmacy: Pharmacy,
    iam_service: RunningService,
    patient: str,
    billing_db: AsyncEngine,
) -> None:
    dispense, medication = await handed_over(pharmacy, iam_service, patient)
    await deliver(
        billing, PHARMACY, dispense_changed(patient, medication, 2, revision=2, name=dispense)
    )
    ask = pb.ReconcileChargesRequest(period=_last_hour())
    clean = await billing.ReconcileCharges(ask, metadata=CLERK)
    assert clean.rendered >= 1
    # Charged, no price yet for this medication: unpriced, but not missing.
    assert _of(clean, dispense) == [Kind.KIND_UNPRICED]

    stray = missing("medicationDispenses")
    await deliver(
        billing, PHARMACY, dispense_changed(patient, medication, 1, revision=2, name=stray)
    )
    [charge] = await charges_of(billing, dispense)
    async with billing_db.begin() as connection:
        # A second charge of the same dispense, under another code (the unique index allows it).
        await connection.execute(
            text(
                "INSERT INTO billing.charge_items (id, patient_id, code_system, code, "
                "quantity_value, quantity_unit, currency, unit_price_minor, total_minor, source, "
                "occurrence_time, status) SELECT :id, patient_id, code_system, 'other', "
                "quantity_value, quantity_unit, currency, 1, 1, source, occurrence_time, "
                "'billable' FROM billing.charge_items WHERE id = :charge"
            ),
            {"id": uuid.uuid4(), "charge": charge.name.removeprefix("chargeItems/")},
        )
    doubled = await billing.ReconcileCharges(ask, metadata=CLERK)
    assert Kind.KIND_DUPLICATED in _of(doubled, dispense)
    assert _of(doubled, stray) == [Kind.KIND_UNEXPECTED, Kind.KIND_UNPRICED]
    assert doubled.duplicated >= 1

    async with billing_db.begin() as connection:
        await connection.execute(
            text("DELETE FROM billing.charge_items WHERE source = :s"), {"s": dispense}
        )
    gone = await billing.ReconcileCharges(ask, metadata=CLERK)
    [found] = [d for d in gone.discrepancies if d.source == dispense]
    assert found.kind == Kind.KIND_MISSING
    assert found.code.code == medication.removeprefix("medications/")
    assert gone.missing >= 1


async def test_reconcile_needs_a_period_of_at_most_31_days(billing: Billing) -> None:
    failure = await fails(billing.ReconcileCharges(pb.ReconcileChargesRequest(), metadata=CLERK))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(failure.fields) == {"period.start_time", "period.end_time"}
    long = types_pb2.Period(start_time=stamp(now() - dt.timedelta(days=40)), end_time=stamp(now()))
    failure = await fails(
        billing.ReconcileCharges(pb.ReconcileChargesRequest(period=long), metadata=CLERK)
    )
    assert failure.fields == ["period.end_time"]
