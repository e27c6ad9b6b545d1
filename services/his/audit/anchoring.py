"""Anchoring the chain: taking signed checkpoints, and checking the events against them.

Taking one: the events since the previous checkpoint are checked (in the verification worker)
and the head they end in is signed; a broken chain is never sealed. Checking: the newest
checkpoints are verified (signature, links between them, the copy kept outside the database),
then the events must still reach the newest one's sequence number (else MISSING: the end was
cut) and still have the hashes the checkpoints recorded (else ALTERED: rewritten, even if every
later hash and the head were recomputed); the event prefixes a checkpoint keeps name the first
changed event. All of it costs a few indexed reads and one signature check per checkpoint in
scope, so incremental VerifyChain stays cheap.

Following: audit runs as several replicas on one database, and each keeps outside the database
(memory, its checkpoint log) not only the checkpoints it signed but every genuine one the others
signed, read from the database on each check, each creation and each interval (`follow`). A
checkpoint row deleted after any replica read it is therefore missed by that replica as if it
had signed it; one deleted before any other replica read it is not (ADR 0006).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from his.audit import store
from his.audit.anchor import (
    EVENT_PREFIX_BYTES,
    NO_PREVIOUS,
    CheckpointSigner,
    CheckpointVerifier,
    SignedCheckpoint,
    events_digest,
)
from his.audit.chain import GENESIS_HASH, ChainCheck
from his.audit.checkpoint_log import CheckpointLog
from his.audit.v1 import audit_service_pb2 as pb
from his.base.errors import Aborted, FailedPrecondition
from his.runtime.database import Database

log = logging.getLogger(__name__)

# Event hashes read at a time while locating a rewrite.
_LOCATE_CHUNK = 5000
# Attempts at numbering a new checkpoint when other replicas create one at the same moment.
_CREATE_ATTEMPTS = 3

# Checkpoints read from the database at a time while following the other replicas'.
_FOLLOW_PAGE = 256

# Checkpoints checked in the service's process per check at most (the newest ones); the links
# of older ones are checked in the verification worker, off the event loop (a year at 60 s is
# half a million checkpoints).
IN_PROCESS_CHECKPOINTS = 256

Walk = Callable[[ChainCheck, int], Awaitable[ChainCheck]]
# (first, last) -> the first checkpoint of that run that breaks it: (number, sequence number).
Links = Callable[[int, int], Awaitable[tuple[int, int] | None]]


@dataclass(frozen=True)
class Finding:
    """What checking against the checkpoints found (`break_at` 0: nothing)."""

    anchor: SignedCheckpoint | None
    break_at: int = 0
    reason: int = pb.CHAIN_BREAK_REASON_UNSPECIFIED
    missing_through: int = 0
    checkpoint_number: int = 0

    @property
    def broken(self) -> bool:
        """True when the events or the checkpoints are not as signed."""
        return self.break_at != 0


class Anchors:
    """The signed checkpoints of one audit process."""

    def __init__(
        self,
        database: Database,
        signer: CheckpointSigner,
        walk: Walk,
        links: Links,
        checkpoint_log: CheckpointLog | None,
    ) -> None:
        self._db = database
        self._signer = signer
        self.verifier: CheckpointVerifier = signer.verifier()
        self._walk = walk
        self._links = links
        self._log = checkpoint_log
        # The newest checkpoint this process created, followed, or saw outside the database.
        self._known: SignedCheckpoint | None = None
        # Guards moving `_known` forward and appending to the log (creating and following).
        self._holding = asyncio.Lock()
        # The log file is read once, at the first check: after that only this process appends
        # to it, and it knows what it appended (`_known`), so no VerifyChain reads a file.
        self._log_read = checkpoint_log is None
        self._creating = asyncio.Lock()

    # --- taking checkpoints --------------------------------------------------------------------

    async def create(self, request_id: str | None = None) -> SignedCheckpoint:
        """Seal the chain as it is now; the newest checkpoint when it has not moved since."""
        if request_id is not None:
            async with self._db.read() as session:
                number = await store.checkpoint_of_request(session, request_id)
                replay = (
                    None if number is None else await store.checkpoint_by_number(session, number)
                )
            if replay is not None:
                return replay
        # One creation at a time per process (the interval task and callers); the advisory
        # lock orders replicas.
        async with self._creating:
            for _ in range(_CREATE_ATTEMPTS):
                made = await self._try_create(request_id)
                if made is not None:
                    return made
        raise Aborted(
            "another replica created a checkpoint at the same moment; retry",
            reason="CHECKPOINT_RACE",
        )

    async def create_if_moved(self) -> SignedCheckpoint | None:
        """The interval task's checkpoint: one only when the chain moved since the newest (and
        the other replicas' checkpoints followed either way)."""
        await self.follow()
        async with self._db.read() as session:
            head = await store.read_head(session)
            newest = await store.newest_checkpoint(session)
        if head.sequence_number == 0 or (
            newest is not None and newest.sequence_number == head.sequence_number
        ):
            return None
        return await self.create()

    async def _try_create(self, request_id: str | None) -> SignedCheckpoint | None:
        # Hold the others' checkpoints first, so the log runs without gaps up to the new one.
        await self.follow()
        async with self._db.read() as session:
            head = await store.read_head(session)
            previous = await store.newest_checkpoint(session)
        outside = await self.newest_outside()
        problem = self._checkpoint_problem(previous, outside)
        if problem is not None:
            raise FailedPrecondition(
                f"the newest audit checkpoint is not genuine ({problem}); verify the chain",
                reason="CHECKPOINT_INVALID",
                metadata={"problem": problem},
            )
        base_sequence = previous.sequence_number if previous is not None else 0
        base_hash = previous.hash if previous is not None else GENESIS_HASH
        if previous is not None and head.sequence_number <= base_sequence:
            if head.sequence_number < base_sequence or head.hash != base_hash:
                raise _chain_broken(head.sequence_number + 1, "the head is behind the checkpoint")
            return await self._answer(previous, request_id)
        if head.sequence_number == 0:
            raise FailedPrecondition(
                "the chain is empty; there is nothing to checkpoint", reason="CHAIN_EMPTY"
            )
        check = ChainCheck(expected=base_sequence + 1, previous=base_hash, prefixes=bytearray())
        check = await self._walk(check, head.sequence_number)
        if check.broken:
            raise _chain_broken(check.break_at, "an event since the previous checkpoint")
        if check.last_hash != head.hash:
            raise _chain_broken(head.sequence_number, "the head does not match its event")
        assert check.prefixes is not None
        prefixes = bytes(check.prefixes)
        made = self._signer.sign(
            SignedCheckpoint(
                checkpoint_number=(previous.checkpoint_number if previous else 0) + 1,
                sequence_number=head.sequence_number,
                hash=head.hash,
                create_time=dt.datetime.now(dt.UTC),
                key_id=self._signer.key_id,
                previous_digest=previous.digest() if previous else NO_PREVIOUS,
                events_digest=events_digest(prefixes),
            )
        )
        async with self._db.transaction() as session:
            await store.lock_checkpoints(session)
            current = await store.newest_checkpoint(session)
            if (current.checkpoint_number if current else 0) != made.checkpoint_number - 1:
                return None  # another replica was first; build on its checkpoint
            await store.insert_checkpoint(session, made, prefixes)
            if request_id is not None:
                await store.remember_request(session, request_id, made.checkpoint_number)
        # Outside the database only after it is committed: a copy of a checkpoint that does not
        # exist would accuse the database of losing it.
        await self._hold([made])
        log.info(
            "audit chain checkpoint signed",
            extra={
                "fields": {
                    # The whole signed checkpoint: the log pipeline keeps a third copy, outside
                    # the database and the pod.
                    "checkpoint_number": made.checkpoint_number,
                    "sequence_number": made.sequence_number,
                    "hash": made.hash.hex(),
                    "create_time": made.create_time.isoformat(),
                    "key_id": made.key_id,
                    "previous_checkpoint_digest": made.previous_digest.hex(),
                    "events_digest": made.events_digest.hex(),
                    "signature": made.signature.hex(),
                }
            },
        )
        return made

    async def _answer(
        self, checkpoint: SignedCheckpoint, request_id: str | None
    ) -> SignedCheckpoint:
        """An existing checkpoint as the answer, remembered for `request_id`."""
        if request_id is None:
            return checkpoint
        async with self._db.transaction() as session:
            number = await store.remember_request(session, request_id, checkpoint.checkpoint_number)
            first = await store.checkpoint_by_number(session, number)
        return first or checkpoint

    async def _hold(self, checkpoints: list[SignedCheckpoint]) -> None:
        """Keep `checkpoints` (consecutive, oldest first) outside the database: in memory and in
        the log, skipping any this process already holds (a follow and a creation can both
        reach the same one)."""
        async with self._holding:
            held = self._known.checkpoint_number if self._known is not None else 0
            fresh = [c for c in checkpoints if c.checkpoint_number > held]
            if not fresh:
                return
            self._known = fresh[-1]
            if self._log is not None:
                await asyncio.to_thread(self._log.append_all, fresh)

    async def follow(self) -> int:
        """Hold the checkpoints other replicas signed since the newest this process holds, as
        if it had signed them; the number adopted. Each must be genuine and link to the one
        before it; the first that is not stops the follow (and the check reports it as
        CHECKPOINT_INVALID). A process that holds none adopts the newest genuine one; the links
        below it are the check's to verify."""
        held = await self.newest_outside()
        adopted: list[SignedCheckpoint] = []
        while True:
            async with self._db.read() as session:
                if held is None:
                    newest = await store.newest_checkpoint(session)
                    page = [newest] if newest is not None else []
                else:
                    after = held.checkpoint_number
                    page = await store.checkpoints_between(session, after + 1, after + _FOLLOW_PAGE)
            linked = self._linked(held, page)
            adopted.extend(linked)
            held = linked[-1] if linked else held
            if len(linked) < _FOLLOW_PAGE:
                break
        if adopted:
            await self._hold(adopted)
            log.info(
                "audit chain checkpoints followed",
                extra={
                    "fields": {
                        "count": len(adopted),
                        "checkpoint_number": adopted[-1].checkpoint_number,
                        "sequence_number": adopted[-1].sequence_number,
                    }
                },
            )
        return len(adopted)

    def _linked(
        self, held: SignedCheckpoint | None, page: list[SignedCheckpoint]
    ) -> list[SignedCheckpoint]:
        """The checkpoints of `page` (oldest first) that are genuine and each link to the one
        before, starting from `held`, up to the first that is not."""
        taken: list[SignedCheckpoint] = []
        for checkpoint in page:
            if held is not None and (
                checkpoint.checkpoint_number != held.checkpoint_number + 1
                or checkpoint.previous_digest != held.digest()
            ):
                break
            if not self.verifier.genuine(checkpoint):
                break
            taken.append(checkpoint)
            held = checkpoint
        return taken

    # --- checking against them -----------------------------------------------------------------

    async def newest_outside(self) -> SignedCheckpoint | None:
        """The newest checkpoint known outside the database: in memory or in the log file."""
        in_file = None
        if not self._log_read and self._log is not None:
            in_file = await asyncio.to_thread(self._log.newest)
            self._log_read = True
        candidates = [c for c in (self._known, in_file) if c is not None]
        if not candidates:
            return None
        newest = max(candidates, key=lambda c: c.checkpoint_number)
        self._known = newest
        return newest

    def _checkpoint_problem(
        self, newest: SignedCheckpoint | None, outside: SignedCheckpoint | None
    ) -> str | None:
        """Why the database's newest checkpoint cannot be built on, None when it can."""
        if newest is not None and not self.verifier.genuine(newest):
            return "its signature does not verify"
        if outside is None:
            return None
        if newest is None or newest.checkpoint_number < outside.checkpoint_number:
            return "a newer checkpoint was removed from the database"
        if newest.checkpoint_number == outside.checkpoint_number and newest != outside:
            return "it differs from the copy outside the database"
        return None

    async def check(self, from_sequence: int) -> Finding:
        """Check the checkpoints a check from event `from_sequence` relies on (the newest at or
        below it and every later one) and the events against them."""
        await self.follow()
        outside = await self.newest_outside()
        async with self._db.read() as session:
            head = await store.read_head(session)
            first, newest = await store.checkpoint_scope_bounds(session, from_sequence)
            # The newest ones here; the links of any older ones in the worker.
            in_process = max(first, newest - IN_PROCESS_CHECKPOINTS + 1)
            scope = await store.checkpoints_between(session, in_process, newest)
        invalid = None
        if first < in_process:
            # Up to and including the first one checked here, so the link between is checked.
            invalid = await self._links(first, in_process)
        if invalid is None and in_process == 1 and scope and scope[0].checkpoint_number != 1:
            # Checkpoint 1 is gone (its number is signed into every later one): older rows
            # deleted behind the service, from the start of the chain.
            invalid = (1, 1)
        if invalid is None:
            invalid = self._first_invalid(scope, outside)
        last_genuine = invalid[0] - 1 if invalid is not None else newest
        anchor = next((c for c in scope if c.checkpoint_number == last_genuine), None)
        if anchor is None and last_genuine >= first and last_genuine >= 1:
            async with self._db.read() as session:
                anchor = await store.checkpoint_by_number(session, last_genuine)
        if (
            outside is not None
            and self.verifier.genuine(outside)
            and (anchor is None or outside.checkpoint_number > anchor.checkpoint_number)
        ):
            anchor = outside
        findings: list[Finding] = []
        if invalid is not None:
            number, sequence = invalid
            findings.append(
                Finding(anchor, sequence, pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID, 0, number)
            )
        if anchor is not None and head.sequence_number < anchor.sequence_number:
            # The end was cut off and the head wound back below what was signed.
            findings.append(
                Finding(
                    anchor,
                    head.sequence_number + 1,
                    pb.CHAIN_BREAK_REASON_MISSING,
                    anchor.sequence_number,
                    anchor.checkpoint_number,
                )
            )
        rewritten = await self._rewritten(first, last_genuine, anchor)
        if rewritten is not None:
            findings.append(rewritten)
        if not findings:
            return Finding(anchor)
        # The earliest break; at one sequence number, what the events show before what the
        # checkpoints show.
        earliest = min(
            findings,
            key=lambda f: (f.break_at, f.reason == pb.CHAIN_BREAK_REASON_CHECKPOINT_INVALID),
        )
        return Finding(
            anchor,
            earliest.break_at,
            earliest.reason,
            earliest.missing_through,
            earliest.checkpoint_number,
        )

    def _first_invalid(
        self, scope: list[SignedCheckpoint], outside: SignedCheckpoint | None
    ) -> tuple[int, int] | None:
        """The first checkpoint in `scope` that is not genuine: (its number, its sequence
        number). Links between neighbours and the newest signature cover them all; a broken
        link is blamed on whichever of the two fails its own signature."""
        for before, after in itertools.pairwise(scope):
            if after.checkpoint_number != before.checkpoint_number + 1:
                return before.checkpoint_number + 1, before.sequence_number + 1
            if after.previous_digest != before.digest():
                bad = after if self.verifier.genuine(before) else before
                return bad.checkpoint_number, bad.sequence_number
        if scope and not self.verifier.genuine(scope[-1]):
            return scope[-1].checkpoint_number, scope[-1].sequence_number
        if outside is not None:
            if not self.verifier.genuine(outside):
                log.warning("the audit checkpoint log's last line fails its signature")
                return None
            if not scope or scope[-1].checkpoint_number < outside.checkpoint_number:
                # Signed, copied outside, and no longer in the database.
                return outside.checkpoint_number, outside.sequence_number
            stored = next(
                (c for c in scope if c.checkpoint_number == outside.checkpoint_number), None
            )
            # (An outside copy older than the scope was checked by an earlier pass.)
            if stored is not None and stored != outside:
                return outside.checkpoint_number, outside.sequence_number
        return None

    async def _rewritten(
        self, first: int, last: int, anchor: SignedCheckpoint | None
    ) -> Finding | None:
        """ALTERED (or MISSING) at the first event that no longer has the hash a checkpoint
        recorded; None when every checkpoint's event still has its hash. Checkpoints
        `first`..`last` are the genuine ones in scope."""
        async with self._db.read() as session:
            unmatched = await store.first_unmatched_checkpoint(session, first, last)
            if unmatched is None:
                if anchor is None or first <= anchor.checkpoint_number <= last:
                    return None
                # The anchor is known only outside the database.
                now = await store.hash_of(session, anchor.sequence_number)
                if now is None or now == anchor.hash:
                    return None  # gone: reported as MISSING by the caller
                newest_stored = await store.checkpoint_by_number(session, last)
                below = newest_stored.sequence_number + 1 if newest_stored else 1
                return Finding(
                    anchor, below, pb.CHAIN_BREAK_REASON_ALTERED, 0, anchor.checkpoint_number
                )
            # A rewrite changes every checkpoint's event from it on, so the first unmatched
            # checkpoint of all (not just those in scope) bounds it from above.
            earliest = await store.first_unmatched_checkpoint(session, 1, last)
            assert earliest is not None
            number = earliest[0]
            checkpoint = await store.checkpoint_by_number(session, number)
            assert checkpoint is not None
            before = await store.checkpoint_by_number(session, number - 1)
            prefixes = await store.event_prefixes(session, number)
            start = before.sequence_number + 1 if before is not None else 1
            located = await self._locate(session, checkpoint, start, prefixes)
        sequence, reason, through = located
        return Finding(anchor, sequence, reason, through, number)

    async def _locate(
        self, session: AsyncSession, checkpoint: SignedCheckpoint, start: int, prefixes: bytes
    ) -> tuple[int, int, int]:
        """The first event in `start`..checkpoint whose hash is not the one signed: (sequence,
        reason, last missing). Without trustworthy prefixes, the checkpoint's own event."""
        end = checkpoint.sequence_number
        trusted = (
            self.verifier.genuine(checkpoint)
            and events_digest(prefixes) == checkpoint.events_digest
            and len(prefixes) == (end - start + 1) * EVENT_PREFIX_BYTES
        )
        if not trusted:
            return end, pb.CHAIN_BREAK_REASON_ALTERED, 0
        expected = start
        while expected <= end:
            rows = await store.event_hashes(session, start=expected, end=end, limit=_LOCATE_CHUNK)
            for row in rows:
                number = int(row.sequence_number)
                if number != expected:
                    return expected, pb.CHAIN_BREAK_REASON_MISSING, number - 1
                offset = (number - start) * EVENT_PREFIX_BYTES
                if (
                    bytes(row.hash)[:EVENT_PREFIX_BYTES]
                    != prefixes[offset : offset + EVENT_PREFIX_BYTES]
                ):
                    return number, pb.CHAIN_BREAK_REASON_ALTERED, 0
                expected = number + 1
            if not rows:
                return expected, pb.CHAIN_BREAK_REASON_MISSING, end
        return end, pb.CHAIN_BREAK_REASON_ALTERED, 0


def _chain_broken(sequence_number: int, where: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the chain is broken at event {sequence_number} ({where}); it is not sealed",
        reason="CHAIN_BROKEN",
        metadata={"sequence_number": str(sequence_number)},
    )
