"""Idempotent creation: a request id replays the first result — to the same caller, for the same
request only (docs/adr/0003-layers.md, "Request ids").

A create stores its request id under a unique constraint (the insert does nothing on a conflict)
and, next to it, the fingerprint of the request and of who sent it. A replay with the same
fingerprint gets the first result; a different request, or the same one from another caller,
under a used id is refused: one caller's key never returns another's resource.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column
from sqlalchemy.dialects.postgresql import Insert

from his.base import identity
from his.base.errors import InvalidArgument

R = TypeVar("R")


def fingerprint(request: Message, caller: str) -> str:
    """A digest of everything in the request except its request id, and of the caller's subject."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    digest = hashlib.sha256(caller.encode())
    digest.update(b"\0")
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _stored(row: Any) -> str | None:
    return row.create_request_fingerprint  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RequestKey:
    """A create's request id (None: the call carried none) and the fingerprint a replay matches."""

    request_id: str | None
    fingerprint: str | None

    @classmethod
    def of(cls, request: Message, request_id: str | None) -> RequestKey:
        """The key of `request` sent by the caller being served (`request_id` validated)."""
        if request_id is None:
            return cls(None, None)
        caller = identity.current_or_none()
        return cls(request_id, fingerprint(request, caller.subject if caller else ""))

    @property
    def pair(self) -> tuple[str, str] | None:
        """(request id, fingerprint) for a store to write, None without a request id."""
        if self.request_id is None or self.fingerprint is None:
            return None
        return self.request_id, self.fingerprint

    def check(self, stored: str | None) -> None:
        """INVALID_ARGUMENT unless `stored` is this request's fingerprint."""
        if stored != self.fingerprint:
            raise InvalidArgument.field(
                "request_id", "was already used for a different request; use a new request id"
            )

    async def first(
        self,
        lookup: Callable[[str], Awaitable[R | None]],
        *,
        stored: Callable[[R], str | None] = _stored,
    ) -> R | None:
        """The first result of this request id (`lookup` reads it), checked to be this request's;
        None when the id is unused or the call carried none."""
        if self.request_id is None:
            return None
        row = await lookup(self.request_id)
        if row is not None:
            self.check(stored(row))
        return row

    async def create(
        self,
        insert: Callable[[], Awaitable[R | None]],
        lookup: Callable[[str], Awaitable[R | None]],
        *,
        stored: Callable[[R], str | None] = _stored,
    ) -> R:
        """`insert` (None when its request id was taken: see `skip_taken`), or else the first
        result of the request id, checked."""
        row = await insert()
        return row if row is not None else await self.taken(lookup, stored=stored)

    async def taken(
        self,
        lookup: Callable[[str], Awaitable[R | None]],
        *,
        stored: Callable[[R], str | None] = _stored,
    ) -> R:
        """The first result, checked, after an insert found the request id taken."""
        earlier = await self.first(lookup, stored=stored)
        if earlier is None:
            raise RuntimeError("the insert found its request id taken, but nothing holds it")
        return earlier


def skip_taken(statement: Insert, request_id: str | None, *key: Column[Any]) -> Insert:
    """`statement` doing nothing (returning no row) when `key` — the request id's unique
    constraint — is taken; unchanged for a create without a request id."""
    if request_id is None:
        return statement
    return statement.on_conflict_do_nothing(index_elements=list(key))
