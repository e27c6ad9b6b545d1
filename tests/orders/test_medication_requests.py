"""Prescriptions: written against the formulary, changed only by their prescriber, held,
cancelled or entered in error, completed only by the pharmacy."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy.ext.asyncio import AsyncEngine

from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as pb
from tests.emr.helpers import missing
from tests.orders.formulary import TABLET, Formulary
from tests.orders.helpers import (
    DOMAIN,
    Emr,
    Hospital,
    Orders,
    Patients,
    changed_revisions,
    dosage,
    prescribe,
    prescription,
    request_id,
    visit,
)
from tests.support import fails, invalid_in

CHANGED = "his.orders.v1.MedicationRequestChanged"


@pytest.mark.parametrize("value", [0.5, 10.5])
async def test_a_dispense_quantity_is_a_whole_number_of_units(
    orders: Orders, hospital: Hospital, value: float
) -> None:
    assert hospital.doctor is not None
    bad = pb.MedicationRequest(dispense_quantity=types_pb2.Quantity(value=value, unit="{tablet}"))
    fields = await invalid_in(
        DOMAIN,
        orders.CreateMedicationRequest(
            pb.CreateMedicationRequestRequest(medication_request=bad),
            metadata=hospital.doctor.md,
        ),
    )
    # The pharmacy dispenses whole units: such an order could never be completed.
    assert "medication_request.dispense_quantity.value" in fields


@pytest.mark.usefixtures("orders_outbox_held")
async def test_a_prescription_copies_the_formularys_code_and_price_and_the_pharmacy_is_told(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
    orders_db: AsyncEngine,
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    made = await prescribe(orders, hospital, at, formulary.active.name, refills=1)
    assert made.status == pb.MEDICATION_REQUEST_STATUS_ACTIVE
    assert made.prescriber == hospital.doctor.name
    assert made.medication_code == formulary.active.code
    assert made.unit_price == formulary.active.unit_price
    assert made.dosage == dosage()
    assert made.dispensed_quantity == types_pb2.Quantity(value=0, unit=TABLET)
    # 15 tablets, once and one refill.
    assert made.remaining_quantity == types_pb2.Quantity(value=30, unit=TABLET)
    assert made.etag == "1"
    got = await orders.GetMedicationRequest(
        pb.GetMedicationRequestRequest(name=made.name), metadata=hospital.doctor.md
    )
    assert got == made
    assert await changed_revisions(orders_db, CHANGED, made.name) == [1]


async def test_a_repeated_create_returns_the_first_prescription(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    request = pb.CreateMedicationRequestRequest(
        medication_request=prescription(at, formulary.active.name), request_id=request_id()
    )
    first = await orders.CreateMedicationRequest(request, metadata=hospital.doctor.md)
    again = await orders.CreateMedicationRequest(request, metadata=hospital.doctor.md)
    assert again == first


async def test_only_an_active_formulary_medication_in_its_unit_is_prescribed(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    assert hospital.doctor is not None
    at = await visit(patients, emr, hospital)
    cases = {
        "MEDICATION_NOT_FOUND": prescription(at, missing("medications")),
        "MEDICATION_INACTIVE": prescription(at, formulary.inactive.name),
        "DISPENSE_UNIT_MISMATCH": prescription(
            at,
            formulary.active.name,
            dispense_quantity=types_pb2.Quantity(value=1, unit="{box}"),
        ),
    }
    for reason, bad in cases.items():
        failure = await fails(
            orders.CreateMedicationRequest(
                pb.CreateMedicationRequestRequest(medication_request=bad),
                metadata=hospital.doctor.md,
            )
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)


async def test_bad_prescriptions_are_refused_naming_each_field(
    orders: Orders, hospital: Hospital
) -> None:
    assert hospital.doctor is not None
    bad = pb.MedicationRequest(
        patient="patients/x",
        encounter="visits/1",
        medication="drugs/1",
        dosage=pb.Dosage(
            dose=types_pb2.Quantity(value=float("nan"), unit=""),
            route=types_pb2.Coding(),
            frequency_per_day=25,
            duration_days=0,
            instructions="i" * 501,
        ),
        dispense_quantity=types_pb2.Quantity(value=-1, unit="u" * 21),
        refills=13,
    )
    fields = await invalid_in(
        DOMAIN,
        orders.CreateMedicationRequest(
            pb.CreateMedicationRequestRequest(medication_request=bad),
            metadata=hospital.doctor.md,
        ),
    )
    assert set(fields) == {
        "medication_request.patient",
        "medication_request.encounter",
        "medication_request.medication",
        "medication_request.dosage.dose.value",
        "medication_request.dosage.dose.unit",
        "medication_request.dosage.route.system",
        "medication_request.dosage.route.code",
        "medication_request.dosage.frequency_per_day",
        "medication_request.dosage.duration_days",
        "medication_request.dosage.instructions",
        "medication_request.dispense_quantity.value",
        "medication_request.dispense_quantity.unit",
        "medication_request.refills",
    }


@pytest.mark.usefixtures("orders_outbox_held")
async def test_the_prescriber_changes_the_drug_dose_and_quantity_with_the_etag(
    orders: Orders,
    emr: Emr,
    patients: Patients,
    hospital: Hospital,
    formulary: Formulary,
    orders_db: AsyncEngine,
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    at = await visit(patients, emr, hospital)
    made = await prescribe(orders, hospital, at, formulary.active.name)
    changed = await orders.UpdateMedicationRequest(
        pb.UpdateMedicationRequestRequest(
            medication_request=pb.MedicationRequest(
                name=made.name,
                medication=formulary.other.name,
                dosage=dosage(frequency_per_day=1),
                dispense_quantity=types_pb2.Quantity(value=28, unit=TABLET),
                refills=2,
                etag="1",
            ),
            update_mask=FieldMask(paths=["medication", "dosage", "dispense_quantity", "refills"]),
        ),
        metadata=md,
    )
    assert changed.medication == formulary.other.name
    # A new drug brings its own code and today's price.
    assert changed.medication_code == formulary.other.code
    assert changed.unit_price == formulary.other.unit_price
    assert changed.dosage.frequency_per_day == 1
    assert changed.remaining_quantity.value == 28 * 3
    assert changed.etag == "2"
    stale = await fails(
        orders.UpdateMedicationRequest(
            pb.UpdateMedicationRequestRequest(
                medication_request=pb.MedicationRequest(name=made.name, refills=0, etag="1"),
                update_mask=FieldMask(paths=["refills"]),
            ),
            metadata=md,
        )
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert await changed_revisions(orders_db, CHANGED, made.name) == [1, 2]
    assert set(
        await invalid_in(
            DOMAIN,
            orders.UpdateMedicationRequest(
                pb.UpdateMedicationRequestRequest(
                    medication_request=pb.MedicationRequest(name=made.name, refills=99),
                    update_mask=FieldMask(paths=["refills", "unit_price", "status"]),
                ),
                metadata=md,
            ),
        )
    ) == {"update_mask", "medication_request.refills"}


async def test_nobody_but_the_prescriber_changes_a_prescription(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    assert hospital.colleague is not None and hospital.pharmacist is not None
    at = await visit(patients, emr, hospital)
    made = await prescribe(orders, hospital, at, formulary.active.name)
    for who, reason, path in (
        # A doctor of the same clinic may see it, but did not write it.
        (hospital.colleague, "NOT_PRESCRIBER", "refills"),
        # A pharmacist changes none of a prescription's fields.
        (hospital.pharmacist, "PRESCRIPTION_FIELDS_LOCKED", "refills"),
        (hospital.pharmacist, "PRESCRIPTION_FIELDS_LOCKED", "dosage"),
    ):
        failure = await fails(
            orders.UpdateMedicationRequest(
                pb.UpdateMedicationRequestRequest(
                    medication_request=pb.MedicationRequest(
                        name=made.name, refills=1, dosage=dosage()
                    ),
                    update_mask=FieldMask(paths=[path]),
                ),
                metadata=who.md,
            )
        )
        assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)
    for call in (
        orders.CancelMedicationRequest(
            pb.CancelMedicationRequestRequest(name=made.name, reason="x"),
            metadata=hospital.pharmacist.md,
        ),
        orders.HoldMedicationRequest(
            pb.HoldMedicationRequestRequest(name=made.name, reason="x"),
            metadata=hospital.pharmacist.md,
        ),
    ):
        failure = await fails(call)
        assert failure.reason == "PRESCRIPTION_FIELDS_LOCKED"


async def test_hold_resume_cancel_and_entered_in_error(
    orders: Orders, emr: Emr, patients: Patients, hospital: Hospital, formulary: Formulary
) -> None:
    assert hospital.doctor is not None
    md = hospital.doctor.md
    at = await visit(patients, emr, hospital)
    made = await prescribe(orders, hospital, at, formulary.active.name)
    held = await orders.HoldMedicationRequest(
        pb.HoldMedicationRequestRequest(name=made.name, reason="awaiting potassium"), metadata=md
    )
    assert (held.status, held.status_reason) == (
        pb.MEDICATION_REQUEST_STATUS_ON_HOLD,
        "awaiting potassium",
    )
    locked = await fails(
        orders.UpdateMedicationRequest(
            pb.UpdateMedicationRequestRequest(
                medication_request=pb.MedicationRequest(name=made.name, refills=1),
                update_mask=FieldMask(paths=["refills"]),
            ),
            metadata=md,
        )
    )
    assert (locked.code, locked.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_NOT_ACTIVE")
    resumed = await orders.ResumeMedicationRequest(
        pb.ResumeMedicationRequestRequest(name=made.name, etag=held.etag), metadata=md
    )
    assert resumed.status == pb.MEDICATION_REQUEST_STATUS_ACTIVE
    cancelled = await orders.CancelMedicationRequest(
        pb.CancelMedicationRequestRequest(name=made.name, reason="allergy"), metadata=md
    )
    assert (cancelled.status, cancelled.cancel_reason, cancelled.remaining_quantity.value) == (
        pb.MEDICATION_REQUEST_STATUS_CANCELLED,
        "allergy",
        0,
    )
    assert held.remaining_quantity.value == 15  # on hold: still to be dispensed once resumed
    again = await orders.CancelMedicationRequest(
        pb.CancelMedicationRequestRequest(name=made.name, reason="other", etag="1"), metadata=md
    )
    assert again == cancelled
    error = await orders.MarkMedicationRequestEnteredInError(
        pb.MarkMedicationRequestEnteredInErrorRequest(name=made.name, reason="wrong patient"),
        metadata=md,
    )
    assert (error.status, error.cancel_reason, error.status_reason) == (
        pb.MEDICATION_REQUEST_STATUS_ENTERED_IN_ERROR,
        "allergy",
        "wrong patient",
    )
    for call in (
        orders.ResumeMedicationRequest(
            pb.ResumeMedicationRequestRequest(name=made.name), metadata=md
        ),
        orders.CancelMedicationRequest(
            pb.CancelMedicationRequestRequest(name=made.name, reason="x"), metadata=md
        ),
    ):
        failure = await fails(call)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ILLEGAL_TRANSITION",
        )
    completed = await fails(
        orders.CompleteMedicationRequest(
            pb.CompleteMedicationRequestRequest(name=made.name), metadata=md
        )
    )
    assert (completed.code, completed.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "COMPLETED_BY_FULFILLER",
    )
