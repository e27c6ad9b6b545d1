"""Opaque page tokens: a signed cursor bound to the filters of the query that made it.

A token from another query, an altered token or random text is INVALID_ARGUMENT on `page_token`,
never a crash and never a page of someone else's filter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from his.runtime.errors import InvalidArgument

_MAC_BYTES = 16


class PageTokens:
    """Encodes and checks page tokens with a server-side key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encode(self, cursor: dict[str, Any], *, query: str) -> str:
        """A token carrying `cursor` (JSON-able) for the query fingerprint `query`."""
        body = json.dumps({"c": cursor, "q": _fingerprint(query)}, separators=(",", ":")).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def decode(self, token: str, *, query: str, field: str = "page_token") -> dict[str, Any] | None:
        """The cursor of a token, None for an empty token, INVALID_ARGUMENT for anything else."""
        if not token:
            return None
        bad = InvalidArgument.field(field, "is not a page token returned by this query")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise bad from None
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise bad
        payload = json.loads(body)
        if payload.get("q") != _fingerprint(query) or not isinstance(payload.get("c"), dict):
            raise bad
        cursor: dict[str, Any] = payload["c"]
        return cursor


def _fingerprint(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]
