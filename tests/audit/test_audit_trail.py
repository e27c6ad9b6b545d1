"""AuditTrail against a real audit service: batches, agent from the call, fail closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from his.audit.spec import SPEC as AUDIT
from his.audit.v1 import audit_service_pb2 as pb
from his.runtime import identity
from his.runtime.audit_trail import AuditTrail
from his.runtime.config import ClientConfig
from his.runtime.errors import Unavailable
from his.runtime.identity import Principal
from his.runtime.server import RunningService, start
from his_client.clients import HisClients
from his_client.credentials import static_token
from tests.audit.helpers import Stub, head_locked, patient_name, wait_for_lock_waiters
from tests.conftest import service_config
from tests.identity import Issuer

OPERATION = "/his.patient.v1.PatientService/GetPatient"
MakeTrail = Callable[..., AuditTrail]


@pytest.fixture
async def make_trail(audit_server: RunningService, issuer: Issuer) -> AsyncIterator[MakeTrail]:
    """AuditTrails of the patient service (its own token) to the audit tests' audit service."""
    made: list[tuple[AuditTrail, HisClients]] = []

    def make(
        *, address: str | None = None, token: str | None = None, **options: object
    ) -> AuditTrail:
        clients = HisClients(
            ClientConfig(addresses={"audit": address or audit_server.address}),
            token=static_token(token or issuer.service("patient")),
        )
        trail = AuditTrail(clients, "patient", **options)  # type: ignore[arg-type]
        made.append((trail, clients))
        return trail

    yield make
    for trail, clients in made:
        await trail.close()
        await clients.close()


@contextmanager
def serving(principal: Principal) -> Iterator[None]:
    """Run the block as if serving a call of `principal`."""
    entered = identity.enter(principal)
    try:
        yield
    finally:
        identity.leave(entered)


async def _listed(auditor: Stub, patient: str) -> list[pb.AuditEvent]:
    found: list[pb.AuditEvent] = []
    request = pb.ListAuditEventsRequest(patient=patient, page_size=500)
    while True:
        reply = await auditor.ListAuditEvents(request)
        found.extend(reply.audit_events)
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


async def _refused(call: asyncio.Future[None] | object) -> Unavailable:
    with pytest.raises(Unavailable) as caught:
        await call  # type: ignore[misc]
    assert caught.value.reason == "AUDIT_UNAVAILABLE"
    assert caught.value.message == "audit trail unavailable"
    return caught.value


async def test_recorded_event_carries_the_person_served_and_is_committed_when_record_returns(
    make_trail: MakeTrail, auditor: Stub, issuer: Issuer
) -> None:
    trail = make_trail()
    staff_id = str(uuid.uuid4())
    # The person's real token is in context: were it sent, the audit service would refuse the
    # batch (staff never write audit events), so success shows the batch went as the service.
    doctor = Principal(
        subject=f"staff/{staff_id}",
        username="dr.li",
        roles=frozenset({"NURSE", "DOCTOR"}),
        via_service="scheduling",
        token=issuer.staff("DOCTOR", "NURSE", staff_id=staff_id),
    )
    patient = patient_name()

    with serving(doctor):
        await trail.record(
            action=pb.AUDIT_EVENT_ACTION_READ,
            operation=OPERATION,
            patient=patient,
            resource_name=patient,
            resource_type="his.patient.v1.Patient",
        )

    [event] = await _listed(auditor, patient)
    assert event.agent.staff == f"staff/{staff_id}"
    assert list(event.agent.roles) == ["DOCTOR", "NURSE"]
    assert event.agent.on_behalf_of == "services/scheduling"
    assert event.agent.service_account == "services/patient"
    assert event.operation == OPERATION
    assert event.outcome == pb.AUDIT_EVENT_OUTCOME_SUCCESS
    assert event.purpose_of_use == pb.PURPOSE_OF_USE_TREATMENT
    assert event.entity.resource_type == "his.patient.v1.Patient"
    assert not event.emergency_access
    uuid.UUID(event.event_id)


async def test_emergency_access_is_recorded_with_its_grant(
    make_trail: MakeTrail, auditor: Stub
) -> None:
    trail = make_trail()
    patient, grant = patient_name(), f"emergencyAccessGrants/{uuid.uuid4()}"

    await trail.record(
        action=pb.AUDIT_EVENT_ACTION_READ,
        operation=OPERATION,
        patient=patient,
        purpose_of_use=pb.PURPOSE_OF_USE_EMERGENCY_TREATMENT,
        emergency_access_grant=grant,
    )

    [event] = await _listed(auditor, patient)
    assert event.emergency_access and event.emergency_access_grant == grant
    assert event.agent.staff == ""  # no person was being served


async def test_100_concurrent_records_travel_in_fewer_batches_and_all_commit(
    make_trail: MakeTrail, auditor: Stub
) -> None:
    registry = CollectorRegistry()
    trail = make_trail(registry=registry)
    patient = patient_name()

    await asyncio.gather(
        *(
            trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION, patient=patient)
            for _ in range(100)
        )
    )

    assert trail.events_committed == 100
    assert 1 <= trail.batches_sent < 100
    assert len(await _listed(auditor, patient)) == 100
    sent = registry.get_sample_value("his_audit_trail_batches_total", {"result": "success"})
    assert sent == trail.batches_sent
    events = registry.get_sample_value("his_audit_trail_events_total", {"result": "success"})
    assert events == 100


async def test_batches_never_exceed_the_maximum(make_trail: MakeTrail, auditor: Stub) -> None:
    trail = make_trail(max_batch=10)
    patient = patient_name()

    await trail.record_many(
        [
            trail.event(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION, patient=patient)
            for _ in range(35)
        ]
    )

    assert trail.batches_sent == 4
    assert len(await _listed(auditor, patient)) == 35


async def test_record_fails_closed_when_the_audit_service_is_down(
    make_trail: MakeTrail, audit_url: str
) -> None:
    own = await start(AUDIT, service_config("audit"), audit_url)
    trail = make_trail(address=own.address)
    await trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION)

    await own.stop(grace_s=0)

    await _refused(trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION))
    await _refused(trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION))


async def test_record_fails_closed_when_the_audit_service_is_too_slow(
    make_trail: MakeTrail, audit_db: AsyncEngine
) -> None:
    registry = CollectorRegistry()
    trail = make_trail(timeout_s=0.3, registry=registry)

    async with head_locked(audit_db):
        await _refused(trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION))
        await wait_for_lock_waiters(audit_db)

    failed = registry.get_sample_value("his_audit_trail_batches_total", {"result": "failure"})
    assert failed == 1


async def test_record_fails_closed_when_the_audit_service_refuses_the_writer(
    make_trail: MakeTrail, issuer: Issuer
) -> None:
    # A service misconfigured with a person's token: PERMISSION_DENIED from the audit service.
    trail = make_trail(token=issuer.staff("ADMINISTRATOR"))

    await _refused(trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION))


async def test_invalid_event_fails_alone_and_never_reaches_the_batch(
    make_trail: MakeTrail, auditor: Stub
) -> None:
    trail = make_trail()
    patient = patient_name()

    good = [
        trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION, patient=patient)
        for _ in range(5)
    ]
    bad = trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION, patient="p/1")
    outcomes = await asyncio.gather(bad, *good, return_exceptions=True)

    assert isinstance(outcomes[0], Unavailable)
    assert outcomes[1:] == [None] * 5
    assert len(await _listed(auditor, patient)) == 5


async def test_close_flushes_what_is_queued_then_refuses(
    make_trail: MakeTrail, auditor: Stub
) -> None:
    trail = make_trail()
    patient = patient_name()
    pending = [
        asyncio.ensure_future(
            trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION, patient=patient)
        )
        for _ in range(3)
    ]
    await asyncio.sleep(0)  # queued

    await trail.close()

    assert trail.events_committed == 3
    assert await asyncio.gather(*pending) == [None] * 3
    assert len(await _listed(auditor, patient)) == 3
    await _refused(trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION))
