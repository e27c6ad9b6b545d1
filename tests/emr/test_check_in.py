"""Check-in → encounter, exactly once, through scheduling's outbox.

Scheduling stores an AppointmentCheckedIn event with the status change; its relay delivers it to
emr as CreateEncounter with the event id as request id. However often it is delivered, and whether
or not emr was up at check-in time, each check-in opens exactly one encounter.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.emr.spec import SPEC as EMR
from his.emr.v1 import emr_service_pb2 as pb
from his.emr.v1 import emr_service_pb2_grpc as emr_grpc
from his.iam.spec import SPEC as IAM
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.patient.spec import SPEC as PATIENT
from his.patient.v1 import patient_service_pb2_grpc as patient_grpc
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.outbox import envelope
from his.runtime.server import RunningService, start
from his.scheduling.check_in import emr_delivery
from his.scheduling.spec import SPEC as SCHEDULING
from his.scheduling.v1 import scheduling_service_pb2 as spb
from his.scheduling.v1 import scheduling_service_pb2_grpc as scheduling_grpc
from tests.conftest import addresses, service_config
from tests.emr.helpers import Clinic, Emr, Patients, new_patient
from tests.iam.helpers import make_department, make_staff
from tests.identity import ISSUER, channel_as
from tests.scheduling.helpers import Stub as Scheduling
from tests.scheduling.helpers import active_patient, future_slots, make_schedule
from tests.support import delivered, fails, free_port, fresh_database


async def _encounters_of(emr_db: AsyncEngine, appointment: str) -> int:
    async with emr_db.connect() as connection:
        return int(
            await connection.scalar(
                text("SELECT count(*) FROM emr.encounters WHERE appointment_id = :id"),
                {"id": appointment.removeprefix("appointments/")},
            )
        )


async def test_a_check_in_opens_the_visits_encounter_once(
    emr: Emr,
    scheduling: Scheduling,
    patients: Patients,
    clinic: Clinic,
    scheduling_service: RunningService,
    emr_db: AsyncEngine,
) -> None:
    doctor = clinic.doctor
    assert doctor is not None and scheduling_service.relay is not None
    slots = await future_slots(
        scheduling,
        schedule=make_schedule(department_name=clinic.clinic, practitioner_name=doctor.name),
    )
    patient = await new_patient(patients)
    booked = await scheduling.BookAppointment(
        spb.BookAppointmentRequest(patient=patient, slot=slots.slots[0].name)
    )
    await scheduling.CheckInAppointment(spb.CheckInAppointmentRequest(name=booked.name))
    # A repeated check-in changes nothing, so it tells emr nothing either.
    await scheduling.CheckInAppointment(spb.CheckInAppointmentRequest(name=booked.name))
    await delivered(scheduling_service.relay)
    found = await emr.ListEncounters(
        pb.ListEncountersRequest(appointment=booked.name), metadata=doctor.md
    )
    assert len(found.encounters) == 1
    made = found.encounters[0]
    assert made.patient == patient
    assert made.department == clinic.clinic
    assert made.attending_practitioner == doctor.name
    assert made.encounter_class == pb.ENCOUNTER_CLASS_AMBULATORY
    assert made.status == pb.ENCOUNTER_STATUS_ARRIVED
    assert await _encounters_of(emr_db, booked.name) == 1


async def test_200_concurrent_duplicate_deliveries_make_one_encounter(
    emr: Emr,
    scheduling: Scheduling,
    patients: Patients,
    clinic: Clinic,
    scheduling_service: RunningService,
    emr_db: AsyncEngine,
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    slots = await future_slots(
        scheduling,
        schedule=make_schedule(department_name=clinic.clinic, practitioner_name=doctor.name),
    )
    booked = await scheduling.BookAppointment(
        spb.BookAppointmentRequest(patient=await new_patient(patients), slot=slots.slots[0].name)
    )
    event = envelope(
        spb.AppointmentCheckedIn(appointment=booked), source="scheduling", subject=booked.name
    )
    # scheduling's own deliverer, speaking as scheduling, as its relay does.
    deliver = emr_delivery(scheduling_service.clients)
    await asyncio.gather(*(deliver([event]) for _ in range(200)))
    assert await _encounters_of(emr_db, booked.name) == 1
    found = await emr.ListEncounters(
        pb.ListEncountersRequest(appointment=booked.name), metadata=doctor.md
    )
    assert len(found.encounters) == 1


async def test_a_service_other_than_scheduling_cannot_open_encounters(
    emr_service: RunningService, clinic: Clinic, patients: Patients
) -> None:
    async with channel_as(emr_service.address, ISSUER.service("billing")) as channel:
        stub = emr_grpc.EmrServiceStub(channel)
        request = pb.CreateEncounterRequest(
            encounter=pb.Encounter(
                patient=await new_patient(patients),
                department=clinic.clinic,
                encounter_class=pb.ENCOUNTER_CLASS_AMBULATORY,
                status=pb.ENCOUNTER_STATUS_ARRIVED,
                appointment=f"appointments/{uuid.uuid4()}",
            )
        )
        failure = await fails(stub.CreateEncounter(request))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED
        assert failure.reason == "SERVICE_NOT_PERMITTED"


# --- emr down at check-in time ------------------------------------------------------------------


@pytest.fixture
async def outage_world(postgres: EmbeddedPostgres) -> AsyncIterator[dict[str, object]]:
    """patient, iam and scheduling on a database of their own (security off: no audit), and
    the port emr will listen on, with nothing listening there yet (nor at billing's)."""
    url = await fresh_database(postgres.url, "emr_outage", "patient", "iam", "scheduling", "emr")
    off = {"HIS_SECURITY": "off"}
    emr_port = free_port()
    patient = await start(PATIENT, service_config("patient", **off), url)
    iam = await start(IAM, service_config("iam", **off), url)
    scheduling = await start(
        SCHEDULING,
        service_config(
            "scheduling",
            **off,
            **addresses(patient, iam),
            HIS_EMR_ADDR=f"localhost:{emr_port}",
            # Billing stays away the whole test: its share of the events must not hold emr's up.
            HIS_BILLING_ADDR=f"localhost:{free_port()}",
        ),
        url,
    )
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    world: dict[str, object] = {
        "url": url,
        "emr_port": emr_port,
        "patient": patient,
        "iam": iam,
        "scheduling": scheduling,
        "engine": engine,
    }
    try:
        yield world
    finally:
        await engine.dispose()
        for running in (scheduling, iam, patient):
            await running.stop(grace_s=1)


async def test_check_ins_while_emr_is_down_open_their_encounters_when_it_is_back(
    outage_world: dict[str, object],
) -> None:
    patient, iam, scheduling = (outage_world[name] for name in ("patient", "iam", "scheduling"))
    assert isinstance(patient, RunningService) and isinstance(iam, RunningService)
    assert isinstance(scheduling, RunningService) and scheduling.relay is not None
    engine = outage_world["engine"]
    assert isinstance(engine, AsyncEngine)
    token = "unused"  # security is off in this world: no token is checked
    async with (
        channel_as(iam.address, token) as iam_channel,
        channel_as(patient.address, token) as patient_channel,
        channel_as(scheduling.address, token) as scheduling_channel,
    ):
        directory = iam_grpc.IamServiceStub(iam_channel)
        department = await directory.CreateDepartment(
            iam_pb.CreateDepartmentRequest(department=make_department())
        )
        doctor = await directory.CreateStaffMember(
            iam_pb.CreateStaffMemberRequest(staff_member=make_staff())
        )
        desk = scheduling_grpc.SchedulingServiceStub(scheduling_channel)
        people = patient_grpc.PatientServiceStub(patient_channel)
        slots = await future_slots(
            desk,
            count=6,
            schedule=make_schedule(department_name=department.name, practitioner_name=doctor.name),
        )
        appointments = []
        for slot in slots.slots:
            booked = await desk.BookAppointment(
                spb.BookAppointmentRequest(patient=await active_patient(people), slot=slot.name)
            )
            await desk.CheckInAppointment(spb.CheckInAppointmentRequest(name=booked.name))
            appointments.append(booked.name)
    # emr is down: the check-ins succeeded, their events wait in scheduling's outbox.
    await asyncio.sleep(1.0)
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text("SELECT count(*) FROM scheduling.outbox WHERE destination = 'emr'")
        )
        assert waiting == len(appointments)
        assert await connection.scalar(text("SELECT count(*) FROM emr.encounters")) == 0
    config = service_config(
        "emr",
        HIS_SECURITY="off",
        HIS_PORT=str(outage_world["emr_port"]),
        **addresses(patient, iam, scheduling),
    )
    emr = await start(EMR, config, str(outage_world["url"]))
    try:
        await _delivered_to(engine, "emr", timeout_s=60)
    finally:
        await emr.stop(grace_s=1)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT appointment_id::text, count(*) FROM emr.encounters "
                    "GROUP BY appointment_id"
                )
            )
        ).all()
        # Billing is still away: its copies of the events wait, none given up.
        for_billing = (
            await connection.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE dead_at IS NOT NULL) "
                    "FROM scheduling.outbox WHERE destination = 'billing'"
                )
            )
        ).one()
    assert {f"appointments/{a}": n for a, n in rows} == dict.fromkeys(appointments, 1)
    assert tuple(for_billing) == (len(appointments), 0)


async def _delivered_to(engine: AsyncEngine, destination: str, *, timeout_s: float) -> None:
    """Wait until scheduling's outbox holds nothing for `destination` (its relay delivered it)."""
    async with asyncio.timeout(timeout_s):
        while True:
            async with engine.connect() as connection:
                left = await connection.scalar(
                    text("SELECT count(*) FROM scheduling.outbox WHERE destination = :to"),
                    {"to": destination},
                )
            if not left:
                return
            await asyncio.sleep(0.1)


async def test_one_live_encounter_per_appointment_and_a_later_check_in_finds_it(
    emr: Emr,
    scheduling: Scheduling,
    patients: Patients,
    clinic: Clinic,
    scheduling_service: RunningService,
    emr_db: AsyncEngine,
) -> None:
    doctor = clinic.doctor
    assert doctor is not None and scheduling_service.relay is not None
    slots = await future_slots(
        scheduling,
        schedule=make_schedule(department_name=clinic.clinic, practitioner_name=doctor.name),
    )
    patient = await new_patient(patients)
    booked = await scheduling.BookAppointment(
        spb.BookAppointmentRequest(patient=patient, slot=slots.slots[0].name)
    )
    # The clinician opens the visit by hand before the patient checks in.
    opened = await emr.CreateEncounter(
        pb.CreateEncounterRequest(
            encounter=pb.Encounter(
                patient=patient,
                department=clinic.clinic,
                attending_practitioner=doctor.name,
                encounter_class=pb.ENCOUNTER_CLASS_AMBULATORY,
                status=pb.ENCOUNTER_STATUS_PLANNED,
                appointment=booked.name,
            )
        ),
        metadata=doctor.md,
    )
    again = await fails(
        emr.CreateEncounter(
            pb.CreateEncounterRequest(
                encounter=pb.Encounter(
                    patient=patient,
                    department=clinic.clinic,
                    encounter_class=pb.ENCOUNTER_CLASS_AMBULATORY,
                    status=pb.ENCOUNTER_STATUS_ARRIVED,
                    appointment=booked.name,
                )
            ),
            metadata=doctor.md,
        )
    )
    assert (again.code, again.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "APPOINTMENT_HAS_ENCOUNTER",
    )
    someone_else = await fails(
        emr.CreateEncounter(
            pb.CreateEncounterRequest(
                encounter=pb.Encounter(
                    patient=await new_patient(patients),
                    department=clinic.clinic,
                    encounter_class=pb.ENCOUNTER_CLASS_AMBULATORY,
                    status=pb.ENCOUNTER_STATUS_ARRIVED,
                    appointment=booked.name,
                )
            ),
            metadata=doctor.md,
        )
    )
    assert (someone_else.code, someone_else.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "APPOINTMENT_MISMATCH",
    )
    # The check-in's event finds the visit open already: that is what it asked for, no dead letter.
    await scheduling.CheckInAppointment(spb.CheckInAppointmentRequest(name=booked.name))
    await delivered(scheduling_service.relay)
    assert await _encounters_of(emr_db, booked.name) == 1
    async with emr_db.connect() as connection:
        dead = await connection.scalar(
            text(
                "SELECT count(*) FROM scheduling.outbox WHERE destination = 'emr' "
                "AND dead_at IS NOT NULL AND envelope LIKE :subject"
            ),
            {"subject": f"%{booked.name}%".encode()},
        )
    assert dead == 0
    assert opened.appointment == booked.name


async def test_an_unreachable_patient_service_is_unavailable_not_internal(
    database_url: str,
    iam_service: RunningService,
    audit_service: RunningService,
    scheduling_service: RunningService,
    clinic: Clinic,
) -> None:
    doctor = clinic.doctor
    assert doctor is not None
    config = service_config(
        "emr",
        **addresses(iam_service, audit_service, scheduling_service),
        HIS_PATIENT_ADDR=f"localhost:{free_port()}",
        HIS_CLIENT_MAX_ATTEMPTS="1",
    )
    running = await start(EMR, config, database_url)
    try:
        async with channel_as(running.address, doctor.token) as channel:
            failure = await fails(
                emr_grpc.EmrServiceStub(channel).CreateEncounter(
                    pb.CreateEncounterRequest(
                        encounter=pb.Encounter(
                            patient=f"patients/{uuid.uuid4()}",
                            department=clinic.clinic,
                            attending_practitioner=doctor.name,
                            encounter_class=pb.ENCOUNTER_CLASS_EMERGENCY,
                            status=pb.ENCOUNTER_STATUS_ARRIVED,
                        )
                    )
                )
            )
    finally:
        await running.stop(grace_s=1)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert failure.metadata.get("dependency") == "patient"


async def test_an_unreachable_iam_is_unavailable_not_internal(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    scheduling_service: RunningService,
    patients: Patients,
    clinic: Clinic,
) -> None:
    # iam answers the department's kind and whether the attending practitioner exists; when it
    # is away (and with it the key set of tokens not seen before), the caller learns it is away.
    doctor = clinic.doctor
    assert doctor is not None
    patient = await new_patient(patients)
    config = service_config(
        "emr",
        **addresses(patient_service, audit_service, scheduling_service),
        HIS_IAM_ADDR=f"localhost:{free_port()}",
        HIS_CLIENT_MAX_ATTEMPTS="1",
    )
    running = await start(EMR, config, database_url)
    try:
        async with channel_as(running.address, doctor.token) as channel:
            failure = await fails(
                emr_grpc.EmrServiceStub(channel).CreateEncounter(
                    pb.CreateEncounterRequest(
                        encounter=pb.Encounter(
                            patient=patient,
                            department=clinic.clinic,
                            attending_practitioner=doctor.name,
                            encounter_class=pb.ENCOUNTER_CLASS_EMERGENCY,
                            status=pb.ENCOUNTER_STATUS_ARRIVED,
                        )
                    )
                )
            )
    finally:
        await running.stop(grace_s=1)
    assert failure.code == grpc.StatusCode.UNAVAILABLE, failure
    assert failure.metadata.get("dependency") == "iam", failure
