"""A hospital of its own for the billing journey: scheduling, emr, orders, lab, pharmacy and billing
on a database of their own and ports reserved before any of them starts, so that billing can be
stopped, killed and started again on its port while the others keep their outboxes. patient, iam
and audit are the session's (who the patient and the staff are is not what the journey tests).

Events on their way to billing are copied aside as the sources store them (a trigger on each
source's outbox, in this world's database only), so a test can put them back in the outboxes and
have every one delivered a second time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.billing.spec import SPEC as BILLING
from his.emr.spec import SPEC as EMR
from his.lab.spec import SPEC as LAB
from his.orders.spec import SPEC as ORDERS
from his.pharmacy.spec import SPEC as PHARMACY
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.server import RunningService, ServiceSpec, start
from his.scheduling.spec import SPEC as SCHEDULING
from tests.conftest import service_config
from tests.support import free_port, fresh_database

T = TypeVar("T")
SPECS: dict[str, ServiceSpec] = {
    spec.name: spec for spec in (SCHEDULING, EMR, ORDERS, LAB, PHARMACY, BILLING)
}
# The services whose events create charges (their outboxes have a billing destination).
SOURCES = ("scheduling", "orders", "pharmacy")
# How long a test waits for the relays: a destination that was down is retried with a backoff of
# at most 30 s (his.runtime.relay), and this machine may be busy.
SETTLE_S = 60.0

_CAPTURE = [
    "CREATE SCHEMA e2e_capture",
    "CREATE TABLE e2e_capture.billing_events (seq bigserial PRIMARY KEY, source text NOT NULL, "
    "event_id uuid NOT NULL, event_type text NOT NULL, envelope bytea NOT NULL)",
    """
    CREATE FUNCTION e2e_capture.copy() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO e2e_capture.billing_events (source, event_id, event_type, envelope)
      VALUES (TG_TABLE_SCHEMA, NEW.event_id, NEW.event_type, NEW.envelope);
      RETURN NEW;
    END
    $$
    """,
    *(
        f"CREATE TRIGGER capture AFTER INSERT ON {source}.outbox FOR EACH ROW "
        f"WHEN (NEW.destination = 'billing') EXECUTE FUNCTION e2e_capture.copy()"
        for source in SOURCES
    ),
]


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first value `probe` gives that is not None, polling until SETTLE_S."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while True:
        found = await probe()
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {SETTLE_S} s: {what}")
        await asyncio.sleep(0.1)


@dataclass
class World:
    """The services of the journey, each started and stopped when the test says."""

    url: str
    engine: AsyncEngine
    # HIS_<SERVICE>_ADDR of the session's patient, audit and iam.
    peers: dict[str, str]
    ports: dict[str, int]
    running: dict[str, RunningService] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"localhost:{self.ports[name]}"

    async def start(self, name: str) -> RunningService:
        others = {
            f"HIS_{peer.upper()}_ADDR": f"localhost:{port}"
            for peer, port in self.ports.items()
            if peer != name
        }
        config = service_config(name, **self.peers, **others, HIS_PORT=str(self.ports[name]))
        self.running[name] = await start(SPECS[name], config, self.url)
        return self.running[name]

    async def stop(self, name: str, *, grace_s: float = 1.0) -> None:
        """Stop `name`; with `grace_s=0` abruptly: calls in flight are cancelled, not finished
        (as the fixtures stop a server that should look killed)."""
        await self.running.pop(name).stop(grace_s=grace_s)

    async def waiting_for_billing(self) -> int:
        """Events the sources' outboxes still hold for billing (dead letters included)."""
        async with self.engine.connect() as connection:
            total = 0
            for source in SOURCES:
                total += int(
                    await connection.scalar(
                        text(f"SELECT count(*) FROM {source}.outbox WHERE destination = 'billing'")
                    )
                    or 0
                )
        return total

    async def all_delivered_to_billing(self) -> None:
        """Wait until the sources' relays have delivered everything they hold for billing."""

        async def empty() -> bool | None:
            return True if await self.waiting_for_billing() == 0 else None

        await eventually(empty, "the sources' events delivered to billing")

    async def captured(self) -> list[tuple[str, str, str]]:
        """(source, event type, event id) of every event stored for billing so far."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT source, event_type, event_id::text FROM e2e_capture.billing_events "
                    "ORDER BY seq"
                )
            )
            return [(row[0], row[1], row[2]) for row in rows]

    async def store_again_for_billing(self) -> int:
        """Put every event stored for billing so far back in its source's outbox (as a relay
        that died between delivery and deletion leaves it): the relays deliver each again."""
        async with self.engine.begin() as connection:
            again = 0
            for source in SOURCES:
                result = await connection.execute(
                    text(
                        f"INSERT INTO {source}.outbox "
                        "(event_id, destination, event_type, envelope) "
                        "SELECT event_id, 'billing', event_type, envelope "
                        "FROM e2e_capture.billing_events WHERE source = :source ORDER BY seq"
                    ),
                    {"source": source},
                )
                again += result.rowcount
        return again

    async def billing_inbox(self) -> int:
        """Events billing has recorded as applied."""
        async with self.engine.connect() as connection:
            return int(await connection.scalar(text("SELECT count(*) FROM billing.inbox")) or 0)


@contextlib.asynccontextmanager
async def billing_world(
    postgres: EmbeddedPostgres, name: str, peers: dict[str, str]
) -> AsyncIterator[World]:
    """A fresh world (database `name`) with nothing started yet; everything stopped after."""
    url = await fresh_database(postgres.url, name, *SPECS)
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    async with engine.begin() as connection:
        for statement in _CAPTURE:
            await connection.execute(text(statement))
    world = World(url, engine, peers, {service: free_port() for service in SPECS})
    try:
        yield world
    finally:
        for service in list(world.running):
            await world.stop(service)
        await engine.dispose()
