"""AuditEntity.changes (a change's fields before and after, as iam records them): stored with the
event, covered by its hash (a rewritten value is found by VerifyChain), and checked on write."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit.v1 import audit_service_pb2 as pb
from tests.audit.helpers import (
    DOMAIN,
    Stub,
    behind_the_service,
    contract_hash,
    make_event,
    scalar,
    write_request,
)
from tests.support import invalid_in


def _with_changes(*changes: tuple[str, str, str]) -> pb.AuditEvent:
    event = make_event(patient="", operation="/his.iam.v1.IamService/ApproveAccessChange")
    event.entity.resource_name = "accessChanges/5e0b9a6e-3f43-4a57-9d0f-3d0f1c2b7a10"
    event.entity.resource_type = "his.iam.v1.AccessChange"
    for path, before, after in changes:
        event.entity.changes.add(field_path=path, before=before, after=after)
    return event


async def test_changes_are_stored_hashed_and_read_back_in_order(
    writer: Stub, auditor: Stub
) -> None:
    sent = _with_changes(("state", '"pending"', '"approved"'), ("decider", "", '"staff/1"'))

    [stored] = (await writer.WriteAuditEvents(write_request(sent))).audit_events
    read = await auditor.GetAuditEvent(pb.GetAuditEventRequest(name=stored.name))

    assert list(read.entity.changes) == list(sent.entity.changes)
    assert read == stored
    assert stored.hash == contract_hash(stored)
    check = pb.VerifyChainRequest(
        start_sequence_number=stored.sequence_number, end_sequence_number=stored.sequence_number
    )
    assert (await auditor.VerifyChain(check)).intact


async def test_a_rewritten_before_or_after_value_breaks_the_chain_there(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    [stored] = (
        await writer.WriteAuditEvents(write_request(_with_changes(("roles", "[]", '["DOCTOR"]'))))
    ).audit_events
    kept = await scalar(
        audit_db,
        "SELECT entity_changes FROM audit.events WHERE sequence_number = :n",
        n=stored.sequence_number,
    )
    edit = text("UPDATE audit.events SET entity_changes = :v WHERE sequence_number = :n")
    check = pb.VerifyChainRequest(
        start_sequence_number=stored.sequence_number, end_sequence_number=stored.sequence_number
    )
    try:
        async with behind_the_service(audit_db) as connection:
            forged = kept.replace("DOCTOR", "NURSE")
            assert forged != kept
            await connection.execute(edit, {"v": forged, "n": stored.sequence_number})
        reply = await auditor.VerifyChain(check)
    finally:
        async with behind_the_service(audit_db) as connection:
            await connection.execute(edit, {"v": kept, "n": stored.sequence_number})

    assert not reply.intact
    assert reply.first_break.sequence_number == stored.sequence_number
    assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_ALTERED
    assert (await auditor.VerifyChain(check)).intact


async def test_bad_changes_are_refused_naming_the_field(writer: Stub) -> None:
    too_many = _with_changes(*[(f"field_{i}", "", "1") for i in range(21)])
    unnamed = _with_changes(("", "1", "2"))
    too_long = _with_changes(("roles", "x" * 2001, ""))

    fields = await invalid_in(
        DOMAIN, writer.WriteAuditEvents(write_request(too_many, unnamed, too_long))
    )

    assert fields == [
        "audit_events[0].entity.changes",
        "audit_events[1].entity.changes[0].field_path",
        "audit_events[2].entity.changes[0].before",
    ]
