"""`AuditTrail`: how every service records what it did, and waits until the record is safe.

A servicer calls `await audit.record(action=..., operation=..., patient=...)` before it answers:
the event is queued and the call returns once the audit service has committed it. Events queued
by concurrent calls travel together: one WriteAuditEvents in flight at a time, and everything
queued meanwhile goes in the next batch. Whatever goes wrong (audit down, deadline, open breaker,
refused batch) every waiting caller gets UNAVAILABLE `AUDIT_UNAVAILABLE`, so it returns no patient
data and commits no change: fail closed.

The agent of an event comes from the call being served (the person, their roles, the service that
relayed the call); the batch itself is sent with this service's own identity, never a person's.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from his.audit.v1 import audit_service_pb2 as pb
from his.audit.validation import event_violations
from his.runtime import identity
from his.runtime.errors import Unavailable
from his.runtime.telemetry import current_trace_id
from his.runtime.validation import Violations
from his_client.clients import HisClients

log = logging.getLogger(__name__)

SUCCESS = pb.AUDIT_EVENT_OUTCOME_SUCCESS
TREATMENT = pb.PURPOSE_OF_USE_TREATMENT

# The most events WriteAuditEvents takes in one call.
MAX_BATCH = 500
DEFAULT_TIMEOUT_S = 2.0

_FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def _check(events: Sequence[pb.AuditEvent]) -> None:
    """Refuse an invalid event here, alone: sent, it would fail the whole batch it travels in."""
    v = Violations()
    now = dt.datetime.now(dt.UTC)
    for index, event in enumerate(events):
        event_violations(v, event, f"events[{index}]", now=now)
    if v.items:
        # A bug in the calling servicer; field names only (values may be patient data).
        log.error(
            "invalid audit event refused",
            extra={"fields": {"fields": [violation.field for violation in v.items]}},
        )
        raise audit_unavailable()


def audit_unavailable() -> Unavailable:
    """The one error a caller sees whenever its event could not be committed."""
    return Unavailable("audit trail unavailable", reason="AUDIT_UNAVAILABLE")


@dataclass
class _Waiting:
    event: pb.AuditEvent
    future: asyncio.Future[None]


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.batches = Counter(
            "his_audit_trail_batches",
            "WriteAuditEvents calls made by the audit trail, by result.",
            ("result",),
            registry=registry,
        )
        self.events = Counter(
            "his_audit_trail_events",
            "Audit events handed to the audit trail, by result.",
            ("result",),
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "his_audit_trail_flush_seconds",
            "Time one WriteAuditEvents batch took, success or not.",
            buckets=_FLUSH_BUCKETS,
            registry=registry,
        )


class AuditTrail:
    """Records audit events through the audit service, in batches, failing closed."""

    def __init__(
        self,
        clients: HisClients,
        service: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_batch: int = MAX_BATCH,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be 1 to {MAX_BATCH}")
        self._clients = clients
        self._service = service
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._metrics = _Metrics(registry)
        # Figures for tests and logs: WriteAuditEvents calls made, events committed.
        self.batches_sent = 0
        self.events_committed = 0

    def event(
        self,
        *,
        action: int,
        operation: str,
        patient: str = "",
        resource_name: str = "",
        resource_type: str = "",
        outcome: int = SUCCESS,
        outcome_description: str = "",
        purpose_of_use: int = TREATMENT,
        emergency_access_grant: str = "",
    ) -> pb.AuditEvent:
        """An event of the call being served: a fresh id, now, its agent and trace id."""
        event = pb.AuditEvent(
            event_id=str(uuid.uuid4()),
            action=pb.AuditEventAction.ValueType(action),
            outcome=pb.AuditEventOutcome.ValueType(outcome),
            outcome_description=outcome_description,
            operation=operation,
            agent=self._agent(),
            patient=patient,
            purpose_of_use=pb.PurposeOfUse.ValueType(purpose_of_use),
            emergency_access=bool(emergency_access_grant),
            emergency_access_grant=emergency_access_grant,
            trace_id=current_trace_id(),
        )
        event.event_time.FromDatetime(dt.datetime.now(dt.UTC))
        if resource_name or resource_type:
            event.entity.resource_name = resource_name
            event.entity.resource_type = resource_type
        return event

    async def record(
        self,
        *,
        action: int,
        operation: str,
        patient: str = "",
        resource_name: str = "",
        resource_type: str = "",
        outcome: int = SUCCESS,
        outcome_description: str = "",
        purpose_of_use: int = TREATMENT,
        emergency_access_grant: str = "",
    ) -> None:
        """Record one event of the call being served and wait until it is committed.

        Raises Unavailable(reason="AUDIT_UNAVAILABLE") if it could not be.
        """
        await self.record_many(
            [
                self.event(
                    action=action,
                    operation=operation,
                    patient=patient,
                    resource_name=resource_name,
                    resource_type=resource_type,
                    outcome=outcome,
                    outcome_description=outcome_description,
                    purpose_of_use=purpose_of_use,
                    emergency_access_grant=emergency_access_grant,
                )
            ]
        )

    async def record_many(self, events: Sequence[pb.AuditEvent]) -> None:
        """Record several events (for example one per patient of a list; see `event`) and wait
        until all are committed. Raises Unavailable(reason="AUDIT_UNAVAILABLE") otherwise."""
        if not events:
            return
        if self._closed:
            raise audit_unavailable()
        _check(events)
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(event, loop.create_future()) for event in events]
        self._queue.extend(waiting)
        if self._flusher is None:
            # No person's identity, deadline or span: the batch belongs to no single caller, and
            # the SDK then speaks with this service's own token.
            self._flusher = asyncio.create_task(self._flush_all(), context=contextvars.Context())
        failed = False
        try:
            for item in waiting:
                try:
                    await item.future
                except Unavailable:
                    failed = True
        finally:
            # A caller that gave up stops listening (its events are still sent).
            for item in waiting:
                item.future.cancel()
        if failed:
            raise audit_unavailable()

    async def close(self) -> None:
        """Flush what is queued, then refuse new events."""
        self._closed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    def _agent(self) -> pb.AuditAgent:
        agent = pb.AuditAgent(service_account=self._service)
        principal = identity.current_or_none()
        if principal is not None and principal.is_staff:
            agent.staff = principal.subject
            agent.roles.extend(sorted(principal.roles))
            if principal.via_service:
                # The service that relayed the person's call (ADR 0002).
                agent.on_behalf_of = f"services/{principal.via_service}"
        return agent

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._flush(batch)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[_Waiting]) -> None:
        started = time.monotonic()
        # Callers that stopped waiting (cancelled) still have their events sent: the action may
        # have happened, and an over-report is better than a gap.
        request = pb.WriteAuditEventsRequest(audit_events=[w.event for w in batch])
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._clients.audit.WriteAuditEvents(request, timeout=self._timeout_s)
            if len(reply.audit_events) != len(batch):
                raise RuntimeError("the audit service answered a different number of events")
        except Exception as error:
            self._metrics.batches.labels("failure").inc()
            self._metrics.events.labels("failure").inc(len(batch))
            log.warning(
                "audit batch failed; callers refused",
                extra={"fields": {"events": len(batch), "error": type(error).__name__}},
            )
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(audit_unavailable())
            return
        finally:
            self.batches_sent += 1
            self._metrics.flush_seconds.observe(time.monotonic() - started)
        self._metrics.batches.labels("success").inc()
        self._metrics.events.labels("success").inc(len(batch))
        self.events_committed += len(batch)
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_result(None)
