"""Opaque page tokens: an encrypted cursor bound to the filters of the query that made it.

Cursors hold sort keys, which can be patient names, and tokens travel through client logs and
URLs; so a token is sealed with AES-256-GCM (the query's fingerprint as associated data), not just
signed. A token from another query, an altered token or random text is INVALID_ARGUMENT on
`page_token` — never a crash, never a page of someone else's filter.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from his.base.errors import InvalidArgument

_NONCE_BYTES = 12

A = TypeVar("A")
T = TypeVar("T")
R = TypeVar("R")
D = TypeVar("D")
TimeAndId = tuple[dt.datetime, uuid.UUID]
# A filtered list reads at most this many rows the caller may not see before ending a page.
SCAN_LIMIT = 1000


class PageTokens:
    """Seals and opens page tokens with a key derived from the server-side secret."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hashlib.sha256(b"his-page-token\0" + key).digest())

    def encode(self, cursor: dict[str, Any], *, query: str) -> str:
        """A token carrying `cursor` (JSON-able), valid only for the query fingerprint `query`."""
        nonce = os.urandom(_NONCE_BYTES)
        body = json.dumps(cursor, separators=(",", ":")).encode()
        sealed = self._aead.encrypt(nonce, body, _fingerprint(query))
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def decode(self, token: str, *, query: str, field: str = "page_token") -> Cursor | None:
        """The cursor of a token, None for an empty token, INVALID_ARGUMENT for anything else."""
        if not token:
            return None
        if len(token) > _MAX_TOKEN_CHARS:
            raise _not_a_token(field)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            body = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _fingerprint(query))
            values = json.loads(body)
        except (binascii.Error, ValueError, InvalidTag):
            raise _not_a_token(field) from None
        if not isinstance(values, dict):
            raise _not_a_token(field)
        return Cursor(values, field)

    def keyset(
        self, token: str, *, query: str, limit: int, after: Callable[[Cursor], A]
    ) -> Keyset[A]:
        """The keyset read for one page: `after` turns the token's cursor into the store's key.

        The token is opened here, before the caller reads anything, so a bad token is
        INVALID_ARGUMENT before any query runs.
        """
        cursor = self.decode(token, query=query)
        return Keyset(
            after=None if cursor is None else after(cursor),
            read_limit=limit + 1,
            _limit=limit,
            _query=query,
            _tokens=self,
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """The rows of one page and the token of the next ("" on the last page)."""

    rows: list[T]
    next_page_token: str


@dataclass(frozen=True)
class Keyset(Generic[A]):
    """One page's keyset read: read `read_limit` rows after `after`, then cut them with `page`.

    One row more than the page is read, so that a next page is announced only when it has rows.
    """

    after: A | None
    read_limit: int
    _limit: int
    _query: str
    _tokens: PageTokens

    @property
    def limit(self) -> int:
        """The page size."""
        return self._limit

    def page(self, rows: Sequence[T], cursor: Callable[[T], dict[str, Any]]) -> Page[T]:
        """The first `limit` rows, and a token after the last of them when more were read."""
        page = list(rows[: self._limit])
        if len(rows) <= self._limit:
            return Page(page, "")
        return Page(page, self.token(cursor(page[-1])))

    def token(self, values: dict[str, Any]) -> str:
        """A token for this query that resumes after the cursor `values`."""
        return self._tokens.encode(values, query=self._query)


async def visible_page(
    keyset: Keyset[TimeAndId],
    read: Callable[[TimeAndId | None, int], Awaitable[Sequence[R]]],
    decide: Callable[[Sequence[R]], Awaitable[list[tuple[R, D]]]],
    key: Callable[[R], TimeAndId],
) -> Page[tuple[R, D]]:
    """One page of the rows the caller may see, with each one's decision, for a list whose rows
    the policy filters one by one. `read(after, limit)` reads rows in (time, id) order after a
    key; `decide` keeps the visible ones; `key` is a row's (time, id).

    Hidden rows are passed over: reading goes on until one visible row beyond the page turns up
    (or the rows run out), so neither a short page nor a token hints at them; past SCAN_LIMIT
    hidden rows the page ends early, with a token to go on from the last row read."""
    visible: list[tuple[R, D]] = []
    scanned = 0
    resume_after: R | None = None
    after = keyset.after
    batch = max(keyset.read_limit, min(100, SCAN_LIMIT))
    while True:
        rows = await read(after, batch)
        visible += await decide(rows)
        scanned += len(rows)
        if len(visible) > keyset.limit or len(rows) < batch:
            break
        if scanned >= SCAN_LIMIT:
            resume_after = rows[-1]
            break
        after = key(rows[-1])
    page = keyset.page(visible, lambda item: time_and_id_values(*key(item[0])))
    if not page.next_page_token and resume_after is not None:
        return Page(page.rows, keyset.token(time_and_id_values(*key(resume_after))))
    return page


def time_and_id(cursor: Cursor) -> tuple[dt.datetime, uuid.UUID]:
    """The (time, id) key of a cursor made by `time_and_id_values`."""
    return cursor.time("t"), cursor.uuid("i")


def time_and_id_values(time: dt.datetime, ident: uuid.UUID) -> dict[str, Any]:
    """Cursor values for a (time, id) keyset."""
    return {"t": time.isoformat(), "i": str(ident)}


class Cursor:
    """A decoded cursor, read value by value with its type.

    A sealed token can only be made with the key, but a value of the wrong type or shape (a
    token of an older release, or one forged with a leaked key) must still be INVALID_ARGUMENT
    on the token, never reach the database or end as INTERNAL.
    """

    def __init__(self, values: dict[str, Any], field: str) -> None:
        self._values = values
        self._field = field

    def _get(self, key: str, kind: type) -> Any:
        value = self._values.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _not_a_token(self._field)
        return value

    def text(self, key: str) -> str:
        """A text value (no NUL, bounded length)."""
        value: str = self._get(key, str)
        if "\0" in value or len(value) > _MAX_TEXT_CHARS:
            raise _not_a_token(self._field)
        return value

    def uuid(self, key: str) -> uuid.UUID:
        """A UUID value."""
        try:
            return uuid.UUID(self._get(key, str))
        except ValueError:
            raise _not_a_token(self._field) from None

    def time(self, key: str) -> dt.datetime:
        """A timestamp with its time zone."""
        try:
            value = dt.datetime.fromisoformat(self._get(key, str))
        except ValueError:
            raise _not_a_token(self._field) from None
        if value.tzinfo is None:
            raise _not_a_token(self._field)
        return value

    def integer(self, key: str) -> int:
        """A signed 64-bit integer."""
        value: int = self._get(key, int)
        if not -(2**63) <= value < 2**63:
            raise _not_a_token(self._field)
        return value


# Tokens this service makes are far shorter; a longer one is not worth decrypting.
_MAX_TOKEN_CHARS = 4096
_MAX_TEXT_CHARS = 1024


def _not_a_token(field: str) -> InvalidArgument:
    return InvalidArgument.field(field, "is not a page token returned by this query")


def _fingerprint(query: str) -> bytes:
    return hashlib.sha256(query.encode()).digest()
