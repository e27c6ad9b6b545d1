"""Scheduling's migration 0005: appointments booked before scheduling emitted AppointmentChanged
relate their department to the patient once the migration ran and the relay delivered."""

from __future__ import annotations

import uuid

from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService
from his.scheduling.spec import SPEC as SCHEDULING
from tests.care_backfill import backfilled_and_delivered, execute, new_patient, reads
from tests.identity import ISSUER
from tests.support import fresh_database


async def test_an_appointment_booked_before_the_upgrade_relates_its_department_once(
    postgres: EmbeddedPostgres,
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    iam_service: RunningService,
) -> None:
    url = await fresh_database(
        postgres.url, f"his_sched_backfill_{uuid.uuid4().hex[:8]}", "scheduling"
    )
    patient = await new_patient(patient_service)
    ward, schedule, slot, appointment = (uuid.uuid4() for _ in range(4))
    # Booked (in two hours) before the upgrade: no event in the outbox.
    service_type = "'urn:test', 'consult'"
    await execute(
        url,
        "INSERT INTO scheduling.schedules (id, department_id, service_type_system, "
        f"service_type_code, horizon_start) VALUES (:s, :w, {service_type}, now())",
        s=schedule,
        w=ward,
    )
    await execute(
        url,
        "INSERT INTO scheduling.slots (id, schedule_id, department_id, service_type_system, "
        "service_type_code, start_time, end_time, capacity, booked_count) VALUES "
        f"(:id, :s, :w, {service_type}, now() + interval '2 hours', "
        "now() + interval '150 minutes', 1, 1)",
        id=slot,
        s=schedule,
        w=ward,
    )
    await execute(
        url,
        "INSERT INTO scheduling.appointments (id, patient_id, slot_id, department_id, "
        "service_type_system, service_type_code, start_time, end_time) "
        f"SELECT :a, :p, id, department_id, {service_type}, start_time, end_time "
        "FROM scheduling.slots WHERE id = :slot",
        a=appointment,
        p=uuid.UUID(patient.removeprefix("patients/")),
        slot=slot,
    )
    # Older ones: a cancelled appointment and one long over get no event.
    for status, days in (("cancelled", 0), ("fulfilled", -60)):
        await execute(
            url,
            "INSERT INTO scheduling.appointments (id, patient_id, slot_id, department_id, "
            "service_type_system, service_type_code, start_time, end_time, status, "
            "cancel_time) "
            f"SELECT :a, :p, id, department_id, {service_type}, "
            "start_time + make_interval(days => :days), end_time + make_interval(days => :days), "
            ":status, CASE WHEN :status = 'cancelled' THEN now() END "
            "FROM scheduling.slots WHERE id = :slot",
            a=uuid.uuid4(),
            p=uuid.UUID(patient.removeprefix("patients/")),
            slot=slot,
            days=days,
            status=status,
        )
    doctor = ISSUER.staff("DOCTOR", departments=(f"departments/{ward}",))

    async def related() -> bool:
        return await reads(patient_service, patient, doctor)

    await backfilled_and_delivered(
        service="scheduling",
        spec=SCHEDULING,
        url=url,
        before="0004",
        backfill="0005",
        record=f"appointments/{appointment}",
        patient_service=patient_service,
        session_url=database_url,
        others=(audit_service, iam_service),
        check=related,
    )
