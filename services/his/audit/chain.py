"""The hash chain: what an event's hash covers, and how a run of stored events is checked.

`hash = SHA-256(deterministic encoding of the event with hash cleared)`: it covers every other
field, including the sequence number and the previous event's hash, so changing, removing or
reordering any stored event breaks the chain at that point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from his.audit.anchor import EVENT_PREFIX_BYTES
from his.audit.mapping import event_from_columns
from his.audit.v1 import audit_service_pb2 as pb

# The `previous_hash` of event 1.
GENESIS_HASH = bytes(32)


def event_hash(event: pb.AuditEvent) -> bytes:
    """The SHA-256 digest of the event's deterministic encoding with `hash` cleared."""
    unhashed = pb.AuditEvent()
    unhashed.CopyFrom(event)
    unhashed.ClearField("hash")
    return hashlib.sha256(unhashed.SerializeToString(deterministic=True)).digest()


def content_key(event: pb.AuditEvent) -> bytes:
    """What the writer said about an event, without what the server set: two writes of one event
    are the same write exactly when their keys are equal."""
    content = pb.AuditEvent()
    content.CopyFrom(event)
    for field in ("name", "record_time", "sequence_number", "previous_hash", "hash"):
        content.ClearField(field)
    content.agent.ClearField("service_account")
    # Stored times have microseconds; so must the comparison.
    content.event_time.nanos -= content.event_time.nanos % 1000
    return content.SerializeToString(deterministic=True)


@dataclass
class ChainCheck:
    """Walks stored rows in sequence order and remembers the first broken link.

    Feed rows with `check`; it stops accepting once a break is found. `finish` reports a missing
    tail (the range ends after the last row seen).
    """

    # The next sequence number expected.
    expected: int
    # The hash the next row's previous_hash must equal; None when it cannot be known (the row
    # before the range is itself missing).
    previous: bytes | None
    break_at: int = 0
    reason: int = pb.CHAIN_BREAK_REASON_UNSPECIFIED
    last_hash: bytes = b""
    # For MISSING: the last sequence number known to be missing (0: not known).
    missing_through: int = 0
    # When not None, the first `EVENT_PREFIX_BYTES` of each intact event's hash are appended
    # (what a signed checkpoint keeps of the events it covers).
    prefixes: bytearray | None = None

    @property
    def broken(self) -> bool:
        """True once a break has been found."""
        return self.break_at != 0

    def check(self, rows: Iterable[Any]) -> None:
        """Check the next rows (in sequence order, none skipped by the caller); a row is anything
        that gives its columns by name (a SQLAlchemy row mapping, an asyncpg record)."""
        for row in rows:
            if self.broken:
                return
            number = int(row["sequence_number"])
            if number != self.expected:
                self._break(self.expected, pb.CHAIN_BREAK_REASON_MISSING)
                self.missing_through = number - 1
                return
            stored = bytes(row["hash"])
            linked = self.previous is None or bytes(row["previous_hash"]) == self.previous
            if not linked or event_hash(event_from_columns(row)) != stored:
                self._break(number, pb.CHAIN_BREAK_REASON_ALTERED)
                return
            self.previous = stored
            self.last_hash = stored
            if self.prefixes is not None:
                self.prefixes += stored[:EVENT_PREFIX_BYTES]
            self.expected = number + 1

    def finish(self, end: int) -> None:
        """Report MISSING if the rows stopped before `end`."""
        if not self.broken and self.expected <= end:
            self._break(self.expected, pb.CHAIN_BREAK_REASON_MISSING)
            self.missing_through = end

    def missing(self, number: int) -> None:
        """Report event `number` (one the range depends on, e.g. the one before it) as missing."""
        self._break(number, pb.CHAIN_BREAK_REASON_MISSING)

    def _break(self, number: int, reason: int) -> None:
        self.break_at = number
        self.reason = reason
