"""Group commit: concurrent WriteAuditEvents calls appended by one writer in one transaction.

Every append must lock the chain head, so appends are serial whatever we do; what group commit
changes is how many of them share one lock, one INSERT and one COMMIT. Calls queue their batches;
one writer task takes everything pending, appends it in one transaction and answers each call
with its own stored events. Each call's batch is judged on its own before anything is appended,
so one call's conflicting replay fails that call only, never the others in the same group.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from his.audit import store
from his.audit.chain import content_key, event_hash
from his.audit.mapping import content_columns, event_from_columns
from his.audit.v1 import audit_service_pb2 as pb
from his.base.errors import AlreadyExists, HisError, Unavailable
from his.runtime.database import Database, translate_error

log = logging.getLogger(__name__)

# Events appended per transaction at most; more pending calls wait for the next round.
MAX_GROUP_EVENTS = 5000


@dataclass
class _Call:
    """One caller's batch waiting for the writer."""

    writer: str
    service_account: str
    events: Sequence[pb.AuditEvent]
    future: asyncio.Future[list[pb.AuditEvent]]
    # Filled by the writer: the answer, or why this call's batch was refused.
    stored: list[pb.AuditEvent] = field(default_factory=list)
    error: HisError | None = None


@dataclass
class _Known:
    """An event already in the chain (or appended earlier in this transaction)."""

    event: pb.AuditEvent
    key: bytes
    writer: str


class GroupCommitWriter:
    """Appends batches of validated events to the chain, many calls per transaction."""

    def __init__(self, database: Database, *, max_group_events: int = MAX_GROUP_EVENTS) -> None:
        self._db = database
        self._max_group_events = max_group_events
        self._pending: list[_Call] = []
        self._task: asyncio.Task[None] | None = None

    async def write(
        self, events: Sequence[pb.AuditEvent], *, writer: str, service_account: str
    ) -> list[pb.AuditEvent]:
        """Append `events` (validated, output-only fields ignored) atomically, in order; the
        stored events in the same order. Events stored before with the same content and writer
        are returned as stored; a different content or writer is ALREADY_EXISTS."""
        future: asyncio.Future[list[pb.AuditEvent]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Call(writer, service_account, events, future))
        if self._task is None:
            # Its own context: the writer serves many callers and must carry none of them.
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())
        return await future

    async def _run(self) -> None:
        try:
            while self._pending:
                await self._commit(self._take())
        finally:
            self._task = None

    def _take(self) -> list[_Call]:
        group: list[_Call] = []
        size = 0
        while self._pending:
            call = self._pending[0]
            if group and size + len(call.events) > self._max_group_events:
                break
            group.append(self._pending.pop(0))
            size += len(call.events)
        return group

    async def _commit(self, group: list[_Call]) -> None:
        try:
            async with self._db.driver_transaction() as connection:
                head = await store.lock_head_fast(connection)
                record_time = dt.datetime.now(dt.UTC)
                ids = {event.event_id for call in group for event in call.events}
                known = {
                    event_id: _known(row)
                    for event_id, row in (await store.events_by_id_fast(connection, ids)).items()
                }
                rows: list[dict[str, Any]] = []
                for call in group:
                    head = _plan(call, known, head, record_time, rows)
                await store.append_fast(connection, rows, head)
        except BaseException as error:
            if isinstance(error, Exception) and len(group) > 1 and translate_error(error) is None:
                # Not an outage: something in one call's events the database refused. Commit
                # each call on its own, so only that call fails, not everyone who shared its group.
                for call in group:
                    call.stored.clear()
                    call.error = None
                    await self._commit([call])
                return
            for call in group:
                if not call.future.done():
                    call.future.set_exception(_failure(error))
            if not isinstance(error, Exception):
                raise
            return
        for call in group:
            if call.future.done():  # the caller gave up (cancelled); its events are stored
                continue
            if call.error is not None:
                call.future.set_exception(call.error)
            else:
                call.future.set_result(call.stored)


def _known(values: Any) -> _Known:
    event = event_from_columns(values)
    return _Known(event, content_key(event), str(values["writer_service"]))


def _plan(
    call: _Call,
    known: dict[str, _Known],
    head: store.Head,
    record_time: dt.datetime,
    rows: list[dict[str, Any]],
) -> store.Head:
    """Judge one call's batch against what is stored; if it is acceptable, number and hash its
    new events onto the chain (adding their rows). Returns the new head."""
    keys = [content_key(event) for event in call.events]
    for event, key in zip(call.events, keys, strict=True):
        earlier = known.get(event.event_id)
        if earlier is not None and (earlier.key != key or earlier.writer != call.writer):
            call.error = AlreadyExists(
                f"audit event {event.event_id} is already stored with different content"
                " or by another service",
                reason="AUDIT_EVENT_EXISTS",
                metadata={"event_id": event.event_id},
            )
            return head
    for event, key in zip(call.events, keys, strict=True):
        earlier = known.get(event.event_id)
        if earlier is None:
            values = content_columns(event)
            values.update(
                sequence_number=head.sequence_number + 1,
                previous_hash=head.hash,
                record_time=record_time,
                agent_service_account=call.service_account,
                writer_service=call.writer,
            )
            stored = event_from_columns(values)
            stored.hash = event_hash(stored)
            values["hash"] = stored.hash
            rows.append(values)
            head = store.Head(stored.sequence_number, stored.hash)
            earlier = known[event.event_id] = _Known(stored, key, call.writer)
        call.stored.append(earlier.event)
    return head


def _failure(error: BaseException) -> BaseException:
    """What the calls of a failed group are told: the database's error as it is (the error
    interceptor maps outages and timeouts), or UNAVAILABLE when the writer itself was stopped."""
    if isinstance(error, Exception):
        log.warning("audit group commit failed", extra={"fields": {"error": type(error).__name__}})
        return error
    return Unavailable("the audit writer was stopped", reason="AUDIT_WRITER_STOPPED")
