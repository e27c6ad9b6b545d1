"""gRPC health: liveness for the process, readiness for the database and the schema.

Two questions, two names, because Kubernetes acts differently on each:
- `liveness` answers SERVING for as long as the process serves at all (its event loop answers).
  A database outage must never fail it: kubelet would restart every pod of the hospital during a
  two-minute failover, and each would re-run its start-up against a database that is not there.
- readiness — `""` (the whole server, what a plain probe asks) and the gRPC service's own name —
  is SERVING only while the service's own database answers and its schema is migrated; it is
  NOT_SERVING from the first moment of a graceful shutdown, so traffic moves away first.

A dependency outage (another service down) is not this service's failure and never changes
health. Recovery needs no restart: the next good ping flips readiness back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from his.runtime.config import LIVENESS
from his.runtime.database import Database
from his.runtime.metrics import ServerMetrics

log = logging.getLogger(__name__)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health(HealthServicer):
    """`grpc.health.v1.Health` with `List`, a liveness name, and a shutdown that keeps it.

    grpcio's servicer advertises `List` without implementing it (callers got INTERNAL), and its
    graceful shutdown turns every name NOT_SERVING, liveness included, which would have kubelet
    kill a pod that is only draining.
    """

    def __init__(self, service_names: Sequence[str]) -> None:
        super().__init__()
        self.readiness_names = ("", *service_names)
        # The servicer's own table (grpcio's stubs do not declare it).
        self._statuses: dict[str, int] = self._server_status  # type: ignore[attr-defined]
        self._statuses[LIVENESS] = SERVING
        for name in self.readiness_names:
            self._statuses[name] = NOT_SERVING

    async def List(self, request: Any, context: object) -> Any:
        """Every name this server reports, with its status (a HealthListResponse; the installed
        type stubs predate the rpc)."""
        messages: Any = health_pb2
        return messages.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )

    async def set_ready(self, ready: bool) -> None:
        """Publish readiness (ignored once shutdown began)."""
        for name in self.readiness_names:
            await self.set(name, SERVING if ready else NOT_SERVING)

    async def enter_graceful_shutdown(self) -> None:
        """Readiness NOT_SERVING for good; liveness stays SERVING while calls drain."""
        await self.set_ready(False)
        self._gracefully_shutting_down = True


class DatabaseHealth:
    """Pings the database on an interval and publishes readiness: the database answers and the
    schema is migrated."""

    def __init__(
        self,
        database: Database,
        health: Health,
        metrics: ServerMetrics,
        *,
        migrated: bool = True,
    ) -> None:
        self._database = database
        self._health = health
        self._metrics = metrics
        self._up: bool | None = None
        self._migrated = migrated
        self._ready: bool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """Whether the last ping succeeded."""
        return bool(self._up)

    @property
    def ready(self) -> bool:
        """Whether calls can be served: the database answers and the schema is migrated."""
        return bool(self._ready)

    async def migrated(self) -> None:
        """The schema is at head: readiness may now follow the database."""
        self._migrated = True
        await self._publish()

    async def check_once(self) -> bool:
        """Ping now and publish the result."""
        up = await self._database.ping()
        if up != self._up:
            log.log(
                logging.INFO if up else logging.WARNING,
                "database reachable" if up else "database unreachable; readiness NOT_SERVING",
            )
            self._up = up
            self._metrics.database_up.set(1 if up else 0)
        await self._publish()
        return up

    async def _publish(self) -> None:
        ready = bool(self._up) and self._migrated
        if ready != self._ready:
            self._ready = ready
            await self._health.set_ready(ready)

    def start(self) -> None:
        """Keep checking in the background until `stop`."""
        self._task = asyncio.create_task(self._loop(), name="database-health")

    async def stop(self) -> None:
        """Stop the background checks."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._database.config.health_interval_s)
            await self.check_once()


async def probe(channel: grpc.aio.Channel, service: str, *, timeout_s: float = 1.0) -> int:
    """The `grpc.health.v1` status a server reports for `service` ('' = the whole server)."""
    check = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply: health_pb2.HealthCheckResponse = await check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
    )
    return int(reply.status)


async def wait_for_status(
    address: str,
    service: str,
    want: int,
    *,
    timeout_s: float = 30.0,
    gave_up: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll `address` until `service` reports `want`; TimeoutError after `timeout_s`.

    `gave_up` is asked between polls; a non-None answer (e.g. "process exited") stops the wait with
    RuntimeError(answer).
    """
    deadline = time.monotonic() + timeout_s
    last: object = "no answer"
    async with grpc.aio.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            reason = gave_up()
            if reason is not None:
                raise RuntimeError(reason)
            try:
                last = await probe(channel, service)
                if last == want:
                    return
            except grpc.aio.AioRpcError as error:
                last = error.code().name
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{service or 'server'} at {address} reported {last}, not {want}")
