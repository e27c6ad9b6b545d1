"""The audit trail through the transactional outbox and its relay, against a real audit service:
durable in the service's own database before the answer, with the change or in a shared commit;
delivered at least once and chained exactly once; nothing remote under a lock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from his.audit.v1 import audit_service_pb2 as pb
from his.base import identity
from his.base.errors import Unavailable
from his.base.identity import Principal
from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.runtime.audit_trail import AUDIT, AuditTrail, audit_delivery
from his.runtime.config import DatabaseConfig
from his.runtime.database import Database
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.outbox import Outbox, Outgoing, envelope
from his.runtime.relay import Relay, RelayConfig
from his.runtime.server import RunningService
from his_client.clients import HisClients
from his_client.config import ClientConfig
from his_client.credentials import static_token
from his_client.guard import RemoteCallUnderLock
from tests.audit.helpers import Stub, patient_name
from tests.identity import Issuer
from tests.support import free_port, fresh_database

OPERATION = "/his.patient.v1.PatientService/GetPatient"


@dataclass
class Patient:
    """The patient service's side of the trail, on a database of its own: outbox, trail, and
    relays made on demand (to the audit tests' audit service unless told otherwise)."""

    database: Database
    outbox: Outbox
    trail: AuditTrail
    issuer: Issuer
    audit_address: str
    made: list[tuple[Relay | None, HisClients | None]]

    def clients(self, *, address: str | None = None) -> HisClients:
        """The patient service's clients, speaking to the audit service as the service."""
        clients = HisClients(
            ClientConfig(addresses={"audit": address or self.audit_address}),
            token=static_token(self.issuer.service("patient")),
        )
        self.made.append((None, clients))
        return clients

    def relay(self, *, address: str | None = None, **config: float) -> Relay:
        clients = self.clients(address=address)
        relay = Relay(
            self.outbox,
            self.database,
            {AUDIT: audit_delivery(clients)},
            config=RelayConfig(**config),  # type: ignore[arg-type]
            registry=CollectorRegistry(),
        )
        self.made.append((relay, None))
        return relay

    async def waiting(self) -> int:
        """Outbox rows not yet delivered (dead letters included)."""
        async with self.database.read() as session:
            return int(await session.scalar(text("SELECT count(*) FROM patient.outbox")) or 0)

    def record(self, patient: str, **fields: object) -> asyncio.Future[None]:
        values: dict[str, object] = {"action": pb.AUDIT_EVENT_ACTION_READ, **fields}
        return asyncio.ensure_future(
            self.trail.record(operation=OPERATION, patient=patient, **values)  # type: ignore[arg-type]
        )


@pytest.fixture
async def side(
    postgres: EmbeddedPostgres, audit_server: RunningService, issuer: Issuer
) -> AsyncIterator[Patient]:
    url = await fresh_database(postgres.url, f"his_outbox_{uuid.uuid4().hex[:8]}", "patient")
    database = Database(url, DatabaseConfig(), application_name="his-outbox-test")
    outbox = Outbox(database, "patient")
    made: list[tuple[Relay | None, HisClients | None]] = []
    yield Patient(
        database,
        outbox,
        AuditTrail(outbox, "patient", registry=CollectorRegistry()),
        issuer,
        audit_server.address,
        made,
    )
    for relay, clients in made:
        if relay is not None:
            await relay.stop(flush_s=0)
        if clients is not None:
            await clients.close()
    await database.dispose()


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


async def test_a_read_is_durable_in_the_own_outbox_when_record_returns_and_reaches_the_chain(
    side: Patient, auditor: Stub, issuer: Issuer
) -> None:
    staff_id = str(uuid.uuid4())
    # The person's real token is in context: were it sent, the audit service would refuse the
    # batch (staff never write audit events), so delivery shows it went as the service.
    doctor = Principal(
        subject=f"staff/{staff_id}",
        username="dr.li",
        roles=frozenset({"NURSE", "DOCTOR"}),
        via_service="scheduling",
        token=issuer.staff("DOCTOR", "NURSE", staff_id=staff_id),
    )
    patient = patient_name()

    with serving(doctor):
        await side.record(patient, resource_name=patient, resource_type="his.patient.v1.Patient")

    # Committed locally before record returned; the audit service has not been asked yet.
    assert await side.waiting() == 1
    assert await _listed(auditor, patient) == []

    await side.relay().drain(10)
    [event] = await _listed(auditor, patient)
    assert await side.waiting() == 0
    assert event.agent.staff == f"staff/{staff_id}"
    assert list(event.agent.roles) == ["DOCTOR", "NURSE"]
    assert event.agent.on_behalf_of == "services/scheduling"
    assert event.agent.service_account == "services/patient"
    assert event.operation == OPERATION
    assert event.purpose_of_use == pb.PURPOSE_OF_USE_TREATMENT
    assert event.entity.resource_type == "his.patient.v1.Patient"


async def test_the_relays_unflushed_bookkeeping_leaves_the_next_events_commit_durable(
    side: Patient,
) -> None:
    # The relay commits its claims and deletions without waiting for the disk; the connection
    # it used goes back to the pool the outbox's own durable commits take theirs from.
    await asyncio.gather(*(side.record(patient_name()) for _ in range(3)))
    assert await side.relay().pass_once() == 3
    async with side.database.driver() as connection:
        assert await connection.fetchval("SHOW synchronous_commit") == "on"
    assert side.database.driver_pool.open_connections >= 1


async def test_a_writes_event_commits_or_rolls_back_with_its_transaction(
    side: Patient, auditor: Stub
) -> None:
    kept, dropped = patient_name(), patient_name()
    async with side.database.transaction():
        await side.record(kept)
    with pytest.raises(RuntimeError):
        async with side.database.transaction():
            await side.record(dropped)
            raise RuntimeError("the change failed")

    await side.relay().drain(10)
    assert len(await _listed(auditor, kept)) == 1
    assert await _listed(auditor, dropped) == []


async def test_a_writes_event_joins_a_driver_transaction_and_wakes_the_relay_after_its_commit(
    side: Patient, auditor: Stub
) -> None:
    kept, dropped = patient_name(), patient_name()
    woken = asyncio.Event()
    side.outbox.committed.append(woken)
    async with side.database.driver_transaction():
        await side.record(kept)
        assert not woken.is_set(), "the relay was woken before the commit"
        # Not committed yet: a second connection does not see the row.
        assert await side.waiting() == 0
    assert woken.is_set()
    woken.clear()
    with pytest.raises(RuntimeError):
        async with side.database.driver_transaction():
            await side.record(dropped)
            raise RuntimeError("the change failed")
    assert not woken.is_set(), "a rollback woke the relay"

    assert await side.waiting() == 1
    await side.relay().drain(10)
    assert len(await _listed(auditor, kept)) == 1
    assert await _listed(auditor, dropped) == []


async def test_concurrent_reads_share_commits(side: Patient, auditor: Stub) -> None:
    patient = patient_name()
    await asyncio.gather(*(side.record(patient) for _ in range(100)))

    assert side.outbox.commits < 100
    assert await side.waiting() == 100
    await side.relay().drain(10)
    assert len(await _listed(auditor, patient)) == 100


async def test_reads_and_writes_go_on_while_the_audit_service_is_away_and_arrive_later(
    side: Patient, auditor: Stub
) -> None:
    patient = patient_name()
    away = side.relay(address=f"localhost:{free_port()}", backoff_base_s=0.05)
    away.start()
    await asyncio.gather(*(side.record(patient) for _ in range(20)))
    async with side.database.transaction():
        await side.record(patient, action=pb.AUDIT_EVENT_ACTION_UPDATE)
    await asyncio.sleep(0.3)  # the relay tried, failed and backed off

    assert await side.waiting() == 21
    await away.stop(flush_s=0)
    await side.relay().drain(10)
    events = await _listed(auditor, patient)
    assert len(events) == 21
    assert len({e.event_id for e in events}) == 21


async def test_two_relays_racing_over_one_outbox_deliver_every_event_once(
    side: Patient, auditor: Stub
) -> None:
    patient = patient_name()
    await asyncio.gather(*(side.record(patient) for _ in range(600)))
    first, second = side.relay(batch=50), side.relay(batch=50)

    await asyncio.gather(first.drain(30), second.drain(30))

    # Each relay claimed its own rows: nothing was sent twice, both did part of the work.
    assert first.delivered[AUDIT] + second.delivered[AUDIT] == 600
    assert first.delivered[AUDIT] and second.delivered[AUDIT]
    events = await _listed(auditor, patient)
    assert len(events) == 600
    assert len({e.sequence_number for e in events}) == 600


async def test_one_relay_drained_beside_its_own_passes_still_delivers_in_order(
    side: Patient, auditor: Stub
) -> None:
    """`drain` (shutdown, tests) beside the relay's loop: one pass at a time per destination, so
    the chain keeps the order the events were recorded in."""
    patient = patient_name()
    for _ in range(200):
        await side.record(patient)
    deliver = audit_delivery(side.clients())
    # The first batch is slow to arrive: a second pass running beside it would overtake it.
    delays = iter([0.3])

    async def slow_first(envelopes: Sequence[EventEnvelope]) -> None:
        await asyncio.sleep(next(delays, 0.0))
        await deliver(envelopes)

    relay = Relay(
        side.outbox,
        side.database,
        {AUDIT: slow_first},
        config=RelayConfig(batch=20),
        registry=CollectorRegistry(),
    )
    side.made.append((relay, None))

    await asyncio.gather(relay.drain(30), relay.drain(30), relay.pass_once())

    chained = sorted(await _listed(auditor, patient), key=lambda e: e.sequence_number)
    assert len(chained) == 200
    times = [e.event_time.ToDatetime() for e in chained]
    assert times == sorted(times)


async def test_a_relay_that_died_mid_delivery_leaves_its_rows_to_another_after_the_lease(
    side: Patient, auditor: Stub
) -> None:
    patient = patient_name()
    await asyncio.gather(*(side.record(patient) for _ in range(5)))
    # A replica claims the rows and delivers them, then dies before it can delete them.
    dying = side.relay(lease_s=0.5)
    async with side.database.driver_transaction() as connection:
        rows = await connection.fetch(dying._claim, AUDIT, 0.5, 100)
    assert len(rows) == 5
    await audit_delivery(side.clients())(
        [EventEnvelope.FromString(row["envelope"]) for row in rows]
    )

    # Another replica finds them once the lease ran out and delivers them again: at least once.
    await asyncio.sleep(0.6)
    survivor = side.relay()
    await survivor.drain(10)
    assert survivor.delivered[AUDIT] == 5
    # The audit service chained each once.
    assert len(await _listed(auditor, patient)) == 5


async def test_events_the_receiver_refuses_for_good_become_dead_letters_alone(
    side: Patient, auditor: Stub
) -> None:
    patient, clash = patient_name(), patient_name()
    await side.record(clash)
    relay = side.relay()
    await relay.drain(10)
    [chained] = await _listed(auditor, clash)
    # One event reusing a chained event's id with other content (ALREADY_EXISTS, forever) and
    # one that is no audit event at all, among good ones.
    forged = pb.AuditEvent()
    forged.CopyFrom(chained)
    forged.operation = "/his.patient.v1.PatientService/DeletePatient"
    await asyncio.gather(*(side.record(patient) for _ in range(3)))
    async with side.database.transaction() as session:
        await side.outbox.add_in(
            session,
            [
                Outgoing(AUDIT, envelope(forged, source="patient", event_id=forged.event_id)),
                Outgoing(AUDIT, envelope(pb.VerifyChainRequest(), source="patient")),
            ],
        )
    await asyncio.gather(*(side.record(patient) for _ in range(2)))

    await relay.pass_once()

    assert len(await _listed(auditor, patient)) == 5
    assert await _listed(auditor, clash) == [chained]
    async with side.database.read() as session:
        left = (
            await session.execute(
                text("SELECT dead_at IS NOT NULL, last_error FROM patient.outbox ORDER BY id")
            )
        ).all()
    assert [dead for dead, _ in left] == [True, True]
    assert "ALREADY_EXISTS" in left[0][1]


async def test_invalid_event_fails_alone_and_never_reaches_the_outbox(side: Patient) -> None:
    patient = patient_name()
    good = [side.record(patient) for _ in range(5)]
    bad = side.record("p/1")
    outcomes = await asyncio.gather(bad, *good, return_exceptions=True)

    assert isinstance(outcomes[0], Unavailable)
    assert outcomes[0].reason == "AUDIT_UNAVAILABLE"
    assert outcomes[1:] == [None] * 5
    assert await side.waiting() == 5


async def test_record_fails_closed_when_its_own_database_cannot_store_the_event(
    side: Patient,
) -> None:
    await side.database.dispose()
    gone = Database(
        f"postgresql://nobody@localhost:{free_port()}/none",
        DatabaseConfig(health_timeout_s=1),
        application_name="his-outbox-test",
    )
    trail = AuditTrail(Outbox(gone, "patient"), "patient", registry=CollectorRegistry())
    try:
        with pytest.raises(Unavailable) as caught:
            await trail.record(action=pb.AUDIT_EVENT_ACTION_READ, operation=OPERATION)
        assert caught.value.reason == "AUDIT_UNAVAILABLE"
    finally:
        await gone.dispose()


async def test_a_call_to_another_service_inside_a_transaction_is_refused_before_it_leaves(
    side: Patient,
) -> None:
    stub = side.clients().audit
    request = pb.WriteAuditEventsRequest()
    async with side.database.transaction():
        with pytest.raises(RemoteCallUnderLock):
            await stub.WriteAuditEvents(request, timeout=5)
    # Outside the transaction the same call leaves (and is judged by the audit service).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteAuditEvents(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
