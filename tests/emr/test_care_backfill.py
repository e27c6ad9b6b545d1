"""The EMR's migration 0002: encounters made before the EMR emitted EncounterChanged relate their
department to the patient once the migration ran and the relay delivered."""

from __future__ import annotations

import uuid

from his.emr.spec import SPEC as EMR
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService
from tests.care_backfill import backfilled_and_delivered, execute, new_patient, reads
from tests.identity import ISSUER
from tests.support import fresh_database


async def test_an_encounter_made_before_the_upgrade_relates_its_department_once(
    postgres: EmbeddedPostgres,
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
) -> None:
    url = await fresh_database(postgres.url, f"his_emr_backfill_{uuid.uuid4().hex[:8]}", "emr")
    patient = await new_patient(patient_service)
    patient_id = uuid.UUID(patient.removeprefix("patients/"))
    ward, encounter = uuid.uuid4(), uuid.uuid4()
    # In progress since an hour ago, made before the upgrade: no event in the outbox.
    await execute(
        url,
        "INSERT INTO emr.encounters (id, patient_id, encounter_class, status, department_id, "
        "start_time) VALUES (:e, :p, 'ambulatory', 'in_progress', :w, now() - interval '1 hour')",
        e=encounter,
        p=patient_id,
        w=ward,
    )
    # Entered in error, and finished long ago: no event.
    await execute(
        url,
        "INSERT INTO emr.encounters (id, patient_id, encounter_class, status, department_id, "
        "start_time, end_time, closed_time, entered_in_error_reason) VALUES "
        "(:a, :p, 'ambulatory', 'entered_in_error', :w, now(), NULL, now(), 'wrong patient'), "
        "(:b, :p, 'ambulatory', 'finished', :w, now() - interval '90 days', "
        "now() - interval '89 days', now() - interval '89 days', NULL)",
        a=uuid.uuid4(),
        b=uuid.uuid4(),
        p=patient_id,
        w=ward,
    )
    nurse = ISSUER.staff("NURSE", departments=(f"departments/{ward}",))

    async def related() -> bool:
        return await reads(patient_service, patient, nurse)

    await backfilled_and_delivered(
        service="emr",
        spec=EMR,
        url=url,
        before="0001",
        backfill="0002",
        record=f"encounters/{encounter}",
        patient_service=patient_service,
        session_url=database_url,
        others=(audit_service, iam_service),
        check=related,
    )
