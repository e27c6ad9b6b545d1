"""PostgreSQL via SQLAlchemy 2 async + asyncpg: an engine per service, a transaction per call,
and a pool of bare asyncpg connections for the hot paths (his.runtime.driver_pool)."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from his.base.errors import DeadlineExceeded, HisError, ResourceExhausted, Unavailable
from his.runtime.config import DatabaseConfig
from his.runtime.driver_pool import DriverPool, PoolExhausted
from his_client.guard import no_remote_calls


def async_url(url: str) -> str:
    """Any `postgresql://` URL (also pgserver's unix-socket form) as an asyncpg SQLAlchemy URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("HIS_DATABASE_URL must be a postgresql:// URL")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


# The session of the transaction open in this context (Database.transaction), if any.
_open: contextvars.ContextVar[AsyncSession | None] = contextvars.ContextVar(
    "his_open_transaction", default=None
)


def open_transaction() -> AsyncSession | None:
    """The session of the transaction open around the caller, or None."""
    return _open.get()


@dataclass
class DriverTransaction:
    """A `Database.driver_transaction` open around the caller: its connection, what to run
    last inside it when its block ends without an error (rows buffered by their owners, written
    in one round trip: the outbox), and what to run once it has committed (never after a
    rollback)."""

    connection: asyncpg.Connection
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    before_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    buffers: dict[object, list[Any]] = field(default_factory=dict)


_open_driver: contextvars.ContextVar[DriverTransaction | None] = contextvars.ContextVar(
    "his_open_driver_transaction", default=None
)


def open_driver_transaction() -> DriverTransaction | None:
    """The driver transaction open around the caller, or None."""
    return _open_driver.get()


async def driver_of(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under `session`, in its transaction (begun if no statement has run
    yet): for statements on a hot path inside a SQLAlchemy transaction without SQLAlchemy's
    per-statement cost (see `Database.driver_transaction`). The session knows nothing of what
    runs on it."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    # SQLAlchemy's asyncpg adapter sends BEGIN only with its first statement: until then a
    # statement on the driver would commit on its own and survive a rollback. A first statement
    # through SQLAlchemy begins it, and a connection the server dropped fails there as any
    # statement's does (invalidated, UNAVAILABLE), not on the driver where the pool never hears.
    if getattr(raw.dbapi_connection, "_transaction", None) is None:
        await session.execute(text("SELECT 1"))
    driver = raw.driver_connection
    if not isinstance(driver, asyncpg.Connection) or not driver.is_in_transaction():
        raise RuntimeError("the session's connection is not in a transaction")
    return driver


class Database:
    """The engine of one service and the session-per-call helper its store uses."""

    def __init__(self, url: str, config: DatabaseConfig, *, application_name: str) -> None:
        self.config = config
        self.engine: AsyncEngine = create_async_engine(
            async_url(url),
            pool_size=config.pool_size,
            max_overflow=config.max_overflow,
            # No pre-ping: it costs a round trip per call. A connection the server dropped fails
            # its next use (UNAVAILABLE) and SQLAlchemy then invalidates the pool.
            pool_pre_ping=False,
            # Waiting for a pooled connection longer than this means the process is overloaded:
            # RESOURCE_EXHAUSTED, instead of a call hanging until its deadline.
            pool_timeout=config.pool_timeout_s,
            connect_args={
                "server_settings": {
                    "application_name": application_name,
                    "statement_timeout": str(config.statement_timeout_ms),
                    "timezone": "UTC",
                },
                "timeout": config.health_timeout_s,
            },
        )
        # Health pings get their own short-lived connection: a busy pool is not a dead database.
        self._probe = create_async_engine(
            async_url(url),
            poolclass=NullPool,
            connect_args={"timeout": config.health_timeout_s},
        )
        # SQLAlchemy replaces its whole pool only for the disconnects its dialect recognises;
        # an administrator/crash shutdown (a restart, a failover) was not one of them, so every
        # other pooled connection failed one call each. What we map to UNAVAILABLE counts.
        event.listen(self.engine.sync_engine, "handle_error", _mark_disconnects)
        server_settings = {
            "application_name": application_name,
            "statement_timeout": str(config.statement_timeout_ms),
            "timezone": "UTC",
        }
        dsn = (
            make_url(async_url(url))
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(
                dsn, server_settings=server_settings, timeout=config.health_timeout_s
            )

        # The hot paths' own connections: checking one out of SQLAlchemy's pool cost more than
        # the statement run on it. Counted in the process's budget (DatabaseConfig.connections).
        self._driver = DriverPool(
            connect,
            config.driver_pool_size,
            timeout_s=config.pool_timeout_s,
            lost=self._invalidate_sessions,
            clean=_clean_after,
        )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Autocommit: no BEGIN/COMMIT round trips, for reads that need no multi-statement snapshot.
        self._reads = async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One session in one transaction: committed when the block ends, rolled back on error.

        Inside it, calls to other services are refused (his_client.guard: nothing remote under
        a lock), and events recorded through the outbox join the transaction.
        """
        async with self._sessions.begin() as session:
            token = _open.set(session)
            try:
                with no_remote_calls("a database transaction is open"):
                    yield session
            finally:
                _open.reset(token)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session outside any transaction, for reads: each statement sees the latest commits.

        Use `transaction()` instead whenever statements must agree with each other or write.
        """
        async with self._reads() as session:
            yield session

    @asynccontextmanager
    async def driver_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection of the driver's pool inside one transaction, for hot paths
        where SQLAlchemy's per-statement cost shows (measured: ~1 ms a statement here, against
        ~0.3 ms for the driver). Errors are the driver's; `translate_error` maps them too.
        Events recorded through the outbox join it, as they join `transaction()`, and its
        after-commit callbacks (the relay's wake-up) run once it has committed."""
        async with self.driver() as driver:
            opened = DriverTransaction(driver)
            async with driver.transaction():
                token = _open_driver.set(opened)
                try:
                    with no_remote_calls("a database transaction is open"):
                        yield driver
                        for flush in opened.before_commit:
                            await flush()
                finally:
                    _open_driver.reset(token)
        for callback in opened.after_commit:
            callback()

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection of the driver's pool with no transaction around it: each
        statement commits on its own, in one round trip (no BEGIN, no COMMIT). For single
        statements on the hot path (a read by id, the outbox's group commit, the relay).

        A connection lost or left in an unknown state is closed, never reused; when the failure
        says the server dropped it, it dropped its siblings too (a restart, a failover): every
        idle connection of both pools is replaced before its next use."""
        try:
            async with self._driver.connection() as connection:
                yield connection
        except Exception as error:
            if isinstance(translate_error(error), Unavailable):
                self._driver.expire()
                self._invalidate_sessions()
            raise

    def _invalidate_sessions(self) -> None:
        """Replace every connection of SQLAlchemy's pool on its next checkout: the server
        dropped the driver's, so it dropped these too (what SQLAlchemy's pool does on a
        disconnect it sees itself, `Pool._invalidate`)."""
        self.engine.sync_engine.pool._invalidate_time = time.time()

    @property
    def driver_pool(self) -> DriverPool:
        """The driver's pool (for tests and metrics)."""
        return self._driver

    async def ping(self) -> bool:
        """True when the database answers `SELECT 1` within the health timeout."""
        try:
            async with asyncio.timeout(self.config.health_timeout_s):
                async with self._probe.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self._driver.close()
        await self.engine.dispose()
        await self._probe.dispose()


def _clean_after(error: BaseException) -> bool:
    """Whether a driver connection is fit for its pool after `error` ended its block: a refusal
    of ours (a full slot) or a statement the server refused (a constraint) leave it ready, its
    transaction rolled back. Anything else (a cancellation mid-statement, a dropped connection)
    may not, and the connection is closed."""
    if isinstance(error, HisError):
        return True
    return isinstance(error, asyncpg.PostgresError) and translate_error(error) is None


def _mark_disconnects(context: ExceptionContext) -> None:
    error = context.sqlalchemy_exception or context.original_exception
    if not context.is_disconnect and isinstance(translate_error(error), Unavailable):
        context.is_disconnect = True


def integrity_violation(error: sa_exc.IntegrityError) -> tuple[str, str] | None:
    """(SQLSTATE, constraint name) of a violated constraint, e.g. ('23505', 'x_unique')."""
    cause = getattr(error.orig, "__cause__", None)
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate is None:
        return None
    return str(sqlstate), str(getattr(cause, "constraint_name", "") or "")


UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"
EXCLUSION_VIOLATION = "23P01"

_UNREACHABLE = (
    OSError,
    TimeoutError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # The driver's protocol in a state it cannot leave, seen when the server dropped the
    # connection mid-statement (a restart, pg_terminate_backend); the connection is discarded.
    asyncpg.InternalClientError,
)
# SQLSTATEs of a server that dropped the connection or is going away: administrator or crash
# shutdown (a restart, a failover, pg_terminate_backend), cannot connect now, too many
# connections, in recovery (a read-only standby after failover).
_GONE = frozenset({"57P01", "57P02", "57P03", "53300", "25006", "08000", "08003", "08006"})


def translate_error(error: BaseException) -> HisError | None:
    """Database trouble as a status: outage UNAVAILABLE (retryable), full pool RESOURCE_EXHAUSTED,
    statement timeout DEADLINE_EXCEEDED (retrying the same hot row would not help)."""
    if isinstance(error, (sa_exc.TimeoutError, PoolExhausted)):
        return ResourceExhausted(
            "no database connection free in time; the server is overloaded",
            reason="DATABASE_POOL_EXHAUSTED",
        )
    cause: BaseException | None = error
    if isinstance(error, sa_exc.DBAPIError):
        # InterfaceError (PEP 249): the connection, not the statement, failed.
        if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
            return Unavailable("database unavailable", reason="DATABASE_UNAVAILABLE")
        cause = error.orig.__cause__ if error.orig is not None else None
        cause = cause or error.orig
    if isinstance(cause, asyncpg.QueryCanceledError):
        return DeadlineExceeded("a database statement ran out of time", reason="STATEMENT_TIMEOUT")
    if isinstance(cause, _UNREACHABLE) or str(getattr(cause, "sqlstate", "")) in _GONE:
        return Unavailable("database unavailable", reason="DATABASE_UNAVAILABLE")
    return None
