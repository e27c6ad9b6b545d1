"""The checkpoint of incremental VerifyChain: how far the chain was last found intact.

Trust model. The checkpoint lives in the audit database, next to the events it vouches for, so
someone with database access can write it. It is therefore a claim signed by the service:
HMAC-SHA256 over (sequence number, hash, time) under a key derived from the service's page-token
key, which lives in the service's secrets, not in the database. With database access alone one
can
- forge or advance it: the signature fails, the service ignores it (logs a warning) and the next
  incremental check starts at the first event;
- delete its signature or put back an older signed one: the next check starts earlier and does
  more work, never less;
- change events at or before it: an incremental check does not read them (that is its point),
  but the event after the checkpoint must still link to the signed hash, and a full pass (which
  never trusts the checkpoint) names the first changed or missing event.
Someone holding both the database and the service's secrets can forge a checkpoint; against that,
only a full pass, or a VerifyChain `end_hash` recorded outside the system, helps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from his.audit.chain import GENESIS_HASH

# Keeps this key apart from every other use of the page-token key.
_KEY_LABEL = b"his.audit.v1 verify-checkpoint"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Checkpoint:
    """Events 1..sequence_number were found intact; the last of them hashes to `hash`."""

    sequence_number: int
    hash: bytes
    verified_at: dt.datetime | None = None

    @property
    def empty(self) -> bool:
        """True when nothing is vouched for (start at the first event)."""
        return self.sequence_number == 0


NOTHING_VERIFIED = Checkpoint(0, GENESIS_HASH)


@dataclass(frozen=True)
class StoredCheckpoint:
    """The checkpoint row exactly as stored (compared as is when a check moves it)."""

    sequence_number: int
    hash: bytes
    verified_at: dt.datetime | None
    mac: bytes

    @classmethod
    def of(cls, row: Any) -> StoredCheckpoint:
        """From a row of `audit.verify_checkpoint`."""
        return cls(int(row.sequence_number), bytes(row.hash), row.verified_at, bytes(row.mac))


class CheckpointSigner:
    """Signs checkpoints and accepts only those it signed."""

    def __init__(self, service_key: bytes) -> None:
        self._key = hmac.new(service_key, _KEY_LABEL, hashlib.sha256).digest()

    def sign(self, checkpoint: Checkpoint) -> bytes:
        """The checkpoint's MAC."""
        assert checkpoint.verified_at is not None  # a signed checkpoint says when
        micros = (checkpoint.verified_at - _EPOCH) // dt.timedelta(microseconds=1)
        message = (
            checkpoint.sequence_number.to_bytes(8, "big")
            + checkpoint.hash
            + micros.to_bytes(8, "big", signed=True)
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def trusted(self, stored: StoredCheckpoint) -> Checkpoint | None:
        """The stored checkpoint if its MAC is ours; None if it is unsigned or forged."""
        if not stored.mac or stored.verified_at is None:
            return None
        checkpoint = Checkpoint(stored.sequence_number, stored.hash, stored.verified_at)
        return checkpoint if hmac.compare_digest(self.sign(checkpoint), stored.mac) else None
