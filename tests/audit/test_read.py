"""GetAuditEvent and ListAuditEvents: auditors only, filters, sequence order, page tokens."""

from __future__ import annotations

import datetime as dt
import uuid

import grpc
import pytest

from his.audit.v1 import audit_service_pb2 as pb
from his.common.v1 import types_pb2
from tests.audit.helpers import (
    DOMAIN,
    Stub,
    events,
    grant_name,
    make_event,
    patient_name,
    staff_name,
    write_request,
)
from tests.support import fails, invalid_in


async def _write(writer: Stub, *batch: pb.AuditEvent) -> list[pb.AuditEvent]:
    return list((await writer.WriteAuditEvents(write_request(*batch))).audit_events)


def _period(start: dt.datetime | None = None, end: dt.datetime | None = None) -> types_pb2.Period:
    period = types_pb2.Period()
    if start is not None:
        period.start_time.FromDatetime(start)
    if end is not None:
        period.end_time.FromDatetime(end)
    return period


async def _all(auditor: Stub, request: pb.ListAuditEventsRequest) -> list[pb.AuditEvent]:
    found: list[pb.AuditEvent] = []
    while True:
        reply = await auditor.ListAuditEvents(request)
        found.extend(reply.audit_events)
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


# --- GetAuditEvent ---------------------------------------------------------------------------


async def test_auditor_gets_an_event_exactly_as_it_was_stored(writer: Stub, auditor: Stub) -> None:
    [stored] = await _write(writer, make_event(emergency_grant=grant_name()))

    got = await auditor.GetAuditEvent(pb.GetAuditEventRequest(name=stored.name))

    assert got == stored


@pytest.mark.parametrize(
    "name",
    ["", "auditEvents/", "auditEvents/42", "events/0f8fad5b-d9cb-469f-a165-70867728950e"],
)
async def test_get_with_a_malformed_name_is_invalid(auditor: Stub, name: str) -> None:
    fields = await invalid_in(DOMAIN, auditor.GetAuditEvent(pb.GetAuditEventRequest(name=name)))
    assert fields == ["name"]


async def test_get_of_an_unknown_event_is_not_found(auditor: Stub) -> None:
    name = f"auditEvents/{uuid.uuid4()}"

    failure = await fails(auditor.GetAuditEvent(pb.GetAuditEventRequest(name=name)))

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.metadata == {"name": name}


async def test_only_auditors_get_events_checked_before_existence(
    writer: Stub, doctor: Stub
) -> None:
    [stored] = await _write(writer, make_event())
    for name in (stored.name, f"auditEvents/{uuid.uuid4()}"):
        for stub in (doctor, writer):
            failure = await fails(stub.GetAuditEvent(pb.GetAuditEventRequest(name=name)))
            assert failure.code == grpc.StatusCode.PERMISSION_DENIED, failure


async def test_get_without_a_token_is_unauthenticated(anonymous: Stub) -> None:
    request = pb.GetAuditEventRequest(name=f"auditEvents/{uuid.uuid4()}")
    failure = await fails(anonymous.GetAuditEvent(request))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


# --- ListAuditEvents -------------------------------------------------------------------------


async def test_events_of_a_patient_are_listed_oldest_first(writer: Stub, auditor: Stub) -> None:
    patient = patient_name()
    mine = await _write(writer, *events(3, patient=patient))
    await _write(writer, *events(2))
    mine += await _write(writer, make_event(patient=patient))

    found = await _all(auditor, pb.ListAuditEventsRequest(patient=patient))

    assert found == mine
    numbers = [e.sequence_number for e in found]
    assert numbers == sorted(numbers)


async def test_pages_walk_the_whole_list_without_repeats(writer: Stub, auditor: Stub) -> None:
    patient = patient_name()
    mine = await _write(writer, *events(7, patient=patient))

    request = pb.ListAuditEventsRequest(patient=patient, page_size=3)
    first = await auditor.ListAuditEvents(request)
    assert len(first.audit_events) == 3 and first.next_page_token
    found = await _all(auditor, request)

    assert found == mine


async def test_last_full_page_has_no_next_token(writer: Stub, auditor: Stub) -> None:
    patient = patient_name()
    await _write(writer, *events(2, patient=patient))

    reply = await auditor.ListAuditEvents(pb.ListAuditEventsRequest(patient=patient, page_size=2))

    assert len(reply.audit_events) == 2
    assert reply.next_page_token == ""


async def test_events_of_a_staff_member_are_listed(writer: Stub, auditor: Stub) -> None:
    staff = staff_name()
    mine = await _write(writer, *events(2, staff=staff))
    await _write(writer, *events(2))

    found = await _all(auditor, pb.ListAuditEventsRequest(agent_staff=staff))

    assert found == mine


async def test_event_period_includes_its_start_and_excludes_its_end(
    writer: Stub, auditor: Stub
) -> None:
    patient = patient_name()
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    at = [base + dt.timedelta(minutes=m) for m in (0, 10, 20)]
    stored = await _write(writer, *(make_event(patient=patient, event_time=t) for t in at))
    # make_event adds nanoseconds; the stored times are whole microseconds after `at`.
    start, end = at[0], at[2]

    found = await _all(
        auditor, pb.ListAuditEventsRequest(patient=patient, event_period=_period(start, end))
    )
    assert found == stored[:2]
    after = await _all(
        auditor, pb.ListAuditEventsRequest(patient=patient, event_period=_period(start=at[1]))
    )
    assert after == stored[1:]
    before = await _all(
        auditor,
        pb.ListAuditEventsRequest(
            patient=patient, event_period=_period(end=at[1] + dt.timedelta(seconds=1))
        ),
    )
    assert before == stored[:2]


async def test_events_of_an_action_are_listed(writer: Stub, auditor: Stub) -> None:
    patient = patient_name()
    _read, update = await _write(
        writer,
        make_event(patient=patient, action=pb.AUDIT_EVENT_ACTION_READ),
        make_event(patient=patient, action=pb.AUDIT_EVENT_ACTION_UPDATE),
    )

    found = await _all(
        auditor, pb.ListAuditEventsRequest(patient=patient, action=pb.AUDIT_EVENT_ACTION_UPDATE)
    )

    assert found == [update]


async def test_emergency_accesses_only_are_listed(writer: Stub, auditor: Stub) -> None:
    patient = patient_name()
    _normal, emergency = await _write(
        writer,
        make_event(patient=patient),
        make_event(patient=patient, emergency_grant=grant_name()),
    )

    found = await _all(
        auditor, pb.ListAuditEventsRequest(patient=patient, emergency_access_only=True)
    )

    assert found == [emergency]


async def test_filters_combine(writer: Stub, auditor: Stub) -> None:
    patient, staff = patient_name(), staff_name()
    _, wanted, _ = await _write(
        writer,
        make_event(patient=patient),
        make_event(patient=patient, staff=staff),
        make_event(staff=staff),
    )

    found = await _all(auditor, pb.ListAuditEventsRequest(patient=patient, agent_staff=staff))

    assert found == [wanted]


async def test_default_page_is_50_and_page_size_is_capped_at_500(
    writer: Stub, auditor: Stub
) -> None:
    staff = staff_name()
    await _write(writer, *events(500, staff=staff))
    await _write(writer, *events(5, staff=staff))

    default = await auditor.ListAuditEvents(pb.ListAuditEventsRequest(agent_staff=staff))
    capped = await auditor.ListAuditEvents(
        pb.ListAuditEventsRequest(agent_staff=staff, page_size=10_000)
    )

    assert len(default.audit_events) == 50
    assert len(capped.audit_events) == 500 and capped.next_page_token


async def test_page_token_of_another_filter_is_invalid(writer: Stub, auditor: Stub) -> None:
    patient = patient_name()
    await _write(writer, *events(3, patient=patient))
    reply = await auditor.ListAuditEvents(pb.ListAuditEventsRequest(patient=patient, page_size=1))

    for request in (
        pb.ListAuditEventsRequest(patient=patient_name(), page_token=reply.next_page_token),
        pb.ListAuditEventsRequest(
            patient=patient, emergency_access_only=True, page_token=reply.next_page_token
        ),
        pb.ListAuditEventsRequest(patient=patient, page_token="not-a-token"),
    ):
        assert await invalid_in(DOMAIN, auditor.ListAuditEvents(request)) == ["page_token"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListAuditEventsRequest(page_size=-1), "page_size"),
        (pb.ListAuditEventsRequest(patient="patients/1"), "patient"),
        (pb.ListAuditEventsRequest(agent_staff="doctor"), "agent_staff"),
        (pb.ListAuditEventsRequest(action=99), "action"),  # type: ignore[arg-type]
        (
            pb.ListAuditEventsRequest(
                event_period=_period(
                    dt.datetime(2026, 2, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
                )
            ),
            "event_period.end_time",
        ),
        (
            pb.ListAuditEventsRequest(
                event_period=_period(
                    dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
                )
            ),
            "event_period.end_time",
        ),
    ],
    ids=["negative page size", "patient", "agent staff", "action", "period reversed", "empty"],
)
async def test_malformed_filter_is_invalid(
    auditor: Stub, request_: pb.ListAuditEventsRequest, field: str
) -> None:
    assert await invalid_in(DOMAIN, auditor.ListAuditEvents(request_)) == [field]


async def test_only_auditors_list_events(doctor: Stub, writer: Stub) -> None:
    for stub in (doctor, writer):
        failure = await fails(stub.ListAuditEvents(pb.ListAuditEventsRequest()))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, failure
