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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from his.audit import store
from his.audit.anchor import CheckpointVerifier, SignedCheckpoint
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


# Checkpoints read at a time when their links are checked.
_LINK_CHUNK = 2000
_CHECKPOINTS = (
    "SELECT checkpoint_number, sequence_number, hash, create_time, key_id, previous_digest,"
    " events_digest, signature FROM audit.chain_checkpoints"
    " WHERE checkpoint_number BETWEEN $1 AND $2 ORDER BY checkpoint_number LIMIT $3"
)


def check_checkpoint_links(
    dsn: str, public_keys: list[bytes], first: int, last: int
) -> tuple[int, int] | None:
    """The first of checkpoints `first`..`last` that breaks the run: a number missing, or a link
    to the previous checkpoint that does not hold (blamed on whichever of the two fails its own
    signature): (its number, its sequence number); None when the run is whole. Signatures are
    not otherwise checked here: the newest checkpoint's, checked by the caller, covers the run."""
    return asyncio.run(_check_links(dsn, public_keys, first, last))


async def _check_links(
    dsn: str, public_keys: list[bytes], first: int, last: int
) -> tuple[int, int] | None:
    verifier = CheckpointVerifier([Ed25519PublicKey.from_public_bytes(k) for k in public_keys])
    try:
        connection = await asyncpg.connect(
            dsn, server_settings={"application_name": "his-audit-verify"}
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise VerifyWorkerError(type(error).__name__) from None
    previous: SignedCheckpoint | None = None
    try:
        expected = first
        while expected <= last:
            rows = await connection.fetch(_CHECKPOINTS, expected, last, _LINK_CHUNK)
            for row in rows:
                checkpoint = signed_of_record(row)
                if checkpoint.checkpoint_number != expected:
                    # Missing: from the event after the one before it, or from the first event
                    # (0 would read as "no break" to the caller).
                    return expected, previous.sequence_number + 1 if previous else 1
                if previous is not None and checkpoint.previous_digest != previous.digest():
                    bad = checkpoint if verifier.genuine(previous) else previous
                    return bad.checkpoint_number, bad.sequence_number
                previous = checkpoint
                expected += 1
            if not rows:
                return expected, previous.sequence_number + 1 if previous else 1
            await asyncio.sleep(0)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise VerifyWorkerError(type(error).__name__) from None
    finally:
        await connection.close()
    return None


def signed_of_record(row: asyncpg.Record) -> SignedCheckpoint:
    """A checkpoint from a driver record of `audit.chain_checkpoints`."""
    return SignedCheckpoint(
        checkpoint_number=int(row["checkpoint_number"]),
        sequence_number=int(row["sequence_number"]),
        hash=bytes(row["hash"]),
        create_time=row["create_time"],
        key_id=str(row["key_id"]),
        previous_digest=bytes(row["previous_digest"]),
        events_digest=bytes(row["events_digest"]),
        signature=bytes(row["signature"]),
    )
