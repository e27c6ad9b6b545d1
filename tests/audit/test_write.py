"""WriteAuditEvents: appends in order onto the chain, replays, conflicts, who may write."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit.v1 import audit_service_pb2 as pb
from tests.audit.helpers import (
    Stub,
    contract_hash,
    events,
    grant_name,
    make_event,
    scalar,
    write_request,
)
from tests.support import fails


async def _stored(engine: AsyncEngine, *event_ids: str) -> int:
    return int(
        await scalar(
            engine,
            "SELECT count(*) FROM audit.events WHERE event_id = ANY(CAST(:ids AS uuid[]))",
            ids=list(event_ids),
        )
    )


async def test_written_event_is_numbered_hashed_and_chained(writer: Stub) -> None:
    event = make_event(emergency_grant=grant_name())
    before = dt.datetime.now(dt.UTC)

    reply = await writer.WriteAuditEvents(write_request(event))

    [stored] = reply.audit_events
    assert stored.name == f"auditEvents/{event.event_id}"
    assert stored.sequence_number >= 1
    assert before - dt.timedelta(seconds=1) <= stored.record_time.ToDatetime(tzinfo=dt.UTC)
    assert len(stored.hash) == 32
    assert stored.hash == contract_hash(stored)
    assert len(stored.previous_hash) == 32
    # The writer's content is kept as sent (event time to the microsecond).
    assert stored.event_time.ToMicroseconds() == event.event_time.ToMicroseconds()
    assert stored.agent.staff == event.agent.staff
    assert list(stored.agent.roles) == ["DOCTOR", "NURSE"]
    assert stored.agent.network_address == "10.1.2.3"
    assert stored.patient == event.patient
    assert stored.entity == event.entity
    assert stored.purpose_of_use == pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT
    assert stored.emergency_access
    assert stored.emergency_access_grant == event.emergency_access_grant
    assert stored.trace_id == event.trace_id
    # The writer is the authenticated caller, whatever the event says.
    assert stored.agent.service_account == "services/patient"


async def test_batch_is_appended_in_request_order_each_linked_to_the_one_before(
    writer: Stub,
) -> None:
    batch = events(5)

    reply = await writer.WriteAuditEvents(write_request(*batch))

    stored = list(reply.audit_events)
    assert [e.event_id for e in stored] == [e.event_id for e in batch]
    first = stored[0].sequence_number
    assert [e.sequence_number for e in stored] == list(range(first, first + 5))
    for before, after in itertools.pairwise(stored):
        assert after.previous_hash == before.hash
    assert all(e.hash == contract_hash(e) for e in stored)


async def test_next_write_continues_the_chain_from_the_last_hash(writer: Stub) -> None:
    [first] = (await writer.WriteAuditEvents(write_request(make_event()))).audit_events
    [second] = (await writer.WriteAuditEvents(write_request(make_event()))).audit_events

    assert second.sequence_number == first.sequence_number + 1
    assert second.previous_hash == first.hash


async def test_output_only_fields_of_the_request_are_ignored(writer: Stub) -> None:
    event = make_event()
    event.name = "auditEvents/forged"
    event.sequence_number = 1
    event.previous_hash = b"\x01" * 32
    event.hash = b"\x02" * 32
    event.record_time.FromDatetime(dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    event.agent.service_account = "services/pharmacy"

    [stored] = (await writer.WriteAuditEvents(write_request(event))).audit_events

    assert stored.name == f"auditEvents/{event.event_id}"
    assert stored.sequence_number != 1 or stored.previous_hash == bytes(32)
    assert stored.hash == contract_hash(stored)
    assert stored.record_time.ToDatetime().year > 2001
    assert stored.agent.service_account == "services/patient"


async def test_event_without_patient_needs_no_purpose_and_no_entity(writer: Stub) -> None:
    event = pb.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=pb.AUDIT_EVENT_ACTION_EXECUTE,
        outcome=pb.AUDIT_EVENT_OUTCOME_SERIOUS_FAILURE,
        outcome_description="UNAVAILABLE: iam did not answer",
        operation="/his.iam.v1.IamService/IssueToken",
        agent=pb.AuditAgent(),
    )
    event.event_time.GetCurrentTime()

    [stored] = (await writer.WriteAuditEvents(write_request(event))).audit_events

    assert stored.purpose_of_use == pb.PURPOSE_OF_USE_UNSPECIFIED
    assert not stored.HasField("entity")
    assert stored.agent.staff == ""
    assert stored.hash == contract_hash(stored)


async def test_replayed_batch_returns_the_stored_events_and_appends_nothing(
    writer: Stub, audit_db: AsyncEngine
) -> None:
    batch = events(3)
    first = await writer.WriteAuditEvents(write_request(*batch))
    rows = await scalar(audit_db, "SELECT count(*) FROM audit.events")

    again = await writer.WriteAuditEvents(write_request(*batch))

    assert list(again.audit_events) == list(first.audit_events)
    assert await scalar(audit_db, "SELECT count(*) FROM audit.events") == rows


async def test_batch_mixing_stored_and_new_events_appends_only_the_new(
    writer: Stub, audit_db: AsyncEngine
) -> None:
    old = make_event()
    [stored_old] = (await writer.WriteAuditEvents(write_request(old))).audit_events
    new = make_event()

    reply = await writer.WriteAuditEvents(write_request(new, old))

    stored_new, replayed_old = reply.audit_events
    assert replayed_old == stored_old
    assert stored_new.sequence_number > stored_old.sequence_number
    assert await _stored(audit_db, old.event_id, new.event_id) == 2


async def test_stored_id_with_different_content_is_already_exists_and_nothing_is_appended(
    writer: Stub, audit_db: AsyncEngine
) -> None:
    event = make_event()
    await writer.WriteAuditEvents(write_request(event))
    changed = pb.AuditEvent()
    changed.CopyFrom(event)
    changed.outcome = pb.AUDIT_EVENT_OUTCOME_MINOR_FAILURE
    innocent = make_event()

    failure = await fails(writer.WriteAuditEvents(write_request(innocent, changed)))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "AUDIT_EVENT_EXISTS"
    assert failure.metadata == {"event_id": event.event_id}
    assert await _stored(audit_db, innocent.event_id) == 0


async def test_stored_id_written_by_another_service_is_already_exists(
    writer: Stub, other_writer: Stub
) -> None:
    event = make_event()
    await writer.WriteAuditEvents(write_request(event))

    failure = await fails(other_writer.WriteAuditEvents(write_request(event)))

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS


async def test_staff_cannot_write_even_as_auditor(auditor: Stub, doctor: Stub) -> None:
    for stub in (auditor, doctor):
        failure = await fails(stub.WriteAuditEvents(write_request(make_event())))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, failure


async def test_write_without_a_token_is_unauthenticated(anonymous: Stub) -> None:
    failure = await fails(anonymous.WriteAuditEvents(write_request(make_event())))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
