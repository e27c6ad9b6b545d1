"""The orders records of the security matrix, written behind orders' back: CreateServiceRequest
and CreateMedicationRequest would ask iam and the pharmacy about a laboratory and a medication
that exist only in the callers' tokens. Each order is of the world's patient, in the world's
encounter (DEPARTMENT_A, attended by PRACTITIONER), placed by NOTE_AUTHOR and performed by
DEPARTMENT_A's laboratory."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from tests.security.helpers import DEPARTMENT_A, NOTE_AUTHOR, PRACTITIONER_ID, World

_FACTS = {
    "department": DEPARTMENT_A.removeprefix("departments/"),
    "attending": PRACTITIONER_ID,
    "author": NOTE_AUTHOR.subject.removeprefix("staff/"),
}


async def _insert(world: World, statement: str, **values: object) -> uuid.UUID:
    ident = uuid.uuid4()
    engine = create_async_engine(async_url(world.database_url), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(statement),
                {
                    "id": ident,
                    "patient": world.patient.removeprefix("patients/"),
                    "encounter": world.encounter.removeprefix("encounters/"),
                    **_FACTS,
                    **values,
                },
            )
    finally:
        await engine.dispose()
    return ident


async def fresh_service_request(world: World) -> str:
    """A new ACTIVE lab order of the world's patient."""
    ident = await _insert(
        world,
        "INSERT INTO orders.service_requests (id, patient_id, encounter_id, requester_id, "
        "performer_id, department_id, attending_id, encounter_class, code_system, code, "
        "priority, status) VALUES (:id, :patient, :encounter, :author, :department, "
        ":department, :attending, 'outpatient', 'http://loinc.org', '2345-7', 'routine', "
        "'active')",
    )
    return f"serviceRequests/{ident}"


async def fresh_medication_request(world: World) -> str:
    """A new ACTIVE prescription of the world's patient (15 tablets, no refills)."""
    ident = await _insert(
        world,
        "INSERT INTO orders.medication_requests (id, patient_id, encounter_id, prescriber_id, "
        "department_id, attending_id, encounter_class, medication_id, atc_system, atc_code, "
        "dose_value, dose_unit, route_system, route_code, frequency_per_day, duration_days, "
        "dispense_value, dispense_unit, refills, price_currency, price_minor, status) VALUES "
        "(:id, :patient, :encounter, :author, :department, :attending, 'outpatient', "
        ":medication, 'http://www.whocc.no/atc', 'N02BE01', 500, 'mg', "
        "'http://snomed.info/sct', '26643006', 3, 5, 15, '{tablet}', 0, 'CNY', 35, 'active')",
        medication=uuid.uuid4(),
    )
    return f"medicationRequests/{ident}"


async def finished_encounter(world: World) -> str:
    """A FINISHED encounter of the world's patient in DEPARTMENT_A attended by PRACTITIONER: an
    allowed caller's order in it is refused as ENCOUNTER_NOT_OPEN, asking no pharmacy."""
    ident = await _insert(
        world,
        "INSERT INTO emr.encounters (id, patient_id, encounter_class, status, department_id, "
        "practitioner_id, start_time, end_time, closed_time) VALUES (:id, :patient, "
        "'ambulatory', 'finished', :department, :attending, now(), now(), now())",
    )
    return f"encounters/{ident}"
