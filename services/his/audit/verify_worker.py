"""What VerifyChain's worker process runs: read a span of the chain and check it.

The worker is a process of its own (see verification.py) because the check is CPU work in many
small pieces (building each event's message, serialising it, hashing ~300 bytes): a thread would
hold the GIL against the service's event loop. The worker reads the rows itself, on its own
driver connection, so the service's loop neither decodes nor pickles them; only the small
`ChainCheck` travels between the processes.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg

from his.audit import store
from his.audit.chain import ChainCheck


class VerifyWorkerError(Exception):
    """The worker could not read the chain (the database was unreachable or refused)."""


def lower_priority(niceness: int) -> None:
    """Run the worker below the services' CPU priority, so on a busy machine it gets only what
    is left: SCHED_IDLE on Linux (any runnable normal task preempts it at once), else `nice`."""
    os.nice(niceness)
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        # Lowering one's own policy needs no privilege.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def verify_span(dsn: str, check: ChainCheck, end: int, chunk: int, duty: float = 1.0) -> ChainCheck:
    """Check events `check.expected`..`end` (`chunk` rows a read) and return the updated check;
    a sequence number missing up to `end` is reported as MISSING. `duty` is the share of time
    spent working: after each chunk the worker rests for the rest (the CPU a low priority cannot
    give back, such as a hyperthread sibling or the memory bus, is then shared too)."""
    return asyncio.run(_verify_span(dsn, check, end, chunk, duty))


async def _verify_span(
    dsn: str, check: ChainCheck, end: int, chunk: int, duty: float
) -> ChainCheck:
    try:
        connection = await asyncpg.connect(
            dsn, server_settings={"application_name": "his-audit-verify"}
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise VerifyWorkerError(type(error).__name__) from None
    try:
        while not check.broken and check.expected <= end:
            started = time.perf_counter()
            rows = await store.chain_chunk_fast(
                connection, start=check.expected, end=end, limit=chunk
            )
            if not rows:
                break
            check.check(rows)
            await asyncio.sleep((time.perf_counter() - started) * (1 / duty - 1))
        check.finish(end)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise VerifyWorkerError(type(error).__name__) from None
    finally:
        await connection.close()
    return check
