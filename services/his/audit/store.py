"""Queries of the audit schema: reads in the caller's SQLAlchemy session; the group-commit
writer's statements on the asyncpg driver connection.

Events are only inserted, always by the group-commit writer while it holds the chain head's row
lock (`lock_head_fast`), so sequence numbers are assigned by one writer at a time across replicas.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Row, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from his.audit.anchor import SignedCheckpoint
from his.audit.checkpoint import Checkpoint, StoredCheckpoint
from his.audit.mapping import event_name
from his.audit.tables import (
    chain_checkpoints,
    chain_head,
    checkpoint_requests,
    events,
    verify_checkpoint,
)
from his.base.errors import NotFound

_HEAD = 1


@dataclass(frozen=True)
class Head:
    """The end of the chain: last sequence number (0 when empty) and its hash."""

    sequence_number: int
    hash: bytes


async def read_head(session: AsyncSession) -> Head:
    """The chain head as last committed, without locking it."""
    query = select(chain_head.c.last_sequence_number, chain_head.c.last_hash).where(
        chain_head.c.id == _HEAD
    )
    row = (await session.execute(query)).one()
    return Head(int(row.last_sequence_number), bytes(row.last_hash))


# The group-commit writer's statements, on the driver connection (one append is on every audited
# call's path, so it skips SQLAlchemy's per-statement work).
_LOCK_HEAD = "SELECT last_sequence_number, last_hash FROM audit.chain_head WHERE id = $1 FOR UPDATE"
_EVENTS_BY_ID = "SELECT * FROM audit.events WHERE event_id = ANY($1::uuid[])"
_SET_HEAD = "UPDATE audit.chain_head SET last_sequence_number = $2, last_hash = $3 WHERE id = $1"
_COLUMNS = tuple(column.name for column in events.c)
# Column names come from our own table definition; every value is a parameter.
_INSERT = "INSERT INTO audit.events ({}) VALUES ({})".format(  # noqa: S608
    ", ".join(_COLUMNS), ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
)


async def lock_head_fast(connection: asyncpg.Connection) -> Head:
    """The chain head, locked until the transaction ends (serialises appends across replicas)."""
    row = await connection.fetchrow(_LOCK_HEAD, _HEAD)
    assert row is not None  # the migration creates the head row
    return Head(int(row["last_sequence_number"]), bytes(row["last_hash"]))


async def events_by_id_fast(
    connection: asyncpg.Connection, event_ids: Collection[str]
) -> dict[str, asyncpg.Record]:
    """The stored events among `event_ids`, by id."""
    if not event_ids:
        return {}
    rows = await connection.fetch(_EVENTS_BY_ID, list(event_ids))
    return {str(row["event_id"]): row for row in rows}


async def append_fast(
    connection: asyncpg.Connection, rows: Sequence[Mapping[str, Any]], head: Head
) -> None:
    """Insert complete event rows (numbered and hashed by the writer) and move the locked head
    to the last of them; inserts are pipelined."""
    if rows:  # a group of replays only appends nothing, and the head stays where it is
        await connection.executemany(_INSERT, [tuple(row[c] for c in _COLUMNS) for row in rows])
        await connection.execute(_SET_HEAD, _HEAD, head.sequence_number, head.hash)


async def get_event(session: AsyncSession, event_id: str) -> Row[Any]:
    """One stored event, or NOT_FOUND."""
    row = (await session.execute(select(*events.c).where(events.c.event_id == event_id))).first()
    if row is None:
        name = event_name(event_id)
        raise NotFound(f"{name} not found", metadata={"name": name})
    return row


@dataclass(frozen=True)
class EventFilter:
    """The filters of ListAuditEvents (all must match)."""

    patient: str = ""
    agent_staff: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    action: str | None = None
    emergency_only: bool = False

    def fingerprint(self) -> str:
        """What a page token is bound to: exactly these filters."""
        parts = (
            self.patient,
            self.agent_staff,
            self.start.isoformat() if self.start else "",
            self.end.isoformat() if self.end else "",
            self.action or "",
            str(self.emergency_only),
        )
        return "audit-events " + hashlib.sha256("\0".join(parts).encode()).hexdigest()


async def list_events(
    session: AsyncSession, where: EventFilter, *, after: int, limit: int
) -> Sequence[Row[Any]]:
    """Matching events with sequence numbers above `after`, in sequence order."""
    query = select(*events.c).where(events.c.sequence_number > after)
    if where.patient:
        query = query.where(events.c.patient == where.patient)
    if where.agent_staff:
        query = query.where(events.c.agent_staff == where.agent_staff)
    if where.start is not None:
        query = query.where(events.c.event_time >= where.start)
    if where.end is not None:
        query = query.where(events.c.event_time < where.end)
    if where.action is not None:
        query = query.where(events.c.action == where.action)
    if where.emergency_only:
        query = query.where(events.c.emergency_access)
    query = query.order_by(events.c.sequence_number).limit(limit)
    return (await session.execute(query)).all()


async def hash_of(session: AsyncSession, sequence_number: int) -> bytes | None:
    """The stored hash of one event, None when there is no such row."""
    query = select(events.c.hash).where(events.c.sequence_number == sequence_number)
    value = (await session.execute(query)).scalar_one_or_none()
    return None if value is None else bytes(value)


async def chain_chunk(
    session: AsyncSession, *, start: int, end: int, limit: int
) -> Sequence[Row[Any]]:
    """Up to `limit` events with sequence numbers in [start, end], in order (for VerifyChain)."""
    query = (
        select(*events.c)
        .where(events.c.sequence_number >= start, events.c.sequence_number <= end)
        .order_by(events.c.sequence_number)
        .limit(limit)
    )
    return (await session.execute(query)).all()


# VerifyChain's worker process reads on its own driver connection (no SQLAlchemy there).
_CHAIN_CHUNK = (
    "SELECT * FROM audit.events WHERE sequence_number BETWEEN $1 AND $2"
    " ORDER BY sequence_number LIMIT $3"
)


async def chain_chunk_fast(
    connection: asyncpg.Connection, *, start: int, end: int, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` events with sequence numbers in [start, end], in order (keyset by the
    primary key, so every chunk is one index range scan however far into the chain)."""
    return list(await connection.fetch(_CHAIN_CHUNK, start, end, limit))


async def read_checkpoint(session: AsyncSession, *, lock: bool = False) -> StoredCheckpoint:
    """The verification checkpoint row as stored; with `lock`, locked until the transaction
    ends (so concurrent checks move it one at a time)."""
    query = select(verify_checkpoint).where(verify_checkpoint.c.id == _HEAD)
    if lock:
        query = query.with_for_update()
    return StoredCheckpoint.of((await session.execute(query)).one())


async def put_checkpoint(session: AsyncSession, checkpoint: Checkpoint, mac: bytes) -> None:
    """Replace the verification checkpoint (its row locked by `read_checkpoint(lock=True)`)."""
    await session.execute(
        verify_checkpoint.update()
        .where(verify_checkpoint.c.id == _HEAD)
        .values(
            sequence_number=checkpoint.sequence_number,
            hash=checkpoint.hash,
            verified_at=checkpoint.verified_at,
            mac=mac,
        )
    )


# --- signed checkpoints (anchor.py) ------------------------------------------------------------

# Every column but the event prefixes, which are read only to locate a rewrite.
_SIGNED = tuple(c for c in chain_checkpoints.c if c.name != "event_prefixes")
# One creator of checkpoints at a time across replicas (numbers have no gaps).
_CHECKPOINT_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('his.audit.chain_checkpoints'))")


def signed_of(row: Any) -> SignedCheckpoint:
    """A checkpoint from a row of `audit.chain_checkpoints`."""
    return SignedCheckpoint(
        checkpoint_number=int(row.checkpoint_number),
        sequence_number=int(row.sequence_number),
        hash=bytes(row.hash),
        create_time=row.create_time,
        key_id=str(row.key_id),
        previous_digest=bytes(row.previous_digest),
        events_digest=bytes(row.events_digest),
        signature=bytes(row.signature),
    )


async def newest_checkpoint(session: AsyncSession) -> SignedCheckpoint | None:
    """The checkpoint with the highest number, None when there is none."""
    query = select(*_SIGNED).order_by(chain_checkpoints.c.checkpoint_number.desc()).limit(1)
    row = (await session.execute(query)).first()
    return None if row is None else signed_of(row)


async def checkpoint_scope_bounds(session: AsyncSession, from_sequence: int) -> tuple[int, int]:
    """The numbers of the checkpoints a check from event `from_sequence` relies on: from the
    newest one at or below it (or the first) to the newest of all; (1, 0) when there is none."""
    first = select(func.coalesce(func.max(chain_checkpoints.c.checkpoint_number), 1)).where(
        chain_checkpoints.c.sequence_number <= from_sequence
    )
    newest = select(func.coalesce(func.max(chain_checkpoints.c.checkpoint_number), 0))
    return int((await session.execute(first)).scalar_one()), int(
        (await session.execute(newest)).scalar_one()
    )


async def checkpoints_between(
    session: AsyncSession, first: int, last: int
) -> list[SignedCheckpoint]:
    """Checkpoints numbered `first`..`last`, oldest first."""
    query = (
        select(*_SIGNED)
        .where(chain_checkpoints.c.checkpoint_number.between(first, last))
        .order_by(chain_checkpoints.c.checkpoint_number)
    )
    return [signed_of(row) for row in (await session.execute(query)).all()]


async def checkpoint_by_number(session: AsyncSession, number: int) -> SignedCheckpoint | None:
    """One checkpoint, None when there is no such row."""
    query = select(*_SIGNED).where(chain_checkpoints.c.checkpoint_number == number)
    row = (await session.execute(query)).first()
    return None if row is None else signed_of(row)


async def event_prefixes(session: AsyncSession, number: int) -> bytes:
    """The event-hash prefixes stored with checkpoint `number` (empty when it is gone)."""
    query = select(chain_checkpoints.c.event_prefixes).where(
        chain_checkpoints.c.checkpoint_number == number
    )
    value = (await session.execute(query)).scalar_one_or_none()
    return b"" if value is None else bytes(value)


async def first_unmatched_checkpoint(
    session: AsyncSession, first: int, last: int
) -> tuple[int, bytes | None] | None:
    """Of the checkpoints numbered `first`..`last`, the lowest-numbered one whose event no longer
    has the checkpoint's hash: (its number, the event's hash now, None when the event is gone)."""
    if first > last:
        return None
    query = (
        select(chain_checkpoints.c.checkpoint_number, events.c.hash)
        .select_from(
            chain_checkpoints.outerjoin(
                events, events.c.sequence_number == chain_checkpoints.c.sequence_number
            )
        )
        .where(
            chain_checkpoints.c.checkpoint_number.between(first, last),
            events.c.hash.is_distinct_from(chain_checkpoints.c.hash),
        )
        .order_by(chain_checkpoints.c.checkpoint_number)
        .limit(1)
    )
    row = (await session.execute(query)).first()
    if row is None:
        return None
    return int(row.checkpoint_number), None if row.hash is None else bytes(row.hash)


async def event_hashes(session: AsyncSession, *, start: int, end: int, limit: int) -> Sequence[Any]:
    """(sequence_number, hash) of up to `limit` events in [start, end], in order."""
    query = (
        select(events.c.sequence_number, events.c.hash)
        .where(events.c.sequence_number >= start, events.c.sequence_number <= end)
        .order_by(events.c.sequence_number)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def lock_checkpoints(session: AsyncSession) -> None:
    """Become the only creator of checkpoints until the transaction ends."""
    await session.execute(_CHECKPOINT_LOCK)


async def insert_checkpoint(
    session: AsyncSession, checkpoint: SignedCheckpoint, prefixes: bytes
) -> None:
    """Store a signed checkpoint with the event prefixes it covers."""
    await session.execute(
        chain_checkpoints.insert().values(
            checkpoint_number=checkpoint.checkpoint_number,
            sequence_number=checkpoint.sequence_number,
            hash=checkpoint.hash,
            create_time=checkpoint.create_time,
            key_id=checkpoint.key_id,
            previous_digest=checkpoint.previous_digest,
            events_digest=checkpoint.events_digest,
            event_prefixes=prefixes,
            signature=checkpoint.signature,
        )
    )


async def checkpoint_of_request(session: AsyncSession, request_id: str) -> int | None:
    """The checkpoint number a CreateChainCheckpoint `request_id` got, if any."""
    query = select(checkpoint_requests.c.checkpoint_number).where(
        checkpoint_requests.c.request_id == request_id
    )
    value = (await session.execute(query)).scalar_one_or_none()
    return None if value is None else int(value)


async def remember_request(session: AsyncSession, request_id: str, number: int) -> int:
    """Record that `request_id` got checkpoint `number`; the number it got first if it was
    recorded before (the primary key decides, not a search)."""
    await session.execute(
        insert(checkpoint_requests)
        .values(request_id=request_id, checkpoint_number=number)
        .on_conflict_do_nothing()
    )
    first = await checkpoint_of_request(session, request_id)
    assert first is not None
    return first


async def list_checkpoints(
    session: AsyncSession, *, before: int | None, limit: int
) -> list[SignedCheckpoint]:
    """Checkpoints numbered below `before` (all when None), newest first."""
    query = select(*_SIGNED).order_by(chain_checkpoints.c.checkpoint_number.desc()).limit(limit)
    if before is not None:
        query = query.where(chain_checkpoints.c.checkpoint_number < before)
    return [signed_of(row) for row in (await session.execute(query)).all()]
