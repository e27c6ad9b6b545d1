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
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from his.audit.v1 import audit_service_pb2 as pb
from his.audit.validation import (
    MAX_RESOURCE_NAME,
    entity_changes_violations,
    event_violations,
    name_of,
)
from his.base import identity
from his.base.errors import Unavailable
from his.base.identity import Principal
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


# Distinct shapes are few (callers x operations x outcomes); the bound only guards against an
# unbounded number of callers in a long-lived process.
_SHAPES_LIMIT = 10_000
# Stand-ins for what each event has of its own, to check a shape once (see _Shape).
_SAMPLE_ID = "00000000-0000-4000-8000-000000000000"
_SAMPLE_PATIENT = f"patients/{_SAMPLE_ID}"


@dataclass(frozen=True)
class _Shape:
    """Everything an event takes from its call apart from its id, time, trace id, patient and
    resource name: the agent (from the caller), what was done and why. A process sees few
    distinct shapes, so each is built and checked against the audit service's rules once, and
    an event is a copy of its shape with its own values filled in (which are checked each time:
    the id, time and trace id are made here and valid by construction)."""

    principal: Principal | None
    action: int
    outcome: int
    outcome_description: str
    operation: str
    resource_type: str
    entity: bool
    patient: bool
    purpose_of_use: int
    emergency_access_grant: str


def _refuse(fields: Sequence[str]) -> Unavailable:
    # A bug in the calling servicer; field names only (values may be patient data).
    log.error("invalid audit event refused", extra={"fields": {"fields": list(fields)}})
    return audit_unavailable()


def _check_own(event: pb.AuditEvent, shape: _Shape) -> None:
    """The rules for the values an event does not share with its shape (patient, resource)."""
    v = Violations()
    name_of(v, "patient", event.patient, collection="patients")
    if shape.entity:
        name = event.entity.resource_name
        if name != name.strip():
            v.add("entity.resource_name", "must not start or end with white space")
        v.text("entity.resource_name", name, max_len=MAX_RESOURCE_NAME, required=True)
        if event.entity.changes:
            entity_changes_violations(v, event.entity.changes, "entity.changes")
    if v.items:
        raise _refuse([violation.field for violation in v.items])


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
        # Each shape's event as bytes, checked (see _Shape); None for a shape that breaks a rule.
        self._shapes: dict[_Shape, bytes | None] = {}

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
        changes: Sequence[pb.AuditFieldChange] = (),
    ) -> pb.AuditEvent:
        """An event of the call being served: a fresh id, now, its agent and trace id; `changes`
        (the changed fields before and after) go with the entity, so need a resource name.
        Raises Unavailable(reason="AUDIT_UNAVAILABLE") for an event that breaks the audit
        service's rules: sent, it would fail the whole batch it travels in."""
        shape = _Shape(
            identity.current_or_none(),
            action,
            outcome,
            outcome_description,
            operation,
            resource_type,
            bool(resource_name or resource_type),
            bool(patient),
            purpose_of_use,
            emergency_access_grant,
        )
        if shape not in self._shapes:
            self._shapes[shape] = self._template(shape)
        template = self._shapes[shape]
        if template is None:
            raise _refuse(["(shape)"])
        event = pb.AuditEvent.FromString(template)
        event.event_id = str(uuid.uuid4())
        # Microseconds: what the audit service stores, and hashes, of an event's time.
        event.event_time.FromMicroseconds(time.time_ns() // 1000)
        event.trace_id = current_trace_id()
        event.patient = patient
        if shape.entity:
            event.entity.resource_name = resource_name
            event.entity.changes.extend(changes)
        elif changes:
            raise _refuse(["entity.changes"])
        _check_own(event, shape)
        return event

    def _template(self, shape: _Shape) -> bytes | None:
        """The shape's event as bytes, or None (logged) when it breaks a rule."""
        if len(self._shapes) >= _SHAPES_LIMIT:
            self._shapes.clear()
        event = pb.AuditEvent(
            action=pb.AuditEventAction.ValueType(shape.action),
            outcome=pb.AuditEventOutcome.ValueType(shape.outcome),
            outcome_description=shape.outcome_description,
            operation=shape.operation,
            agent=self._agent(shape.principal),
            purpose_of_use=pb.PurposeOfUse.ValueType(shape.purpose_of_use),
            emergency_access=bool(shape.emergency_access_grant),
            emergency_access_grant=shape.emergency_access_grant,
        )
        if shape.entity:
            event.entity.resource_type = shape.resource_type
        sample = pb.AuditEvent()
        sample.CopyFrom(event)
        sample.event_id = _SAMPLE_ID
        sample.event_time.GetCurrentTime()
        sample.patient = _SAMPLE_PATIENT if shape.patient else ""
        if shape.entity:
            sample.entity.resource_name = _SAMPLE_PATIENT
        v = Violations()
        event_violations(v, sample, "event", now=dt.datetime.now(dt.UTC))
        if v.items:
            _refuse([violation.field for violation in v.items])
            return None
        return event.SerializeToString()

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
        changes: Sequence[pb.AuditFieldChange] = (),
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
                    changes=changes,
                )
            ]
        )

    async def record_many(self, events: Sequence[pb.AuditEvent]) -> None:
        """Record several events made by `event` (which checks them; for example one per
        patient of a list): stored with the open transaction, or committed before this returns.
        Raises Unavailable(reason="AUDIT_UNAVAILABLE") if they could not be."""
        if not events:
            return
        if self._closed:
            raise audit_unavailable()
        outgoing = [
            Outgoing(
                AUDIT,
                envelope(
                    event,
                    source=self._service,
                    event_id=event.event_id,
                    subject=event.entity.resource_name,
                    patient=event.patient,
                    occurred=event.event_time,
                    trace_id=event.trace_id,
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

    def _agent(self, principal: Principal | None) -> pb.AuditAgent:
        agent = pb.AuditAgent(service_account=self._service)
        if principal is not None and (principal.is_staff or principal.is_patient):
            if principal.is_staff:
                agent.staff = principal.subject
            else:
                # A signed-in patient acted on their own records: they are the actor.
                agent.patient = principal.subject
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
