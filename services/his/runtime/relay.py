"""The relay: ships a service's outbox rows to their receivers, at least once, in order of id.

Every replica of a service runs one. Rows are claimed in one short transaction (`FOR UPDATE SKIP
LOCKED`, then a lease in `available_at`), delivered with no transaction open, then deleted in a
second one: replicas never take the same row while its lease runs, nothing is held locked across
the network, and a replica that dies mid-delivery only delays its rows until the lease ends (the
receiver deduplicates what is then delivered twice by event id).

Rows go in id order, and stay in it: a failed delivery hands its rows back at once and backs the
destination off exponentially (the SDK's breaker per upstream fails fast meanwhile), so when it is
tried again the same rows go first and nothing later overtakes them. One relay makes one pass at
a time per destination; replicas deliver their own claims side by side, so across replicas (and
for a row whose transaction committed after a later id's) arrival order is not id order:
receivers keep the newest revision, and the audit chain records each event's own time. A batch
the receiver refuses for good (bad input, a conflicting event) is split, and an event refused
alone becomes a dead letter: kept, counted, logged, never retried. Health never follows a
destination: the service serves on while its receivers are away.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from his.events.v1.event_envelope_pb2 import EventEnvelope
from his.runtime.database import Database
from his.runtime.outbox import Outbox, table

log = logging.getLogger(__name__)

# Delivers a batch of envelopes to one destination; raises when they were not all accepted.
Deliver = Callable[[Sequence[EventEnvelope]], Awaitable[None]]

# What a receiver says when an event can never be accepted: retrying would not change its answer.
_REFUSED_FOR_GOOD = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class Undeliverable(Exception):
    """Raised by a deliverer for an event that can never be delivered (its payload is not what
    its destination takes): retrying would not help."""


# A condition that turns off `synchronous_commit` for the statement's own (implicit)
# transaction: it commits without waiting for its WAL to reach the disk. Safe for the relay's
# bookkeeping, and only for it: a claim, a hand-back or a deletion lost in a crash (the last
# fraction of a second before it, and only if no later durable commit flushed it) leaves the row
# as it was, so it is delivered again and the receiver, deduplicating by event id, applies it
# once. The events themselves are inserted with a durable commit (his.runtime.outbox). Measured
# here: a one-row UPDATE 2.9 ms with the flush, 0.4 ms without, and every flush the relay does
# not make is one the reads' and writes' commits do not queue behind.
NO_FLUSH_WAIT = "(SELECT set_config('synchronous_commit', 'off', true)) = 'off'"


@dataclass(frozen=True)
class RelayConfig:
    """How the relay paces itself."""

    # Rows per claim and per delivery call.
    batch: int = 200
    # How often to look for rows nobody woke us for (other replicas', expired leases).
    poll_s: float = 0.5
    # After a wake-up, how long to let more events gather before the pass (batching).
    linger_s: float = 0.02
    # How long a claimed row stays with this replica before another may take it.
    lease_s: float = 30.0
    # Backoff of a destination after failed deliveries: base * 2^(failures-1), capped.
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # How often the depth and age gauges are refreshed.
    gauge_interval_s: float = 1.0


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.depth = Gauge(
            "his_outbox_depth",
            "Outbox rows not yet delivered (dead letters not counted), by destination.",
            ("destination",),
            registry=registry,
        )
        self.oldest = Gauge(
            "his_outbox_oldest_age_seconds",
            "Age of the oldest undelivered outbox row, by destination (0 when none).",
            ("destination",),
            registry=registry,
        )
        self.dead = Gauge(
            "his_outbox_dead_letters",
            "Outbox rows their receiver refused for good, kept for an operator.",
            ("destination",),
            registry=registry,
        )
        self.delivered = Counter(
            "his_outbox_delivered",
            "Events delivered and accepted by their receiver, by destination.",
            ("destination",),
            registry=registry,
        )
        self.failures = Counter(
            "his_outbox_delivery_failures",
            "Delivery calls that failed (the rows are retried later), by destination.",
            ("destination",),
            registry=registry,
        )
        self.seconds = Histogram(
            "his_outbox_delivery_seconds",
            "Time one delivery call took, success or not.",
            ("destination",),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )


@dataclass(frozen=True)
class _Claimed:
    id: int
    envelope: EventEnvelope


class Relay:
    """Ships one service's outbox to its destinations until stopped."""

    def __init__(
        self,
        outbox: Outbox,
        database: Database,
        deliverers: Mapping[str, Deliver],
        *,
        config: RelayConfig | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._database = database
        self._deliverers = dict(deliverers)
        self._config = config or RelayConfig()
        self._metrics = _Metrics(registry)
        self._wake = asyncio.Event()
        outbox.committed.append(self._wake)
        # One pass at a time per destination: `drain` (shutdown, tests) beside the relay's own
        # loop would otherwise deliver two claims of the same outbox concurrently, out of order.
        self._passing = {destination: asyncio.Lock() for destination in self._deliverers}
        # The table name is a checked catalog schema; every value is bound. Every statement that
        # changes a row commits without waiting for its flush to disk (NO_FLUSH_WAIT).
        schema = table(outbox.schema)
        self._claim = (
            f"UPDATE {schema} SET available_at = now() + make_interval(secs => $2), "  # noqa: S608
            "attempts = attempts + 1 "
            f"WHERE id IN (SELECT id FROM {schema} WHERE destination = $1 AND dead_at IS NULL "
            "AND available_at <= clock_timestamp() ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) "
            f"AND {NO_FLUSH_WAIT} RETURNING id, envelope"
        )
        self._delete = f"DELETE FROM {schema} WHERE id = ANY($1::bigint[]) AND {NO_FLUSH_WAIT}"  # noqa: S608
        # Hand rows back at once: the destination backs off, the rows keep their place in line.
        self._release = (
            f"UPDATE {schema} SET available_at = now(), "  # noqa: S608
            f"last_error = $2 WHERE id = ANY($1::bigint[]) AND {NO_FLUSH_WAIT}"
        )
        self._bury = (
            f"UPDATE {schema} SET dead_at = now(), last_error = $2 "  # noqa: S608
            f"WHERE id = ANY($1::bigint[]) AND {NO_FLUSH_WAIT}"
        )
        self._gauges = (
            f"SELECT destination, count(*) FILTER (WHERE dead_at IS NULL), "  # noqa: S608
            "COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - "
            "min(created_at) FILTER (WHERE dead_at IS NULL)), 0)::float8, "
            f"count(*) FILTER (WHERE dead_at IS NOT NULL) FROM {schema} GROUP BY destination"
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._gauges_at = 0.0
        # Consecutive failed deliveries per destination, and when it may be tried again.
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        # Figures for tests: events this relay delivered, by destination.
        self.delivered: dict[str, int] = dict.fromkeys(self._deliverers, 0)

    def start(self) -> None:
        """Relay in the background until `stop` (no caller's identity, deadline or span); a
        stopped relay may be started again."""
        self._stopping = False
        self._task = asyncio.create_task(
            self._run(), name="outbox-relay", context=contextvars.Context()
        )

    async def stop(self, flush_s: float = 1.0) -> None:
        """Finish the pass under way (and one more) for up to `flush_s`, then stop; what is left
        stays for the next start or another replica."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(flush_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def pass_once(self, destinations: Collection[str] | None = None) -> int:
        """Deliver what is ready for every destination (or those given); the number of events
        delivered."""
        total = 0
        for destination in self._deliverers if destinations is None else destinations:
            async with self._passing[destination]:
                while True:
                    count, full = await self._batch(destination)
                    total += count
                    if not full:
                        break
        return total

    async def drain(self, timeout_s: float, destinations: Collection[str] | None = None) -> None:
        """Deliver until nothing is ready for every destination (or those given), for tests and
        shutdown; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            # Polls the database (rows of other relays, leases running out): no event to await.
            while True:
                if not await self.pass_once(destinations) and not await self._pending(destinations):
                    return
                await asyncio.sleep(0.05)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.pass_once()
                await self._refresh_gauges()
            except Exception as error:  # the database is away: try again later
                log.warning("outbox relay pass failed", extra={"fields": {"error": _name(error)}})
            if self._stopping:
                break
            # Events recorded during the pass have set the wake-up already: no empty pass after a
            # full one. Otherwise wait for one, or poll (other replicas' rows, expired leases).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.poll_s):
                    await self._wake.wait()
                # Woken by a commit: let the events of the next few milliseconds join the batch
                # (one delivery call and two statements for many events instead of each).
                await asyncio.sleep(self._config.linger_s)
        # Stopping: what the last calls recorded goes too, if it can in the time `stop` gives.
        with contextlib.suppress(Exception):
            await self.pass_once()

    async def _batch(self, destination: str) -> tuple[int, bool]:
        """Claim, deliver and settle one batch; (events delivered, whether the batch was full)."""
        config = self._config
        if time.monotonic() < self._retry_at.get(destination, 0.0):
            return 0, False

        async def claim() -> list[Any]:
            async with self._database.driver() as connection:
                return list(
                    await connection.fetch(self._claim, destination, config.lease_s, config.batch)
                )

        # A claim cut short by `stop` may still have committed: let it finish and hand its rows
        # back, or they would sit out the whole lease.
        claiming = asyncio.ensure_future(claim())
        try:
            rows = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                taken = await claiming
                if taken:
                    await self._settle(self._release, [r["id"] for r in taken], "stopped")
            raise
        if not rows:
            return 0, False
        claimed = sorted(
            (_Claimed(row["id"], EventEnvelope.FromString(row["envelope"])) for row in rows),
            key=lambda c: c.id,
        )
        delivered = await self._deliver(destination, claimed)
        return delivered, len(rows) == config.batch

    async def _deliver(self, destination: str, claimed: list[_Claimed]) -> int:
        started = time.monotonic()
        try:
            await self._deliverers[destination]([c.envelope for c in claimed])
        except asyncio.CancelledError:
            # Stopped mid-delivery: hand the rows back now rather than at the end of the lease.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._settle(self._release, [c.id for c in claimed], "cancelled")
                )
            raise
        except Exception as error:
            self._metrics.failures.labels(destination).inc()
            code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
            if code in _REFUSED_FOR_GOOD or isinstance(error, Undeliverable):
                if len(claimed) > 1:
                    # Find the one it refuses; the others go through.
                    return sum([await self._deliver(destination, [c]) for c in claimed])
                await self._settle(self._bury, [claimed[0].id], _name(error))
                log.error(
                    "outbox event refused for good; kept as a dead letter",
                    extra={"fields": {"destination": destination, "error": _name(error)}},
                )
                return 0
            # The destination backs off, not the rows: they are handed back at once, so that when
            # it is tried again they go first and nothing later overtakes them (order per source).
            failures = self._failures[destination] = self._failures.get(destination, 0) + 1
            delay = config_backoff(self._config, failures)
            self._retry_at[destination] = time.monotonic() + delay
            await self._settle(self._release, [c.id for c in claimed], _name(error))
            log.warning(
                "outbox delivery failed; retrying later",
                extra={
                    "fields": {
                        "destination": destination,
                        "events": len(claimed),
                        "error": _name(error),
                        "retry_in_s": round(delay, 3),
                    }
                },
            )
            return 0
        finally:
            self._metrics.seconds.labels(destination).observe(time.monotonic() - started)
        await self._settle(self._delete, [c.id for c in claimed])
        self._failures.pop(destination, None)
        self._metrics.delivered.labels(destination).inc(len(claimed))
        self.delivered[destination] += len(claimed)
        return len(claimed)

    async def _settle(self, statement: str, ids: list[int], *args: object) -> None:
        async with self._database.driver() as connection:
            await connection.execute(statement, ids, *args)

    async def _pending(self, destinations: Collection[str] | None = None) -> int:
        async with self._database.driver() as connection:
            rows = await connection.fetch(self._gauges)
        return sum(int(row[1]) for row in rows if destinations is None or row[0] in destinations)

    async def _refresh_gauges(self) -> None:
        now = time.monotonic()
        if now - self._gauges_at < self._config.gauge_interval_s:
            return
        self._gauges_at = now
        async with self._database.driver() as connection:
            rows = await connection.fetch(self._gauges)
        seen = {row[0]: row for row in rows}
        for destination in self._deliverers:
            row = seen.get(destination)
            self._metrics.depth.labels(destination).set(row[1] if row else 0)
            self._metrics.oldest.labels(destination).set(row[2] if row else 0)
            self._metrics.dead.labels(destination).set(row[3] if row else 0)


def config_backoff(config: RelayConfig, failures: int) -> float:
    """The wait before a destination that failed `failures` times in a row is tried again."""
    return float(
        min(config.backoff_base_s * 2 ** min(max(failures - 1, 0), 30), config.backoff_max_s)
    )


def _name(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{type(error).__name__} {error.code().name}"
    return type(error).__name__
