"""WriteAuditEvents refuses bad events, naming the event and the field, and appends nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Literal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit.v1 import audit_service_pb2 as pb
from tests.audit.helpers import DOMAIN, Stub, events, grant_name, make_event, scalar, write_request
from tests.support import invalid_in

Spoil = Callable[[pb.AuditEvent], None]


def _set(field: str, value: object) -> Spoil:
    def spoil(event: pb.AuditEvent) -> None:
        target = event
        *path, last = field.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)

    return spoil


def _clear(field: Literal["agent", "event_time"]) -> Spoil:
    def spoil(event: pb.AuditEvent) -> None:
        event.ClearField(field)

    return spoil


def _future(event: pb.AuditEvent) -> None:
    event.event_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6))


def _ancient(event: pb.AuditEvent) -> None:
    event.event_time.FromDatetime(dt.datetime(1800, 1, 1, tzinfo=dt.UTC))


def _patient_agent(name: str) -> Spoil:
    """A patient as the agent (no staff member), named `name`."""

    def spoil(event: pb.AuditEvent) -> None:
        event.agent.staff = ""
        event.agent.patient = name

    return spoil


def _too_many_roles(event: pb.AuditEvent) -> None:
    event.agent.roles.extend(f"ROLE{n}" for n in range(21))


def _empty_role(event: pb.AuditEvent) -> None:
    event.agent.roles.append("")


def _long_role(event: pb.AuditEvent) -> None:
    event.agent.roles[0] = "R" * 51


def _empty_entity(event: pb.AuditEvent) -> None:
    event.entity.resource_type = ""


def _emergency_without_grant(event: pb.AuditEvent) -> None:
    event.emergency_access = True
    event.emergency_access_grant = ""


def _grant_without_emergency(event: pb.AuditEvent) -> None:
    event.emergency_access = False
    event.emergency_access_grant = grant_name()


def _bad_grant(event: pb.AuditEvent) -> None:
    event.emergency_access = True
    event.emergency_access_grant = "grants/1"


BAD_EVENTS: list[tuple[str, Spoil, str]] = [
    ("no event id", _set("event_id", ""), "event_id"),
    ("event id not a uuid", _set("event_id", "event-1"), "event_id"),
    (
        "event id in upper case",
        _set("event_id", "0F8FAD5B-D9CB-469F-A165-70867728950E"),
        "event_id",
    ),
    ("no event time", _clear("event_time"), "event_time"),
    ("event time in the far future", _future, "event_time"),
    ("event time before 1900", _ancient, "event_time"),
    ("no action", _set("action", 0), "action"),
    ("unknown action", _set("action", 42), "action"),
    ("no outcome", _set("outcome", 0), "outcome"),
    ("unknown outcome", _set("outcome", 9), "outcome"),
    ("outcome description too long", _set("outcome_description", "x" * 501), "outcome_description"),
    (
        "outcome description with control",
        _set("outcome_description", "a\x00b"),
        "outcome_description",
    ),
    ("no operation", _set("operation", ""), "operation"),
    ("operation too long", _set("operation", "/" + "x" * 200), "operation"),
    ("operation padded", _set("operation", " /a.B/C"), "operation"),
    ("no agent", _clear("agent"), "agent"),
    ("agent staff malformed", _set("agent.staff", "staff/42"), "agent.staff"),
    ("agent staff of another kind", _set("agent.staff", "services/patient"), "agent.staff"),
    ("agent patient malformed", _patient_agent("patients/42"), "agent.patient"),
    ("agent patient of another kind", _patient_agent("staff/1"), "agent.patient"),
    # One person acts: a staff member or a patient, never both (make_event names a staff member).
    (
        "agent staff and patient",
        _set("agent.patient", "patients/6f1c2f86-3c45-4bb0-9e0f-2b0a7a4c1d11"),
        "agent.patient",
    ),
    ("too many roles", _too_many_roles, "agent.roles"),
    ("empty role", _empty_role, "agent.roles[2]"),
    ("role too long", _long_role, "agent.roles[0]"),
    ("on behalf of malformed", _set("agent.on_behalf_of", "doctor"), "agent.on_behalf_of"),
    (
        "on behalf of a bad service",
        _set("agent.on_behalf_of", "services/Bad Name"),
        "agent.on_behalf_of",
    ),
    (
        "network address not an ip",
        _set("agent.network_address", "host.local"),
        "agent.network_address",
    ),
    ("patient malformed", _set("patient", "patients/abc"), "patient"),
    (
        "patient of another kind",
        _set("patient", f"staff/{'0' * 8}-0000-0000-0000-{'0' * 12}"),
        "patient",
    ),
    ("patient without purpose", _set("purpose_of_use", 0), "purpose_of_use"),
    ("unknown purpose", _set("purpose_of_use", 17), "purpose_of_use"),
    ("entity without type", _empty_entity, "entity.resource_type"),
    ("entity name too long", _set("entity.resource_name", "n" * 301), "entity.resource_name"),
    ("emergency without grant", _emergency_without_grant, "emergency_access_grant"),
    ("grant without emergency", _grant_without_emergency, "emergency_access_grant"),
    ("grant malformed", _bad_grant, "emergency_access_grant"),
    ("trace id not hex", _set("trace_id", "z" * 32), "trace_id"),
    ("trace id in upper case", _set("trace_id", "A" * 32), "trace_id"),
    ("trace id too short", _set("trace_id", "ab"), "trace_id"),
]


@pytest.mark.parametrize(
    ("spoil", "field"), [(s, f) for _, s, f in BAD_EVENTS], ids=[n for n, _, _ in BAD_EVENTS]
)
async def test_bad_event_is_refused_naming_its_index_and_field(
    writer: Stub, audit_db: AsyncEngine, spoil: Spoil, field: str
) -> None:
    good, bad = events(2)
    spoil(bad)

    fields = await invalid_in(DOMAIN, writer.WriteAuditEvents(write_request(good, bad)))

    assert fields == [f"audit_events[1].{field}"]
    stored = await scalar(
        audit_db,
        "SELECT count(*) FROM audit.events WHERE event_id = CAST(:id AS uuid)",
        id=good.event_id,
    )
    assert stored == 0


async def test_every_bad_field_of_every_event_is_named(writer: Stub) -> None:
    first, second = events(2)
    first.operation = ""
    second.action = pb.AUDIT_EVENT_ACTION_UNSPECIFIED
    second.patient = "patients/x"

    fields = await invalid_in(DOMAIN, writer.WriteAuditEvents(write_request(first, second)))

    assert fields == [
        "audit_events[0].operation",
        "audit_events[1].action",
        "audit_events[1].patient",
    ]


async def test_same_event_id_twice_in_one_batch_is_refused(writer: Stub) -> None:
    first, second, third = events(3)
    third.event_id = first.event_id

    fields = await invalid_in(DOMAIN, writer.WriteAuditEvents(write_request(first, second, third)))

    assert fields == ["audit_events[2].event_id"]


async def test_empty_batch_is_refused(writer: Stub) -> None:
    fields = await invalid_in(DOMAIN, writer.WriteAuditEvents(pb.WriteAuditEventsRequest()))
    assert fields == ["audit_events"]


async def test_batch_of_more_than_500_events_is_refused(writer: Stub) -> None:
    fields = await invalid_in(DOMAIN, writer.WriteAuditEvents(write_request(*events(501))))
    assert fields == ["audit_events"]


async def test_batch_of_500_events_is_accepted(writer: Stub) -> None:
    reply = await writer.WriteAuditEvents(write_request(*events(500)))
    assert len(reply.audit_events) == 500


async def test_event_time_a_little_ahead_of_the_server_clock_is_accepted(writer: Stub) -> None:
    event = make_event(event_time=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=4))
    [stored] = (await writer.WriteAuditEvents(write_request(event))).audit_events
    assert stored.event_time.ToMicroseconds() == event.event_time.ToMicroseconds()


async def test_relaying_service_is_accepted_as_on_behalf_of(writer: Stub) -> None:
    event = make_event()
    event.agent.on_behalf_of = "services/scheduling"
    [stored] = (await writer.WriteAuditEvents(write_request(event))).audit_events
    assert stored.agent.on_behalf_of == "services/scheduling"


async def test_a_patient_acting_on_their_own_record_is_accepted_as_the_agent(writer: Stub) -> None:
    event = make_event(staff="")
    patient = f"patients/{uuid.uuid4()}"
    event.agent.patient = patient
    event.patient = patient
    event.purpose_of_use = pb.PURPOSE_OF_USE_PATIENT_REQUEST
    [stored] = (await writer.WriteAuditEvents(write_request(event))).audit_events
    assert (stored.agent.patient, stored.agent.staff) == (patient, "")
    assert stored.purpose_of_use == pb.PURPOSE_OF_USE_PATIENT_REQUEST
