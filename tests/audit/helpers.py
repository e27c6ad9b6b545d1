"""Shared helpers of the audit tests: valid events, the hash as the contract defines it, SQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from his.audit.v1 import audit_service_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from his.audit.v1.audit_service_pb2_grpc import AuditServiceAsyncStub

    # The async stub exists only in the type stubs; at run time the fixture's stub is used as is.
    Stub: TypeAlias = AuditServiceAsyncStub
else:
    Stub = Any

DOMAIN = "audit.his"


def patient_name() -> str:
    """A patient name no other test uses."""
    return f"patients/{uuid.uuid4()}"


def staff_name() -> str:
    """A staff name no other test uses."""
    return f"staff/{uuid.uuid4()}"


def make_event(
    *,
    patient: str | None = None,
    staff: str | None = None,
    action: pb.AuditEventAction.ValueType = pb.AUDIT_EVENT_ACTION_READ,
    event_time: dt.datetime | None = None,
    emergency_grant: str = "",
    operation: str = "/his.patient.v1.PatientService/GetPatient",
) -> pb.AuditEvent:
    """A valid event with every optional field set, a fresh id and its own patient."""
    patient = patient if patient is not None else patient_name()
    event = pb.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=action,
        outcome=pb.AUDIT_EVENT_OUTCOME_SUCCESS,
        outcome_description="",
        operation=operation,
        agent=pb.AuditAgent(
            staff=staff if staff is not None else staff_name(),
            roles=["DOCTOR", "NURSE"],
            network_address="10.1.2.3",
        ),
        patient=patient,
        entity=pb.AuditEntity(resource_name=patient or "patients", resource_type="his.Patient"),
        purpose_of_use=pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT
        if emergency_grant
        else pb.PURPOSE_OF_USE_TREATMENT,
        emergency_access=bool(emergency_grant),
        emergency_access_grant=emergency_grant,
        trace_id=uuid.uuid4().hex,
    )
    # Nanoseconds on purpose: the service keeps microseconds and must still chain and replay.
    stamp = event_time or dt.datetime.now(dt.UTC)
    event.event_time.FromDatetime(stamp)
    event.event_time.nanos += 789
    return event


def events(count: int, **kwargs: Any) -> list[pb.AuditEvent]:
    """`count` fresh valid events."""
    return [make_event(**kwargs) for _ in range(count)]


def write_request(*batch: pb.AuditEvent) -> pb.WriteAuditEventsRequest:
    """A WriteAuditEvents request of these events."""
    return pb.WriteAuditEventsRequest(audit_events=list(batch))


def contract_hash(event: pb.AuditEvent) -> bytes:
    """The hash as the proto defines it, computed here independently of the service's code."""
    copy = pb.AuditEvent()
    copy.CopyFrom(event)
    copy.hash = b""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def grant_name() -> str:
    """A break-the-glass grant name."""
    return f"emergencyAccessGrants/{uuid.uuid4()}"


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    """One value of a query on the audit database."""
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


@asynccontextmanager
async def behind_the_service(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that gets round the append-only triggers, as a database superuser could."""
    async with engine.connect() as connection, connection.begin():
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        yield connection


_WAITING_ON_LOCKS = text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
)


@asynccontextmanager
async def head_locked(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold the chain head's lock until the block ends, as a slow append on another replica."""
    async with engine.connect() as connection, connection.begin():
        await connection.execute(text("SELECT 1 FROM audit.chain_head FOR UPDATE"))
        yield


async def wait_for_lock_waiters(engine: AsyncEngine, count: int = 1) -> None:
    """Until `count` sessions wait for a lock (bounded by the test timeout)."""
    async with engine.connect() as connection:
        while True:
            if (await connection.execute(_WAITING_ON_LOCKS)).scalar_one() >= count:
                return
            await asyncio.sleep(0.01)
