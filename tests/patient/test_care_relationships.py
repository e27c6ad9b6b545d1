"""The patient service's care relationships (his.patient.care), on a patient server of its own
whose iam and scheduling addresses lead nowhere: a related clinician's read is decided from this
service's own tables alone (no remote call), the window is configured, and the newest revision of
an appointment or encounter wins whatever order its events arrive in."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.message import Message

from his.base.errors import InvalidArgument
from his.emr.v1 import emr_service_pb2 as emr_pb
from his.patient import care
from his.patient.spec import SPEC as PATIENT
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.outbox import envelope
from his.runtime.server import RunningService, start
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from tests.conftest import addresses, service_config
from tests.identity import ISSUER, channel_as, metadata
from tests.patient.helpers import Stub, create
from tests.support import fails, free_port

NOWHERE = f"localhost:{free_port()}"


@pytest.fixture(scope="module")
async def isolated(database_url: str, audit_service: RunningService) -> AsyncIterator[Stub]:
    """A patient server with no iam or scheduling to ask, relating a visit from 1 day before its
    start to 2 days after its end; called as a registrar unless a call says otherwise."""
    config = service_config(
        "patient",
        **addresses(audit_service),
        HIS_IAM_ADDR=NOWHERE,
        HIS_SCHEDULING_ADDR=NOWHERE,
        HIS_PATIENT_CARE_BEFORE_DAYS="1",
        HIS_PATIENT_CARE_AFTER_DAYS="2",
    )
    running = await start(PATIENT, config, database_url)
    try:
        async with channel_as(running.address, ISSUER.staff("REGISTRAR")) as channel:
            yield pb_grpc.PatientServiceStub(channel)
    finally:
        await running.stop(grace_s=1)


def _appointment(
    patient: str,
    ward: str,
    start: dt.datetime,
    *,
    name: str = "",
    revision: int = 1,
    status: int = scheduling_pb.APPOINTMENT_STATUS_BOOKED,
) -> Message:
    appointment = scheduling_pb.Appointment(
        name=name or f"appointments/{uuid.uuid4()}",
        patient=patient,
        department=ward,
        status=status,  # type: ignore[arg-type]
    )
    appointment.start_time.FromDatetime(start)
    appointment.end_time.FromDatetime(start + dt.timedelta(minutes=15))
    return scheduling_pb.AppointmentChanged(appointment=appointment, revision=revision)


def _encounter(
    patient: str, ward: str, start: dt.datetime, *, end: dt.datetime | None = None
) -> Message:
    encounter = emr_pb.Encounter(
        name=f"encounters/{uuid.uuid4()}",
        patient=patient,
        department=ward,
        status=emr_pb.ENCOUNTER_STATUS_IN_PROGRESS,
    )
    encounter.period.start_time.FromDatetime(start)
    if end is not None:
        encounter.period.end_time.FromDatetime(end)
    return emr_pb.EncounterChanged(encounter=encounter, revision=1)


async def _deliver(stub: Stub, source: str, *events: Message) -> None:
    await stub.DeliverEvents(
        pb.DeliverEventsRequest(events=[envelope(e, source=source, trace_id="") for e in events]),
        metadata=metadata(ISSUER.service(source)),
    )


def _ward() -> str:
    return f"departments/{uuid.uuid4()}"


async def _reads(stub: Stub, patient: str, ward: str) -> bool:
    """Whether a doctor of `ward` reads the patient from the care relationships alone. Without
    one the service would ask iam for a break-the-glass grant, which cannot be reached here: that
    is the answer (UNAVAILABLE naming iam) of every unrelated read on this server."""
    token = metadata(ISSUER.staff("DOCTOR", departments=(ward,)))
    try:
        await stub.GetPatient(pb.GetPatientRequest(name=patient), metadata=token)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "iam" in (error.details() or ""), error
        return False
    return True


async def test_a_related_read_asks_no_other_service(isolated: Stub) -> None:
    patient = (await create(isolated)).name
    ward = _ward()
    await _deliver(isolated, "scheduling", _appointment(patient, ward, dt.datetime.now(dt.UTC)))

    # iam cannot be reached: the related read never needed it.
    assert await _reads(isolated, patient, ward)
    # An unrelated one needs iam's break-the-glass grants: it fails closed, naming iam.
    unrelated = await fails(
        isolated.GetPatient(
            pb.GetPatientRequest(name=patient),
            metadata=metadata(ISSUER.staff("DOCTOR", departments=(_ward(),))),
        )
    )
    assert (unrelated.code, unrelated.metadata.get("dependency")) == (
        grpc.StatusCode.UNAVAILABLE,
        "iam",
    ), unrelated


async def test_the_window_is_the_configured_one(isolated: Stub) -> None:
    patient = (await create(isolated)).name
    now = dt.datetime.now(dt.UTC)
    soon, later, lately, long_ago = _ward(), _ward(), _ward(), _ward()
    await _deliver(
        isolated,
        "scheduling",
        _appointment(patient, soon, now + dt.timedelta(hours=20)),
        _appointment(patient, later, now + dt.timedelta(days=3)),
        _appointment(patient, lately, now - dt.timedelta(days=1)),
        _appointment(patient, long_ago, now - dt.timedelta(days=3)),
    )

    assert [await _reads(isolated, patient, w) for w in (soon, later, lately, long_ago)] == [
        True,
        False,
        True,
        False,
    ]


async def test_an_open_encounter_relates_until_it_ends(
    isolated: Stub,
) -> None:
    patient = (await create(isolated)).name
    admitted, discharged = _ward(), _ward()
    now = dt.datetime.now(dt.UTC)
    await _deliver(
        isolated,
        "emr",
        # Admitted a month ago and still in the ward; another stay that ended a week ago.
        _encounter(patient, admitted, now - dt.timedelta(days=30)),
        _encounter(
            patient,
            discharged,
            now - dt.timedelta(days=30),
            end=now - dt.timedelta(days=7),
        ),
    )

    assert await _reads(isolated, patient, admitted)
    assert not await _reads(isolated, patient, discharged)


async def test_the_newest_revision_wins_whatever_the_order(
    isolated: Stub,
) -> None:
    patient = (await create(isolated)).name
    ward = _ward()
    name = f"appointments/{uuid.uuid4()}"
    now = dt.datetime.now(dt.UTC)
    cancelled = _appointment(
        patient,
        ward,
        now,
        name=name,
        revision=2,
        status=scheduling_pb.APPOINTMENT_STATUS_CANCELLED,
    )
    booked = _appointment(patient, ward, now, name=name, revision=1)

    # The cancellation arrives first; the booking's late delivery changes nothing.
    await _deliver(isolated, "scheduling", cancelled, booked)

    assert not await _reads(isolated, patient, ward)


@pytest.mark.parametrize("kind", ["appointment", "encounter"])
def test_a_period_ending_before_it_starts_is_refused_by_field(kind: str) -> None:
    """Not left to the table's check: that would be an internal error, redelivered for ever and
    holding up the events behind it; INVALID_ARGUMENT makes it the relay's dead letter."""
    start = dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC)
    end = start - dt.timedelta(minutes=5)
    if kind == "appointment":
        appointment = scheduling_pb.Appointment(
            name=f"appointments/{uuid.uuid4()}",
            patient=f"patients/{uuid.uuid4()}",
            department=f"departments/{uuid.uuid4()}",
        )
        appointment.start_time.FromDatetime(start)
        appointment.end_time.FromDatetime(end)
        with pytest.raises(InvalidArgument) as refused:
            care._values(scheduling_pb.AppointmentChanged(appointment=appointment, revision=1))
        field = "appointment.end_time"
    else:
        encounter = emr_pb.Encounter(
            name=f"encounters/{uuid.uuid4()}",
            patient=f"patients/{uuid.uuid4()}",
            department=f"departments/{uuid.uuid4()}",
        )
        encounter.period.start_time.FromDatetime(start)
        encounter.period.end_time.FromDatetime(end)
        with pytest.raises(InvalidArgument) as refused:
            care._encounter_values(emr_pb.EncounterChanged(encounter=encounter, revision=1))
        field = "encounter.period.end_time"
    assert [v.field for v in refused.value.violations] == [field]
