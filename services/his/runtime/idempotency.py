"""Idempotent creation: a request id replays the first result — for the same request only.

A create stores the fingerprint of its request next to its request id (both under a unique
constraint's protection). A replay with the same fingerprint gets the first result; a different
request under a reused id is refused, so one client's key can never return another's patient.
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message

from his.base.errors import InvalidArgument


def fingerprint(request: Message) -> str:
    """A digest of everything in the request except its request id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def check_replay(stored: str | None, request: Message) -> None:
    """INVALID_ARGUMENT unless `request` is the request that first used its request id."""
    if stored != fingerprint(request):
        raise InvalidArgument.field(
            "request_id", "was already used for a different request; use a new request id"
        )
