"""A small pool of asyncpg connections for the hot paths (a read by id, the outbox's group
commit, the relay's statements, the audit writer).

Measured here, one `SELECT 1` through a connection checked out of SQLAlchemy's pool cost ~450 µs
of CPU, through asyncpg's own `Pool` ~220 µs, on a bare connection ~100 µs: the checkout, not the
statement, was the cost. This pool is a list of idle connections and a semaphore, so taking and
giving back a connection costs next to nothing.

- At most `size` connections are open (opened when needed, kept open while they work). They are
  part of the process's connection budget (`DatabaseConfig.connections`).
- A caller waits at most `timeout_s` for a free connection, then gets `PoolExhausted`
  (RESOURCE_EXHAUSTED: the process is overloaded; another replica may answer).
- A connection the server refused a statement on is reused (or after any error `clean` accepts);
  one that failed otherwise (lost, cancelled mid-statement) or that the caller left inside a
  transaction is closed. A connection
  the server dropped (a restart, a failover, `pg_terminate_backend`) is noticed by the driver
  while idle; at its next checkout it is replaced, every idle sibling with it (`expire()`), and
  `lost` is told (the other pool of the process has lost its connections too).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg

Connect = Callable[[], Awaitable[asyncpg.Connection]]
# Called when a connection is found dropped by the server while idle.
Lost = Callable[[], None]
# Whether a connection is fit for reuse after an error ended the block that held it.
Clean = Callable[[BaseException], bool]


def server_refused(error: BaseException) -> bool:
    """The default `clean`: the server refused a statement and is ready for the next one."""
    return isinstance(error, asyncpg.PostgresError)


class PoolExhausted(Exception):
    """No connection became free within the pool's timeout."""


class DriverPool:
    """At most `size` open asyncpg connections, reused in last-in-first-out order."""

    def __init__(
        self,
        connect: Connect,
        size: int,
        *,
        timeout_s: float,
        lost: Lost | None = None,
        clean: Clean = server_refused,
    ) -> None:
        if size < 1:
            raise ValueError("a driver pool needs at least one connection")
        self._connect = connect
        self._timeout_s = timeout_s
        self._lost = lost
        self._clean = clean
        self._slots = asyncio.Semaphore(size)
        self._idle: list[asyncpg.Connection] = []
        # Connections checked out now (closed by `close`, whoever holds them).
        self._busy: set[asyncpg.Connection] = set()
        # Bumped by `expire`: a busy connection of an older generation is closed when returned.
        self._generation = 0
        self._born: dict[asyncpg.Connection, int] = {}
        self._closed = False
        self.size = size

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for the block; given back after it, or closed if the block failed."""
        connection = await self._acquire()
        try:
            yield connection
        except BaseException as error:
            if self._clean(error):
                # Ready for the next statement; `_release` still closes it if the server closed
                # it (a shutdown) or it was left inside a transaction.
                self._release(connection)
            else:
                # A lost connection, a cancellation mid-statement: its state is unknown.
                self._discard(connection)
            raise
        self._release(connection)

    async def _acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise PoolExhausted("the pool is closed")
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolExhausted(f"no connection free within {self._timeout_s:g} s") from None
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            connection = self._idle_connection()
            if connection is None:
                connection = await self._connect()
                self._born[connection] = self._generation
        except BaseException:
            self._slots.release()
            raise
        self._busy.add(connection)
        return connection

    def _idle_connection(self) -> asyncpg.Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_closed():
                return connection
            # The server dropped it while it rested: it dropped its siblings too, most likely.
            self._born.pop(connection, None)
            self.expire()
            if self._lost is not None:
                self._lost()
        return None

    def _release(self, connection: asyncpg.Connection) -> None:
        self._busy.discard(connection)
        usable = (
            not self._closed
            and not connection.is_closed()
            and not connection.is_in_transaction()
            and self._born.get(connection) == self._generation
        )
        if usable:
            self._idle.append(connection)
        else:
            self._close(connection)
        self._slots.release()

    def _discard(self, connection: asyncpg.Connection) -> None:
        self._busy.discard(connection)
        self._close(connection)
        self._slots.release()

    def _close(self, connection: asyncpg.Connection) -> None:
        self._born.pop(connection, None)
        # terminate(): no round trip, and it cannot fail on a connection already gone.
        connection.terminate()

    def expire(self) -> None:
        """Close every idle connection now and every busy one when it is given back (the server
        dropped one, so it dropped its siblings too)."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for connection in idle:
            self._close(connection)

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return len(self._idle) + len(self._busy)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Close every connection (idle ones politely, busy ones at once); later checkouts fail."""
        self._closed = True
        idle, busy = self._idle, list(self._busy)
        self._idle, self._busy = [], set()
        for connection in busy:
            self._close(connection)
        for connection in idle:
            self._born.pop(connection, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout_s)
            connection.terminate()
