"""Audit events between proto messages and the columns of `audit.events`.

One function builds an AuditEvent from column values, for rows read back and for rows about to be
inserted alike, so the hash computed at append time and the one recomputed by VerifyChain are of
the very same message.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from his.audit.v1 import audit_service_pb2 as pb
from his.runtime.enums import EnumText

ACTION = EnumText(pb.AuditEventAction.DESCRIPTOR)
OUTCOME = EnumText(pb.AuditEventOutcome.DESCRIPTOR)
PURPOSE = EnumText(pb.PurposeOfUse.DESCRIPTOR)

COLLECTION = "auditEvents"


def event_name(event_id: str) -> str:
    """`auditEvents/{event_id}`."""
    return f"{COLLECTION}/{event_id}"


_NO_CHANGES = "[]"


def _changes_text(changes: Sequence[pb.AuditFieldChange]) -> str:
    """AuditEntity.changes as the JSON text of the `entity_changes` column."""
    if not changes:
        return _NO_CHANGES
    items = [{"field_path": c.field_path, "before": c.before, "after": c.after} for c in changes]
    return json.dumps(items, ensure_ascii=False)


def content_columns(event: pb.AuditEvent) -> dict[str, Any]:
    """The columns a writer supplies (a validated event), without the server-set ones."""
    # ToDatetime drops nanoseconds beyond the microsecond, which the column could not hold.
    event_time = event.event_time.ToDatetime(tzinfo=dt.UTC)
    return {
        "event_id": event.event_id,
        "event_time": event_time,
        "action": ACTION.text(event.action),
        "outcome": OUTCOME.text(event.outcome),
        "outcome_description": event.outcome_description,
        "operation": event.operation,
        "agent_staff": event.agent.staff,
        "agent_roles": list(event.agent.roles),
        "agent_on_behalf_of": event.agent.on_behalf_of,
        "agent_network_address": event.agent.network_address,
        "agent_patient": event.agent.patient,
        "patient": event.patient,
        "entity_resource_name": event.entity.resource_name,
        "entity_resource_type": event.entity.resource_type,
        "entity_changes": _changes_text(event.entity.changes),
        "purpose_of_use": PURPOSE.text(event.purpose_of_use) if event.purpose_of_use else None,
        "emergency_access": event.emergency_access,
        "emergency_access_grant": event.emergency_access_grant,
        "trace_id": event.trace_id,
    }


def event_from_columns(values: Mapping[Any, Any]) -> pb.AuditEvent:
    """The AuditEvent of a row (or of the values about to become one); `hash` if present."""
    event = pb.AuditEvent(
        name=event_name(str(values["event_id"])),
        event_id=str(values["event_id"]),
        action=ACTION.number(values["action"]),  # type: ignore[arg-type]
        outcome=OUTCOME.number(values["outcome"]),  # type: ignore[arg-type]
        outcome_description=values["outcome_description"],
        operation=values["operation"],
        agent=pb.AuditAgent(
            staff=values["agent_staff"],
            roles=list(values["agent_roles"]),
            on_behalf_of=values["agent_on_behalf_of"],
            service_account=values["agent_service_account"],
            network_address=values["agent_network_address"],
            patient=values["agent_patient"],
        ),
        patient=values["patient"],
        purpose_of_use=(
            PURPOSE.number(values["purpose_of_use"])  # type: ignore[arg-type]
            if values["purpose_of_use"] is not None
            else pb.PURPOSE_OF_USE_UNSPECIFIED
        ),
        emergency_access=values["emergency_access"],
        emergency_access_grant=values["emergency_access_grant"],
        trace_id=values["trace_id"],
        sequence_number=values["sequence_number"],
        previous_hash=bytes(values["previous_hash"]),
        hash=bytes(values.get("hash") or b""),
    )
    event.event_time.FromDatetime(values["event_time"])
    event.record_time.FromDatetime(values["record_time"])
    # An entity is either named completely or absent (validation requires both fields).
    if values["entity_resource_name"] or values["entity_resource_type"]:
        event.entity.resource_name = values["entity_resource_name"]
        event.entity.resource_type = values["entity_resource_type"]
        changes = values["entity_changes"]
        if changes != _NO_CHANGES:  # nearly every event: no json.loads on the chain walk's path
            for change in json.loads(changes):
                event.entity.changes.add(
                    field_path=change["field_path"], before=change["before"], after=change["after"]
                )
    return event
