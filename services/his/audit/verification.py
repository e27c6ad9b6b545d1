"""VerifyChain's passes: incremental from a signed checkpoint, full passes that do not starve the
service's calls.

- The checking runs in one worker process per service process, at lowered CPU priority (see
  verify_worker.py for why not a thread). It reads and checks a span of the chain per task
  (`VERIFY_CHUNK` rows a read, keyset by sequence number); the service's event loop only awaits
  one small result per span, so its calls keep flowing.
- One worker means at most one span is being checked at a time per process, however many
  VerifyChain calls are running: concurrent passes take turns span by span.
- Open-ended passes are shared: a full pass (from the first event to the head) or an incremental
  one asked for while the same kind is running joins it and gets its result (which ends at the
  head as it was when that pass began). A shared pass runs to its end even if its callers give up.
- A pass from the first event, or an incremental one, moves the checkpoint (checkpoint.py) to the
  last event it found intact.
- Every pass is also checked against the signed checkpoints (anchoring.py), which catches what
  the chain's own links cannot: a rewrite with recomputed hashes and head, a cut end.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization

from his.audit import store
from his.audit.anchor import CheckpointSigner as AnchorSigner
from his.audit.anchoring import Anchors, Finding
from his.audit.chain import GENESIS_HASH, ChainCheck
from his.audit.checkpoint import NOTHING_VERIFIED, Checkpoint, CheckpointSigner
from his.audit.checkpoint_log import CheckpointLog
from his.audit.validation import MAX_VERIFY_RANGE
from his.audit.verify_worker import (
    VerifyWorkerError,
    check_checkpoint_links,
    lower_priority,
    verify_span,
)
from his.base.errors import Unavailable
from his.runtime.database import Database

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rows the worker reads and checks at a time: memory stays flat however long the range.
VERIFY_CHUNK = 2000
# Chunks per worker task: how long (~1 s of checking here) a pass holds the worker before another
# pass gets its turn, and how soon a cancelled pass stops.
VERIFY_SPAN_CHUNKS = 10
# The share of time the worker works: it rests after each chunk for three times as long as the
# chunk took (measured: with the priority alone GetPatient's p99 still doubled on 2 cores).
VERIFY_DUTY = 0.25
# How far below normal priority the worker runs (os.nice; on Linux it also runs SCHED_IDLE).
VERIFY_NICENESS = 19


@dataclass(frozen=True)
class Outcome:
    """What one pass checked and found."""

    first: int
    last: int
    check: ChainCheck
    # When the checkpoint an incremental pass continued from was recorded.
    checkpoint_time: dt.datetime | None = None
    # What checking against the signed checkpoints found.
    finding: Finding | None = None

    def first_break(self) -> tuple[int, int, int, int] | None:
        """The earliest break the chain or the signed checkpoints show: (sequence number,
        reason, last missing sequence number, checkpoint number); None when intact."""
        breaks = []
        if self.check.broken:
            breaks.append((self.check.break_at, self.check.reason, self.check.missing_through, 0))
        if self.finding is not None and self.finding.broken:
            f = self.finding
            breaks.append((f.break_at, f.reason, f.missing_through, f.checkpoint_number))
        return min(breaks, key=lambda b: b[0]) if breaks else None


class ChainVerifier:
    """Runs VerifyChain's passes for one service process (one worker, shared open-ended passes)."""

    def __init__(
        self,
        database: Database,
        signer: CheckpointSigner,
        anchor_signer: AnchorSigner,
        checkpoint_log: CheckpointLog | None,
    ) -> None:
        self._db = database
        self._signer = signer
        self._public_keys = [
            anchor_signer.public_key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        ]
        self.anchors = Anchors(database, anchor_signer, self._walk, self._links, checkpoint_log)
        # The worker connects with the service's own database URL, through the plain driver.
        self._dsn = database.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._worker: ProcessPoolExecutor | None = None
        self._running: dict[str, asyncio.Task[Outcome]] = {}

    async def full(self, last: int) -> Outcome:
        """Events 1..`last` (the head when asked); joins a full pass already running."""
        return await self._shared("full", lambda: self._from_start(last))

    async def incremental(self) -> Outcome:
        """Events after the checkpoint, up to the head (at most MAX_VERIFY_RANGE of them);
        joins an incremental pass already running."""
        return await self._shared("incremental", self._from_checkpoint)

    async def range(self, first: int, last: int, previous: bytes | None) -> Outcome:
        """Events `first`..`last`, the first linked to `previous` (None: the event before the
        range is missing, which is reported unless the range lies wholly past the head). A range
        from event 1 moves the checkpoint."""
        if first == 1:
            return await self._from_start(last)
        check = ChainCheck(expected=first, previous=previous)
        if previous is None and first <= last + 1:
            # The range's first link points at an event that is gone (the contract checks the
            # first event's link too): without this, a deletion just before a range would pass.
            check.missing(first - 1)
        check = await self._walk(check, last)
        return Outcome(first, last, check, finding=await self.anchors.check(first))

    def close(self) -> None:
        """Stop the worker process (a span it is checking is abandoned)."""
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None

    # --- passes --------------------------------------------------------------------------------

    async def _shared(self, kind: str, run: Callable[[], Awaitable[Outcome]]) -> Outcome:
        task = self._running.get(kind)
        if task is None:
            # Its own context: a shared pass serves many callers and carries none of them.
            task = asyncio.create_task(_outcome(run), context=contextvars.Context())
            self._running[kind] = task
            task.add_done_callback(lambda done: self._finished(kind, done))
        return await asyncio.shield(task)

    def _finished(self, kind: str, task: asyncio.Task[Outcome]) -> None:
        if self._running.get(kind) is task:
            del self._running[kind]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every caller gave up

    async def _from_start(self, last: int) -> Outcome:
        check = await self._walk(ChainCheck(expected=1, previous=GENESIS_HASH), last)
        finding = await self.anchors.check(0)
        if finding.broken:
            # The checkpoint (how far the chain was verified) stays where it is: a rewrite
            # below it is reported by every check from the signed checkpoints anyway.
            return Outcome(1, last, check, finding=finding)
        verified = check.break_at - 1 if check.broken else last
        reached = Checkpoint(verified, check.last_hash if verified else GENESIS_HASH, _now())
        async with self._db.transaction() as session:
            stored = await store.read_checkpoint(session, lock=True)
            current = self._signer.trusted(stored) or NOTHING_VERIFIED
            # A break moves the checkpoint back to just before it, so that incremental checks
            # keep reporting it; an intact pass moves it only forward.
            if check.broken or verified > current.sequence_number:
                await store.put_checkpoint(session, reached, self._signer.sign(reached))
        return Outcome(1, last, check, finding=finding)

    async def _from_checkpoint(self) -> Outcome:
        async with self._db.read() as session:
            head = await store.read_head(session)
            stored = await store.read_checkpoint(session)
        trusted = self._signer.trusted(stored)
        if trusted is None and stored.mac:
            log.warning("the audit verification checkpoint fails authentication; ignoring it")
        base = trusted or NOTHING_VERIFIED
        first = base.sequence_number + 1
        last = min(head.sequence_number, base.sequence_number + MAX_VERIFY_RANGE)
        check = ChainCheck(expected=first, previous=base.hash, last_hash=_hash_if(base))
        if base.sequence_number > head.sequence_number:
            # Events were verified that the head no longer counts: the end was cut off.
            check.missing(head.sequence_number + 1)
            check.missing_through = base.sequence_number
            finding = await self.anchors.check(head.sequence_number)
            return Outcome(first, head.sequence_number, check, base.verified_at, finding)
        check = await self._walk(check, last)
        finding = await self.anchors.check(base.sequence_number)
        verified = check.break_at - 1 if check.broken else last
        if verified > base.sequence_number and not finding.broken:
            reached = Checkpoint(verified, check.last_hash, _now())
            async with self._db.transaction() as session:
                # Moved only if no other pass moved it meanwhile (a full pass may have found a
                # break before it and moved it back).
                if await store.read_checkpoint(session, lock=True) == stored:
                    await store.put_checkpoint(session, reached, self._signer.sign(reached))
        return Outcome(first, last, check, base.verified_at, finding)

    async def _walk(self, check: ChainCheck, last: int) -> ChainCheck:
        """Run `check` up to `last`, one span per worker task."""
        span = VERIFY_CHUNK * VERIFY_SPAN_CHUNKS
        while not check.broken and check.expected <= last:
            end = min(last, check.expected + span - 1)
            check = await self._in_worker(
                "the chain", verify_span, self._dsn, check, end, VERIFY_CHUNK, VERIFY_DUTY
            )
        check.finish(last)
        return check

    async def _links(self, first: int, last: int) -> tuple[int, int] | None:
        """The links of checkpoints `first`..`last`, checked in the worker."""
        return await self._in_worker(
            "the checkpoints", check_checkpoint_links, self._dsn, self._public_keys, first, last
        )

    async def _in_worker(self, reading: str, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in the verification worker; its failures as UNAVAILABLE."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(), function, *args)
        except BrokenProcessPool:
            self._worker = None
            raise Unavailable(
                "the chain verification worker stopped; retry", reason="VERIFY_WORKER_FAILED"
            ) from None
        except VerifyWorkerError as error:
            raise Unavailable(
                f"the chain verification worker could not read {reading}; retry",
                reason="VERIFY_WORKER_FAILED",
                metadata={"error": str(error)},
            ) from None

    def _pool(self) -> ProcessPoolExecutor:
        if self._worker is None:
            # Spawned, never forked: a fork of a process running grpc's threads is not safe.
            self._worker = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=lower_priority,
                initargs=(VERIFY_NICENESS,),
            )
        return self._worker


async def _outcome(run: Callable[[], Awaitable[Outcome]]) -> Outcome:
    return await run()


def _hash_if(checkpoint: Checkpoint) -> bytes:
    """The hash a check reports before it has read anything: the checkpoint's, if any."""
    return b"" if checkpoint.empty else checkpoint.hash


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
