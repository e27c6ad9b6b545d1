"""Incremental VerifyChain and full passes that share and do not starve: the checkpoint moves
with intact checks, tampering after it is found incrementally, tampering before it only by a full
pass (which then moves the checkpoint back), a forged checkpoint is ignored, concurrent full passes
are one pass, and the service answers other calls while a pass is being checked.

Tampering goes through SQL as a database superuser would; each test puts the row back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit import verification, verify_worker
from his.audit.chain import ChainCheck
from his.audit.v1 import audit_service_pb2 as pb
from his.audit.verification import ChainVerifier
from tests.audit.helpers import DOMAIN, Stub, behind_the_service, events, scalar, write_request
from tests.audit.test_verify import _restore, _row
from tests.support import invalid_in

INCREMENTAL = pb.VerifyChainRequest(incremental=True)
FULL = pb.VerifyChainRequest()


async def _write(writer: Stub, count: int) -> list[pb.AuditEvent]:
    return list((await writer.WriteAuditEvents(write_request(*events(count)))).audit_events)


async def _checkpoint(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT sequence_number FROM audit.verify_checkpoint"))


async def _alter(engine: AsyncEngine, number: int) -> dict[str, object]:
    original = await _row(engine, number)
    async with behind_the_service(engine) as connection:
        await connection.execute(
            text("UPDATE audit.events SET outcome = 'major_failure' WHERE sequence_number = :n"),
            {"n": number},
        )
    return original


@pytest.fixture
async def small_chunks(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The worker reading 7 rows at a time (70 a span), so passes cross chunk and span ends."""
    monkeypatch.setattr(verification, "VERIFY_CHUNK", 7)
    yield


async def test_incremental_check_continues_from_where_the_last_one_ended(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine, small_chunks: None
) -> None:
    await _write(writer, 3)
    full = await auditor.VerifyChain(FULL)
    assert full.intact and await _checkpoint(audit_db) == full.end_sequence_number
    added = await _write(writer, 30)

    reply = await auditor.VerifyChain(INCREMENTAL)

    assert reply.intact, reply
    assert reply.start_sequence_number == full.end_sequence_number + 1
    assert reply.end_sequence_number == added[-1].sequence_number
    assert reply.end_hash == added[-1].hash
    assert reply.HasField("checkpoint_time")
    assert await _checkpoint(audit_db) == added[-1].sequence_number
    # Nothing appended since: an empty range that ends where the checkpoint is.
    again = await auditor.VerifyChain(INCREMENTAL)
    assert again.intact
    assert (again.start_sequence_number, again.end_sequence_number) == (
        added[-1].sequence_number + 1,
        added[-1].sequence_number,
    )
    assert again.end_hash == added[-1].hash
    assert again.checkpoint_time.ToDatetime() >= reply.checkpoint_time.ToDatetime()


async def test_incremental_check_finds_tampering_after_the_checkpoint_until_it_is_repaired(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine, small_chunks: None
) -> None:
    assert (await auditor.VerifyChain(FULL)).intact
    added = await _write(writer, 20)
    victim = added[12].sequence_number
    original = await _alter(audit_db, victim)
    try:
        reply = await auditor.VerifyChain(INCREMENTAL)
        assert not reply.intact
        assert reply.start_sequence_number == added[0].sequence_number
        assert reply.first_break.sequence_number == victim
        assert reply.first_break.reason == pb.CHAIN_BREAK_REASON_ALTERED
        assert reply.end_hash == added[11].hash
        # The checkpoint moved up to the break, not past it: the next check reports it again.
        assert await _checkpoint(audit_db) == victim - 1
        again = await auditor.VerifyChain(INCREMENTAL)
        assert (again.intact, again.first_break.sequence_number) == (False, victim)
    finally:
        await _restore(audit_db, original)
    assert (await auditor.VerifyChain(INCREMENTAL)).intact


async def test_full_pass_finds_tampering_before_the_checkpoint_and_moves_it_back(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine, small_chunks: None
) -> None:
    stored = await _write(writer, 20)
    assert (await auditor.VerifyChain(FULL)).intact
    victim = stored[5].sequence_number
    original = await _alter(audit_db, victim)
    try:
        # Below the checkpoint: an incremental check does not read it again (that is its point).
        assert (await auditor.VerifyChain(INCREMENTAL)).intact
        full = await auditor.VerifyChain(FULL)
        assert not full.intact
        assert full.first_break.sequence_number == victim
        assert full.first_break.reason == pb.CHAIN_BREAK_REASON_ALTERED
        # From now on incremental checks start just before the break and report it too.
        assert await _checkpoint(audit_db) == victim - 1
        incremental = await auditor.VerifyChain(INCREMENTAL)
        assert (incremental.intact, incremental.first_break.sequence_number) == (False, victim)
    finally:
        await _restore(audit_db, original)
    assert (await auditor.VerifyChain(FULL)).intact
    head = await scalar(audit_db, "SELECT last_sequence_number FROM audit.chain_head")
    assert await _checkpoint(audit_db) == head


async def test_a_forged_checkpoint_is_ignored_and_the_check_starts_at_the_first_event(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    assert (await auditor.VerifyChain(FULL)).intact
    added = await _write(writer, 6)
    victim = added[2].sequence_number
    original = await _alter(audit_db, victim)
    # Hide the change from incremental checks by moving the checkpoint past it, as someone with
    # database access but without the service's key could.
    async with behind_the_service(audit_db) as connection:
        await connection.execute(
            text(
                "UPDATE audit.verify_checkpoint SET sequence_number = :n, hash = :h,"
                " verified_at = now(), mac = decode(repeat('ab', 32), 'hex')"
            ),
            {"n": added[-1].sequence_number, "h": added[-1].hash},
        )
    try:
        reply = await auditor.VerifyChain(INCREMENTAL)
        assert reply.start_sequence_number == 1
        assert not reply.HasField("checkpoint_time")
        assert (reply.intact, reply.first_break.sequence_number) == (False, victim)
    finally:
        await _restore(audit_db, original)
    assert (await auditor.VerifyChain(INCREMENTAL)).intact


@pytest.mark.parametrize("field", ["start_sequence_number", "end_sequence_number"])
async def test_incremental_check_with_a_bound_is_invalid(auditor: Stub, field: str) -> None:
    request = pb.VerifyChainRequest(incremental=True, **{field: 5})
    assert await invalid_in(DOMAIN, auditor.VerifyChain(request)) == [field]


async def test_concurrent_full_passes_are_one_pass(
    writer: Stub, auditor: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _write(writer, 10)
    callers = 6
    arrived = 0
    everyone_in = asyncio.Event()
    walks: list[int] = []
    full, walk = ChainVerifier.full, ChainVerifier._walk

    async def counting_full(self: ChainVerifier, last: int) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == callers:
            everyone_in.set()
        return await full(self, last)

    async def held_walk(self: ChainVerifier, check: ChainCheck, last: int) -> ChainCheck:
        walks.append(last)
        await everyone_in.wait()  # every caller is in before the first pass is checked
        return await walk(self, check, last)

    monkeypatch.setattr(ChainVerifier, "full", counting_full)
    monkeypatch.setattr(ChainVerifier, "_walk", held_walk)

    replies = await asyncio.gather(*(auditor.VerifyChain(FULL) for _ in range(callers)))

    assert len(walks) == 1, walks
    assert all(reply == replies[0] and reply.intact for reply in replies)


def slow_verify_span(dsn: str, check: ChainCheck, end: int, chunk: int, duty: float) -> ChainCheck:
    """The worker's task, holding its process for 2 s first (a long pass, in a small test)."""
    time.sleep(2)
    return verify_worker.verify_span(dsn, check, end, chunk, duty)


async def test_the_service_answers_other_calls_while_a_full_pass_is_checked(
    writer: Stub, auditor: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _write(writer, 5)
    walking = asyncio.Event()
    walk = ChainVerifier._walk

    async def signalling_walk(self: ChainVerifier, check: ChainCheck, last: int) -> ChainCheck:
        walking.set()
        return await walk(self, check, last)

    monkeypatch.setattr(ChainVerifier, "_walk", signalling_walk)
    monkeypatch.setattr(verification, "verify_span", slow_verify_span)

    async def verify() -> pb.VerifyChainResponse:
        return await auditor.VerifyChain(FULL)

    verifying = asyncio.create_task(verify())
    await walking.wait()

    # Were the checking on the service's event loop, these would wait for the whole pass.
    listed = await auditor.ListAuditEvents(pb.ListAuditEventsRequest(page_size=5))
    written = await _write(writer, 1)

    assert not verifying.done()
    assert len(listed.audit_events) == 5 and written[0].sequence_number > 0
    assert (await verifying).intact
