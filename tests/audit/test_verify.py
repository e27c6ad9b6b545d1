"""VerifyChain: an intact chain verifies; changed, removed or relinked rows are found.

Tampering goes through SQL as a database superuser would (getting round the append-only
triggers); each test puts the row back, so the chain is whole again for the next test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit import verification
from his.audit.v1 import audit_service_pb2 as pb
from tests.audit.helpers import (
    DOMAIN,
    Stub,
    behind_the_service,
    contract_hash,
    events,
    scalar,
    write_request,
)
from tests.support import fails, invalid_in


async def _write(writer: Stub, count: int) -> list[pb.AuditEvent]:
    return list((await writer.WriteAuditEvents(write_request(*events(count)))).audit_events)


def _verify(start: int = 0, end: int = 0) -> pb.VerifyChainRequest:
    return pb.VerifyChainRequest(start_sequence_number=start, end_sequence_number=end)


@pytest.fixture
async def small_chunks(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """VerifyChain reading 7 rows at a time, so every test crosses chunk boundaries."""
    monkeypatch.setattr(verification, "VERIFY_CHUNK", 7)
    yield


async def test_whole_chain_verifies_from_the_first_event_to_the_head(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    stored = await _write(writer, 3)

    reply = await auditor.VerifyChain(_verify())

    assert reply.intact, reply
    assert reply.start_sequence_number == 1
    head = await scalar(audit_db, "SELECT last_sequence_number FROM audit.chain_head")
    assert reply.end_sequence_number == head >= stored[-1].sequence_number
    assert not reply.HasField("first_break")


async def test_range_reports_what_it_checked_and_the_end_hash(
    writer: Stub, auditor: Stub, small_chunks: None
) -> None:
    stored = await _write(writer, 20)
    first, last = stored[2], stored[17]

    reply = await auditor.VerifyChain(_verify(first.sequence_number, last.sequence_number))

    assert reply.intact
    assert (reply.start_sequence_number, reply.end_sequence_number) == (
        first.sequence_number,
        last.sequence_number,
    )
    assert reply.end_hash == last.hash


async def test_first_event_of_the_chain_links_to_32_zero_bytes(auditor: Stub, writer: Stub) -> None:
    await _write(writer, 1)
    first = await auditor.VerifyChain(_verify(1, 1))
    assert first.intact
    listed = await auditor.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1))
    assert listed.audit_events[0].sequence_number == 1
    assert listed.audit_events[0].previous_hash == bytes(32)
    assert first.end_hash == listed.audit_events[0].hash


async def test_range_ending_past_the_head_ends_at_the_head(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    stored = await _write(writer, 2)
    head = await scalar(audit_db, "SELECT last_sequence_number FROM audit.chain_head")

    reply = await auditor.VerifyChain(_verify(stored[0].sequence_number, head + 100))

    assert reply.intact and reply.end_sequence_number == head


@pytest.mark.parametrize(
    "column, value",
    [
        ("patient", "'patients/00000000-0000-0000-0000-000000000000'"),
        ("outcome", "'major_failure'"),
        ("agent_roles", "ARRAY['AUDITOR']"),
        ("event_time", "event_time + interval '1 microsecond'"),
        ("record_time", "record_time - interval '1 day'"),
        ("agent_service_account", "'services/pharmacy'"),
    ],
)
async def test_changed_column_is_reported_altered_at_that_event(
    writer: Stub,
    auditor: Stub,
    audit_db: AsyncEngine,
    small_chunks: None,
    column: str,
    value: str,
) -> None:
    stored = await _write(writer, 20)
    victim = stored[9].sequence_number
    original = await _row(audit_db, victim)
    async with behind_the_service(audit_db) as connection:
        await connection.execute(
            text(f"UPDATE audit.events SET {column} = {value} WHERE sequence_number = :n"),
            {"n": victim},
        )
    try:
        reply = await auditor.VerifyChain(_verify(stored[0].sequence_number))
        assert not reply.intact
        assert reply.first_break.sequence_number == victim
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_ALTERED
        # The event before the break is the last one that checked out.
        assert reply.end_hash == stored[8].hash
    finally:
        await _restore(audit_db, original)
    assert (await auditor.VerifyChain(_verify(stored[0].sequence_number))).intact


async def test_rehashed_forgery_breaks_the_link_of_the_next_event(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    stored = await _write(writer, 5)
    victim = stored[2]
    original = await _row(audit_db, victim.sequence_number)
    # A forger who recomputes the changed event's hash still cannot fix the next event's link.
    forged = pb.AuditEvent()
    forged.CopyFrom(victim)
    forged.outcome = pb.AUDIT_EVENT_OUTCOME_MAJOR_FAILURE

    async with behind_the_service(audit_db) as connection:
        await connection.execute(
            text(
                "UPDATE audit.events SET outcome = 'major_failure', hash = :h"
                " WHERE sequence_number = :n"
            ),
            {"h": contract_hash(forged), "n": victim.sequence_number},
        )
    try:
        reply = await auditor.VerifyChain(_verify(stored[0].sequence_number))
        assert reply.first_break.sequence_number == stored[3].sequence_number
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_ALTERED
    finally:
        await _restore(audit_db, original)


async def test_deleted_event_is_reported_missing(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine, small_chunks: None
) -> None:
    stored = await _write(writer, 20)
    victim = stored[13].sequence_number
    original = await _row(audit_db, victim)
    async with behind_the_service(audit_db) as connection:
        await connection.execute(
            text("DELETE FROM audit.events WHERE sequence_number = :n"), {"n": victim}
        )
    try:
        reply = await auditor.VerifyChain(_verify(stored[0].sequence_number))
        assert not reply.intact
        assert reply.first_break.sequence_number == victim
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_MISSING
    finally:
        await _restore(audit_db, original, deleted=True)
    assert (await auditor.VerifyChain(_verify())).intact


async def test_deleted_tail_is_reported_missing(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    stored = await _write(writer, 3)
    last = stored[-1].sequence_number
    original = await _row(audit_db, last)
    async with behind_the_service(audit_db) as connection:
        await connection.execute(
            text("DELETE FROM audit.events WHERE sequence_number = :n"), {"n": last}
        )
    try:
        reply = await auditor.VerifyChain(_verify(stored[0].sequence_number))
        assert reply.first_break.sequence_number == last
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_MISSING
    finally:
        await _restore(audit_db, original, deleted=True)


async def test_service_refuses_updates_and_deletes_of_events(
    writer: Stub, audit_db: AsyncEngine
) -> None:
    [stored] = await _write(writer, 1)
    for sql in (
        "UPDATE audit.events SET patient = '' WHERE sequence_number = :n",
        "DELETE FROM audit.events WHERE sequence_number = :n",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with audit_db.connect() as connection, connection.begin():
                await connection.execute(text(sql), {"n": stored.sequence_number})


async def test_the_chain_head_only_moves_forward(writer: Stub, audit_db: AsyncEngine) -> None:
    """Winding the head back would hide deleted newest events from a VerifyChain that ends at
    the head; the database refuses it (and removing the head)."""
    await _write(writer, 2)
    for sql in (
        "UPDATE audit.chain_head SET last_sequence_number = last_sequence_number - 1",
        "UPDATE audit.chain_head SET last_hash = last_hash",
        "DELETE FROM audit.chain_head",
    ):
        with pytest.raises(DBAPIError, match=r"only moves forward|append-only"):
            async with audit_db.connect() as connection, connection.begin():
                await connection.execute(text(sql))


async def test_a_range_whose_preceding_event_is_gone_is_reported_missing_there(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    stored = await _write(writer, 5)
    gone = stored[1].sequence_number
    original = await _row(audit_db, gone)
    async with behind_the_service(audit_db) as connection:
        await connection.execute(
            text("DELETE FROM audit.events WHERE sequence_number = :n"), {"n": gone}
        )
    try:
        reply = await auditor.VerifyChain(
            pb.VerifyChainRequest(start_sequence_number=gone + 1, end_sequence_number=gone + 3)
        )
        assert not reply.intact
        assert reply.first_break.sequence_number == gone
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_MISSING
    finally:
        await _restore(audit_db, original, deleted=True)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (-1, 0, "start_sequence_number"),
        (0, -5, "end_sequence_number"),
        (10, 9, "end_sequence_number"),
        (1, 1_000_001, "end_sequence_number"),
        (5, 1_000_005, "end_sequence_number"),
    ],
)
async def test_bad_range_is_invalid(auditor: Stub, start: int, end: int, field: str) -> None:
    assert await invalid_in(DOMAIN, auditor.VerifyChain(_verify(start, end))) == [field]


async def test_range_of_exactly_a_million_events_is_accepted(auditor: Stub) -> None:
    reply = await auditor.VerifyChain(_verify(1, 1_000_000))
    assert reply.intact


async def test_only_auditors_verify_the_chain(doctor: Stub, writer: Stub) -> None:
    for stub in (doctor, writer):
        failure = await fails(stub.VerifyChain(_verify()))
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, failure


# --- helpers ---------------------------------------------------------------------------------


async def _row(engine: AsyncEngine, number: int) -> dict[str, object]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT * FROM audit.events WHERE sequence_number = :n"), {"n": number}
        )
        return dict(result.mappings().one())


async def _restore(engine: AsyncEngine, row: dict[str, object], *, deleted: bool = False) -> None:
    columns = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    async with behind_the_service(engine) as connection:
        if not deleted:
            await connection.execute(
                text("DELETE FROM audit.events WHERE sequence_number = :sequence_number"), row
            )
        await connection.execute(
            text(f"INSERT INTO audit.events ({columns}) VALUES ({values})"), row
        )
