"""What an audit event and the audit service's requests must satisfy (the proto's rules).

Text is validated but stored exactly as written: the hash covers what the writer sent, and a
retried write must compare equal to the first one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence

from his.audit.v1 import audit_service_pb2 as pb
from his.runtime.validation import Violations

MAX_BATCH = 500
MAX_OUTCOME_DESCRIPTION = 500
MAX_OPERATION = 200
MAX_ROLES = 20
MAX_ROLE = 50
MAX_NETWORK_ADDRESS = 45
MAX_RESOURCE_NAME = 300
MAX_RESOURCE_TYPE = 200
MAX_CHANGES = 20
MAX_FIELD_PATH = 100
MAX_CHANGE_VALUE = 2000
# How far after its writing an event's time may lie (writers' clocks are not perfect).
MAX_CLOCK_AHEAD = dt.timedelta(minutes=5)
# VerifyChain checks at most this many events per call.
MAX_VERIFY_RANGE = 1_000_000

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")


# Exactly the texts `str(uuid.UUID(text)) == text` accepts, at a tenth of its cost (it is on
# every event's path twice: in the sending service and here).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(text: str) -> bool:
    """True for a UUID written lower-case and hyphenated, the one spelling we accept."""
    return _CANONICAL_UUID.fullmatch(text) is not None


def name_of(v: Violations, field: str, value: str, *, collection: str) -> None:
    """An optional `<collection>/{uuid}` name."""
    prefix = f"{collection}/"
    if value and not (value.startswith(prefix) and canonical_uuid(value[len(prefix) :])):
        v.add(field, f"must be empty or of the form {collection}/{{id}} with a valid id")


def _text(v: Violations, field: str, value: str, *, max_len: int, required: bool) -> None:
    """Length and printable characters; the value itself is kept as written."""
    if value and value != value.strip():
        v.add(field, "must not start or end with white space")
    v.text(field, value, max_len=max_len, required=required)


def event_violations(v: Violations, event: pb.AuditEvent, field: str, *, now: dt.datetime) -> None:
    """Every rule of one event to be written, each violation named under `field`."""
    if not event.event_id:
        v.add(f"{field}.event_id", "is required")
    elif not canonical_uuid(event.event_id):
        v.add(f"{field}.event_id", "must be a UUID in canonical lower-case form")
    if not event.HasField("event_time"):
        v.add(f"{field}.event_time", "is required")
    else:
        event_time = v.instant(f"{field}.event_time", event.event_time)
        if event_time is not None and event_time > now + MAX_CLOCK_AHEAD:
            v.add(f"{field}.event_time", "must not be more than 5 minutes in the future")
    v.enum(f"{field}.action", event.action, pb.AuditEventAction.DESCRIPTOR)
    v.enum(f"{field}.outcome", event.outcome, pb.AuditEventOutcome.DESCRIPTOR)
    _text(
        v,
        f"{field}.outcome_description",
        event.outcome_description,
        max_len=MAX_OUTCOME_DESCRIPTION,
        required=False,
    )
    _text(v, f"{field}.operation", event.operation, max_len=MAX_OPERATION, required=True)
    _agent(v, event, f"{field}.agent")
    name_of(v, f"{field}.patient", event.patient, collection="patients")
    if event.HasField("entity"):
        entity = event.entity
        _text(
            v,
            f"{field}.entity.resource_name",
            entity.resource_name,
            max_len=MAX_RESOURCE_NAME,
            required=True,
        )
        _text(
            v,
            f"{field}.entity.resource_type",
            entity.resource_type,
            max_len=MAX_RESOURCE_TYPE,
            required=True,
        )
        entity_changes_violations(v, entity.changes, f"{field}.entity.changes")
    v.enum(
        f"{field}.purpose_of_use",
        event.purpose_of_use,
        pb.PurposeOfUse.DESCRIPTOR,
        required=bool(event.patient),
    )
    grant = f"{field}.emergency_access_grant"
    if event.emergency_access:
        if not event.emergency_access_grant:
            v.add(grant, "is required when emergency_access is true")
        else:
            name_of(v, grant, event.emergency_access_grant, collection="emergencyAccessGrants")
    elif event.emergency_access_grant:
        v.add(grant, "must be empty when emergency_access is false")
    if event.trace_id and not _TRACE_ID.fullmatch(event.trace_id):
        v.add(f"{field}.trace_id", "must be 32 lower-case hexadecimal characters")


def entity_changes_violations(
    v: Violations, changes: Sequence[pb.AuditFieldChange], field: str
) -> None:
    """The rules of AuditEntity.changes, each violation named under `field`."""
    if len(changes) > MAX_CHANGES:
        v.add(field, f"must have at most {MAX_CHANGES} items")
        return
    for index, change in enumerate(changes):
        at = f"{field}[{index}]"
        _text(v, f"{at}.field_path", change.field_path, max_len=MAX_FIELD_PATH, required=True)
        _text(v, f"{at}.before", change.before, max_len=MAX_CHANGE_VALUE, required=False)
        _text(v, f"{at}.after", change.after, max_len=MAX_CHANGE_VALUE, required=False)


def _agent(v: Violations, event: pb.AuditEvent, field: str) -> None:
    if not event.HasField("agent"):
        v.add(field, "is required")
        return
    agent = event.agent
    name_of(v, f"{field}.staff", agent.staff, collection="staff")
    if agent.staff and agent.patient:
        v.add(f"{field}.patient", "must be empty when staff is set (one person acts)")
    else:
        name_of(v, f"{field}.patient", agent.patient, collection="patients")
    if len(agent.roles) > MAX_ROLES:
        v.add(f"{field}.roles", f"must hold at most {MAX_ROLES} roles")
    for index, role in enumerate(agent.roles):
        _text(v, f"{field}.roles[{index}]", role, max_len=MAX_ROLE, required=True)
    on_behalf_of = agent.on_behalf_of
    if on_behalf_of.startswith("services/"):
        # A relaying service (ADR 0002): the person was served through it.
        if not _SERVICE_NAME.fullmatch(on_behalf_of.removeprefix("services/")):
            v.add(f"{field}.on_behalf_of", "must be of the form services/{name}")
    else:
        name_of(v, f"{field}.on_behalf_of", on_behalf_of, collection="staff")
    address = agent.network_address
    if address:
        try:
            ipaddress.ip_address(address)
            # No IPv6 zone ids ("fe80::1%eth0"): they name a local interface, not a device, and
            # may carry characters PostgreSQL refuses (one bad event must not fail a group).
            valid = len(address) <= MAX_NETWORK_ADDRESS and "%" not in address
        except ValueError:
            valid = False
        if not valid:
            v.add(f"{field}.network_address", "must be an IPv4 or IPv6 address")


def batch_violations(v: Violations, events: Sequence[pb.AuditEvent], *, now: dt.datetime) -> None:
    """A WriteAuditEvents batch: 1 to 500 valid events with distinct ids."""
    if not events:
        v.add("audit_events", "must hold at least one event")
    elif len(events) > MAX_BATCH:
        v.add("audit_events", f"must hold at most {MAX_BATCH} events")
        return
    first_index: dict[str, int] = {}
    for index, event in enumerate(events):
        field = f"audit_events[{index}]"
        event_violations(v, event, field, now=now)
        if event.event_id in first_index:
            v.add(
                f"{field}.event_id",
                f"repeats audit_events[{first_index[event.event_id]}].event_id",
            )
        elif event.event_id:
            first_index[event.event_id] = index
