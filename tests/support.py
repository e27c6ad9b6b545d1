"""Small helpers the tests share: free ports, waiting for a health status, reading rich errors,
fresh databases."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from his.runtime.health import wait_for_status
from his.runtime.migrations import upgrade
from his.runtime.relay import Relay
from his.runtime.server import RunningService
from his_client import rich_status


async def fresh_database(server_url: str, name: str, *schemas: str) -> str:
    """A new, empty database `name` on the server at `server_url`, with the named services'
    schemas migrated (for tests that tamper with rows or need a state of their own)."""
    engine = create_async_engine(
        async_url(server_url), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    for schema in schemas:
        await asyncio.to_thread(upgrade, schema, url)
    return url


# The relays of the session's services (tests/conftest.py), each with the destinations it is
# drained for (None: all): audit is eventually consistent, so a test that reads the trail first
# waits until these delivered what their outboxes hold.
SESSION_RELAYS: list[tuple[Relay, tuple[str, ...] | None]] = []


@contextlib.asynccontextmanager
async def relay_paused(running: RunningService) -> AsyncIterator[None]:
    """While the block runs, `running`'s relay delivers nothing (what was ready is delivered
    first): a test reads the outbox as a change left it, before the receiver takes it away."""
    relay = running.relay
    assert relay is not None
    await relay.stop(flush_s=5.0)
    try:
        yield
    finally:
        relay.start()


def track_relay(running: RunningService, destinations: tuple[str, ...] | None = None) -> None:
    """Count `running`'s relay among the session's (see `delivered`); with `destinations`, only
    those are waited for (a destination that may not run in every session is not)."""
    if running.relay is not None:
        SESSION_RELAYS.append((running.relay, destinations))


async def delivered(*relays: Relay, timeout_s: float = 20.0) -> None:
    """Wait until `relays` (default: the session's) delivered every event ready in their outbox:
    what was recorded before this call is in the audit trail after it."""
    for relay, destinations in [(r, None) for r in relays] or SESSION_RELAYS:
        await relay.drain(timeout_s, destinations)


async def blocked_on_a_lock(
    database_url: str, application_name: str, *, timeout_s: float = 20.0
) -> None:
    """Wait until a session of `application_name` waits for a row lock (a call is truly in
    flight inside its transaction); fails the test after `timeout_s`."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    try:
        deadline = time.monotonic() + timeout_s
        async with engine.connect() as connection:
            while time.monotonic() < deadline:
                waiting = await connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = :name AND wait_event_type = 'Lock'"
                    ),
                    {"name": application_name},
                )
                if waiting:
                    return
                await asyncio.sleep(0.05)
        raise AssertionError(f"no call of {application_name} ever waited for a row lock")
    finally:
        await engine.dispose()


def handled(running: RunningService, code: str) -> float:
    """How many calls a server answered with `code`, over all its methods."""
    total = 0.0
    for metric in running.metrics.handled.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("grpc_code") == code:
                total += sample.value
    return total


# The ports `free_port` handed out, each held by a bound socket until this process ends.
_RESERVED: list[socket.socket] = []


def free_port() -> int:
    """A TCP port nothing listens on, reserved for this test process until it ends.

    The port stays bound by a socket that never listens, with SO_REUSEADDR: the kernel then gives
    it to no other bind to port 0 and to no outgoing connection on this machine, while a server
    that binds it by number with SO_REUSEADDR (gRPC, Envoy, his.runtime.documents_http) still
    can, and again after a restart. A port that was only free when asked (its socket closed at
    once) could be handed to anyone before the service it was reserved for started: the session
    reserves the ports of its order loop, scheduling and iam early and starts them later, if at
    all. A port used as "nothing listens here" stays so while reserved."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", 0))
    except OSError:
        sock.close()
        raise
    _RESERVED.append(sock)
    return int(sock.getsockname()[1])


async def wait_for_health(
    address: str, service: str, want: int, *, timeout_s: float = 20.0
) -> None:
    """Poll the health service until it reports `want` (bounded; fails the test otherwise)."""
    try:
        await wait_for_status(address, service, want, timeout_s=timeout_s)
    except TimeoutError as error:
        raise AssertionError(str(error)) from None


@dataclass
class RpcFailure:
    """What a failed call told the caller: code, ErrorInfo and BadRequest field violations."""

    code: grpc.StatusCode
    message: str
    reason: str | None = None
    domain: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)


def failure_of(error: grpc.aio.AioRpcError) -> RpcFailure:
    """Decode the rich `google.rpc.Status` details of a failed call (his_client.rich_status)."""
    status = rich_status(error)
    return RpcFailure(
        code=status.code,
        message=status.message,
        reason=status.reason or None,
        domain=status.domain or None,
        metadata=dict(status.metadata),
        fields=[violation.field for violation in status.field_violations],
    )


async def fails(call: Awaitable[Any]) -> RpcFailure:
    """Await a call that must fail and return what it said; a success fails the test."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return failure_of(error)
    raise AssertionError(f"expected the call to fail, it returned {reply!r}")


async def invalid_in(domain: str, call: Awaitable[Any]) -> list[str]:
    """Await a call that must be INVALID_ARGUMENT from `domain`; the fields it names."""
    failure = await fails(call)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.reason == "INVALID_ARGUMENT"
    assert failure.domain == domain
    assert failure.fields, "INVALID_ARGUMENT must name at least one field"
    return failure.fields
