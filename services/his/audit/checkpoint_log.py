"""The copy of every signed checkpoint outside the database: one JSON line each, appended.

Someone who controls only the database can delete the newest checkpoints along with the events
they cover; the service then still knows the newest one from here (and from memory while it
runs). A replica appends the checkpoints it signs and those it follows from the other replicas
(anchoring.Anchors.follow). The file lives on the audit pod's own volume, which the database
superuser does not control; it is a second copy, not a ledger of its own: its lines are verified
by signature like the rows, so editing it gains nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
from pathlib import Path

from his.audit.anchor import SignedCheckpoint

log = logging.getLogger(__name__)

# How much of the end of the file is read to find the last line (a line is ~450 bytes).
_TAIL_BYTES = 8192


class CheckpointLog:
    """Appends checkpoints to a JSON-lines file and reads back the newest."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append_all(self, checkpoints: list[SignedCheckpoint]) -> None:
        """Append checkpoints in order (oldest first) with one flush to disk."""
        if not checkpoints:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = "".join(
            json.dumps(_to_json(checkpoint), separators=(",", ":")) + "\n"
            for checkpoint in checkpoints
        ).encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = 0
            while written < len(lines):  # a large write may be partial
                written += os.write(descriptor, lines[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def newest(self) -> SignedCheckpoint | None:
        """The last checkpoint in the file, None when there is none (or the last line is torn)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - _TAIL_BYTES))
                tail = handle.read()
        except FileNotFoundError:
            return None
        lines = [line for line in tail.splitlines() if line.strip()]
        if not lines:
            return None
        try:
            return checkpoint_from_json(json.loads(lines[-1]))
        except (ValueError, KeyError, TypeError):
            log.warning("the last line of the audit checkpoint log is unreadable")
            return None


def _to_json(checkpoint: SignedCheckpoint) -> dict[str, object]:
    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    return {
        "checkpoint_number": checkpoint.checkpoint_number,
        "sequence_number": checkpoint.sequence_number,
        "hash": b64(checkpoint.hash),
        "create_time": checkpoint.create_time.isoformat(),
        "key_id": checkpoint.key_id,
        "previous_checkpoint_digest": b64(checkpoint.previous_digest),
        "events_digest": b64(checkpoint.events_digest),
        "signature": b64(checkpoint.signature),
    }


def checkpoint_from_json(values: dict[str, object]) -> SignedCheckpoint:
    """A checkpoint from one line of the log (as `append` wrote it)."""

    def raw(key: str) -> bytes:
        return base64.b64decode(str(values[key]), validate=True)

    return SignedCheckpoint(
        checkpoint_number=int(str(values["checkpoint_number"])),
        sequence_number=int(str(values["sequence_number"])),
        hash=raw("hash"),
        create_time=dt.datetime.fromisoformat(str(values["create_time"])),
        key_id=str(values["key_id"]),
        previous_digest=raw("previous_checkpoint_digest"),
        events_digest=raw("events_digest"),
        signature=raw("signature"),
    )
