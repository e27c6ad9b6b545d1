"""Group commit under real concurrency: no lost, doubled or misnumbered event, the chain intact.

Several tests hold the chain head's row lock from SQL while calls pile up behind it, so that the
calls certainly meet in one group commit; events committed together share their record time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit import store
from his.audit.spec import SPEC as AUDIT
from his.audit.v1 import audit_service_pb2 as pb
from his.audit.v1 import audit_service_pb2_grpc as pb_grpc
from his.runtime.server import start
from tests.audit.helpers import (
    Stub,
    events,
    head_locked,
    make_event,
    wait_for_lock_waiters,
    write_request,
)
from tests.conftest import service_config
from tests.identity import Issuer, channel_as
from tests.support import failure_of


async def _rows(engine: AsyncEngine, event_ids: list[str]) -> list[Any]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT sequence_number, record_time FROM audit.events"
                " WHERE event_id = ANY(CAST(:ids AS uuid[])) ORDER BY sequence_number"
            ),
            {"ids": event_ids},
        )
        return list(result)


async def test_200_concurrent_writes_give_gapless_numbers_and_an_intact_chain(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine
) -> None:
    batches = [events(5) for _ in range(200)]
    ids = [e.event_id for batch in batches for e in batch]

    started = time.perf_counter()
    replies = await asyncio.gather(*(writer.WriteAuditEvents(write_request(*b)) for b in batches))
    elapsed = time.perf_counter() - started

    for batch, reply in zip(batches, replies, strict=True):
        assert [e.event_id for e in reply.audit_events] == [e.event_id for e in batch]
        numbers = [e.sequence_number for e in reply.audit_events]
        # A call's batch is appended atomically and in order: consecutive numbers.
        assert numbers == list(range(numbers[0], numbers[0] + 5))
    rows = await _rows(audit_db, ids)
    assert len(rows) == 1000
    first, last = rows[0].sequence_number, rows[-1].sequence_number
    assert [r.sequence_number for r in rows] == list(range(first, last + 1))
    verified = await auditor.VerifyChain(
        pb.VerifyChainRequest(start_sequence_number=first, end_sequence_number=last)
    )
    assert verified.intact, verified
    groups = len({r.record_time for r in rows})
    assert groups < 200  # group commit: several calls per transaction
    print(f"\n200 calls x 5 events: {1000 / elapsed:.0f} events/s, {groups} transactions")


async def test_calls_queued_behind_the_lock_commit_together(
    writer: Stub, audit_db: AsyncEngine
) -> None:
    batches = [events(2) for _ in range(50)]
    async with head_locked(audit_db):
        calls = asyncio.gather(*(writer.WriteAuditEvents(write_request(*b)) for b in batches))
        await wait_for_lock_waiters(audit_db)
        await asyncio.sleep(0.5)  # the other calls arrive and queue behind the blocked writer
    await calls

    rows = await _rows(audit_db, [e.event_id for batch in batches for e in batch])
    assert len(rows) == 100
    # Without group commit each call would be its own transaction (50 record times).
    assert len({r.record_time for r in rows}) <= 5


async def test_conflicting_batch_fails_alone_in_its_group(
    writer: Stub, audit_db: AsyncEngine
) -> None:
    stored = make_event()
    await writer.WriteAuditEvents(write_request(stored))
    conflicting = pb.AuditEvent()
    conflicting.CopyFrom(stored)
    conflicting.operation = "/his.patient.v1.PatientService/UpdatePatient"
    innocent_of_bad_batch = make_event()
    good = [events(3) for _ in range(20)]

    async with head_locked(audit_db):
        calls = [
            *(writer.WriteAuditEvents(write_request(*b)) for b in good[:10]),
            writer.WriteAuditEvents(write_request(innocent_of_bad_batch, conflicting)),
            *(writer.WriteAuditEvents(write_request(*b)) for b in good[10:]),
        ]
        results = asyncio.gather(*calls, return_exceptions=True)
        await wait_for_lock_waiters(audit_db)
        await asyncio.sleep(0.5)
    outcomes = await results

    bad = outcomes.pop(10)
    assert isinstance(bad, grpc.aio.AioRpcError)
    assert failure_of(bad).code == grpc.StatusCode.ALREADY_EXISTS
    assert all(isinstance(o, pb.WriteAuditEventsResponse) for o in outcomes), outcomes
    assert await _rows(audit_db, [innocent_of_bad_batch.event_id]) == []
    good_rows = await _rows(audit_db, [e.event_id for batch in good for e in batch])
    assert len(good_rows) == 60
    numbers = [r.sequence_number for r in good_rows]
    assert numbers == list(range(numbers[0], numbers[0] + 60))


async def test_concurrent_replays_of_one_batch_store_it_once(
    writer: Stub, audit_db: AsyncEngine
) -> None:
    batch = events(4)

    replies = await asyncio.gather(
        *(writer.WriteAuditEvents(write_request(*batch)) for _ in range(50))
    )

    assert all(list(r.audit_events) == list(replies[0].audit_events) for r in replies)
    assert len(await _rows(audit_db, [e.event_id for e in batch])) == 4


async def test_two_replicas_appending_at_once_keep_one_gapless_chain(
    writer: Stub, auditor: Stub, audit_db: AsyncEngine, audit_url: str, issuer: Issuer
) -> None:
    replica = await start(AUDIT, service_config("audit"), audit_url)
    try:
        async with channel_as(replica.address, issuer.service("patient")) as channel:
            second: Stub = pb_grpc.AuditServiceStub(channel)
            batches = [events(3) for _ in range(100)]
            replies = await asyncio.gather(
                *(
                    (writer if index % 2 else second).WriteAuditEvents(write_request(*b))
                    for index, b in enumerate(batches)
                )
            )
    finally:
        await replica.stop(grace_s=1)

    assert len(replies) == 100
    rows = await _rows(audit_db, [e.event_id for b in batches for e in b])
    numbers = [r.sequence_number for r in rows]
    assert numbers == list(range(numbers[0], numbers[0] + 300))
    verified = await auditor.VerifyChain(
        pb.VerifyChainRequest(start_sequence_number=numbers[0], end_sequence_number=numbers[-1])
    )
    assert verified.intact


async def test_writes_recover_after_the_database_drops_the_writers_connections(
    audit_db: AsyncEngine, audit_url: str, issuer: Issuer
) -> None:
    """The group commit runs on the driver connection, out of SQLAlchemy's sight: a connection
    the server killed must be thrown away, not handed to the next write (which would fail, and
    every write after it, until a restart)."""
    audit_backends = text(
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = 'his-audit' AND pid <> pg_backend_pid()"
    )
    async with audit_db.connect() as connection:
        others = set((await connection.scalars(audit_backends)).all())  # other tests' servers
    server = await start(AUDIT, service_config("audit"), audit_url)
    try:
        async with channel_as(server.address, issuer.service("patient")) as channel:
            stub: Stub = pb_grpc.AuditServiceStub(channel)
            await stub.WriteAuditEvents(write_request(*events(1)))
            async with audit_db.connect() as connection:
                ours = set((await connection.scalars(audit_backends)).all()) - others
                killed = [
                    await connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": p})
                    for p in ours
                ]
            assert killed and all(killed)
            outcomes = []
            for _ in range(4):
                try:
                    await stub.WriteAuditEvents(write_request(*events(1)))
                    outcomes.append("OK")
                except grpc.aio.AioRpcError as error:
                    outcomes.append(error.code().name)
    finally:
        await server.stop(grace_s=1)

    # At most the first write after the cut may fail (its connection was dead); then all work.
    assert outcomes[1:] == ["OK", "OK", "OK"]
    assert outcomes[0] in ("OK", "UNAVAILABLE")


async def test_events_the_database_refuses_fail_their_own_call_only(
    writer: Stub, audit_db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the database refuses a group for something in one call's events (not an outage), each
    call is committed on its own: the others in the group still succeed."""
    poison = make_event()
    real_append = store.append_fast

    async def refusing(connection: Any, rows: Any, head: Any) -> None:
        if any(str(row["event_id"]) == poison.event_id for row in rows):
            raise asyncpg.CharacterNotInRepertoireError("invalid byte sequence")
        await real_append(connection, rows, head)

    monkeypatch.setattr(store, "append_fast", refusing)
    good = [events(2) for _ in range(6)]
    async with head_locked(audit_db):
        results = asyncio.gather(
            *(writer.WriteAuditEvents(write_request(*b)) for b in good[:3]),
            writer.WriteAuditEvents(write_request(poison)),
            *(writer.WriteAuditEvents(write_request(*b)) for b in good[3:]),
            return_exceptions=True,
        )
        await wait_for_lock_waiters(audit_db)
        await asyncio.sleep(0.5)
    outcomes = await results

    bad = outcomes.pop(3)
    assert isinstance(bad, grpc.aio.AioRpcError)
    assert all(isinstance(o, pb.WriteAuditEventsResponse) for o in outcomes), outcomes
    assert len(await _rows(audit_db, [e.event_id for b in good for e in b])) == 12
    assert await _rows(audit_db, [poison.event_id]) == []
