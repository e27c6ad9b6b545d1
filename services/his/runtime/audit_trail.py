"""`AuditTrail`: how every service records what it did, durably, before it answers.

A servicer calls `await audit.record(action=..., operation=..., patient=...)`. The event goes into
the service's own outbox (his.runtime.outbox): inside the open transaction for a write, so the
change and its audit event commit or roll back together; for a read, in a commit shared with
concurrent reads, before the read answers. Either way the answer waits on the service's own
database only, never on the audit service: the relay delivers events to it afterwards, at least
once, and the audit service chains each event once by its id.

If the event cannot be stored the caller gets UNAVAILABLE `AUDIT_UNAVAILABLE` and no data: fail
closed. The agent of an event comes from the call being served (the person, their roles, the
service that relayed the call); the relay sends it with this service's own identity.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

from his.audit.v1 import audit_service_pb2 as pb
from his.audit.validation import event_violations
from his.base import identity
from his.base.errors import Unavailable
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.runtime.outbox import Outbox, Outgoing, envelope
from his.runtime.relay import Deliver, Undeliverable
from his.runtime.telemetry import current_trace_id
from his.runtime.validation import Violations
from his_client.clients import HisClients

log = logging.getLogger(__name__)

SUCCESS = pb.AUDIT_EVENT_OUTCOME_SUCCESS
TREATMENT = pb.PURPOSE_OF_USE_TREATMENT

# The most events WriteAuditEvents takes in one call.
MAX_BATCH = 500
# A delivery call may take this long: no caller waits on it, and an audit service that is slow
# under load must not be hammered with retries of batches it is still storing.
DEFAULT_TIMEOUT_S = 10.0

# The outbox destination of audit events: the audit service.
AUDIT = "audit"


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


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.events = Counter(
            "his_audit_trail_events",
            "Audit events recorded into the outbox, by result.",
            ("result",),
            registry=registry,
        )


class AuditTrail:
    """Records audit events into the service's outbox, failing closed."""

    def __init__(
        self, outbox: Outbox, service: str, *, registry: CollectorRegistry | None = None
    ) -> None:
        self._outbox = outbox
        self._service = service
        self._closed = False
        self._metrics = _Metrics(registry)

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
        """Record several events (for example one per patient of a list; see `event`): stored
        with the open transaction, or committed before this returns. Raises
        Unavailable(reason="AUDIT_UNAVAILABLE") if they could not be."""
        if not events:
            return
        if self._closed:
            raise audit_unavailable()
        _check(events)
        outgoing = [
            Outgoing(
                AUDIT,
                envelope(
                    event,
                    source=self._service,
                    event_id=event.event_id,
                    subject=event.entity.resource_name,
                    patient=event.patient,
                    occur_time=event.event_time.ToDatetime(dt.UTC),
                ),
            )
            for event in events
        ]
        try:
            await self._outbox.add(outgoing)
        except Exception as error:
            self._metrics.events.labels("failure").inc(len(events))
            log.warning(
                "audit events not stored; caller refused",
                extra={"fields": {"events": len(events), "error": type(error).__name__}},
            )
            raise audit_unavailable() from None
        self._metrics.events.labels("success").inc(len(events))

    async def close(self) -> None:
        """Refuse new events (those stored stay in the outbox for the relay)."""
        self._closed = True

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


def audit_delivery(clients: HisClients, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Deliver:
    """The relay's way to the audit service: one WriteAuditEvents per batch (the audit service
    appends each event once by its id, so a batch delivered twice is stored once)."""

    async def deliver(envelopes: Sequence[EventEnvelope]) -> None:
        events = []
        for item in envelopes:
            event = pb.AuditEvent()
            if not item.payload.Unpack(event):
                raise Undeliverable(f"outbox event {item.event_id} is not an AuditEvent")
            events.append(event)
        for start in range(0, len(events), MAX_BATCH):
            batch = events[start : start + MAX_BATCH]
            reply = await clients.audit.WriteAuditEvents(
                pb.WriteAuditEventsRequest(audit_events=batch), timeout=timeout_s
            )
            if len(reply.audit_events) != len(batch):
                raise RuntimeError("the audit service answered a different number of events")

    return deliver
