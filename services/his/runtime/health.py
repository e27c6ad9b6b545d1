"""gRPC health per service name, following the database: NOT_SERVING while it is unreachable.

A dependency outage (another service down) is not this service's failure and never changes health;
only the service's own database does. Recovery needs no restart: the next good ping flips it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from his.runtime.database import Database
from his.runtime.metrics import ServerMetrics

log = logging.getLogger(__name__)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    """Pings the database on an interval and mirrors the result into the health service."""

    def __init__(
        self,
        database: Database,
        health: HealthServicer,
        service_names: Sequence[str],
        metrics: ServerMetrics,
    ) -> None:
        self._database = database
        self._health = health
        # "" is the whole server: what a plain `grpc_health_probe` or Kubernetes probe asks.
        self._names = ("", *service_names)
        self._metrics = metrics
        self._up: bool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """Whether the last ping succeeded."""
        return bool(self._up)

    async def check_once(self) -> bool:
        """Ping now and publish the result."""
        up = await self._database.ping()
        if up != self._up:
            log.log(
                logging.INFO if up else logging.WARNING,
                "database reachable" if up else "database unreachable; health NOT_SERVING",
            )
            self._up = up
            self._metrics.database_up.set(1 if up else 0)
            for name in self._names:
                await self._health.set(name, SERVING if up else NOT_SERVING)
        return up

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
