"""Opaque page tokens: an encrypted cursor bound to the filters of the query that made it.

Cursors hold sort keys, which can be patient names, and tokens travel through client logs and
URLs; so a token is sealed with AES-256-GCM (the query's fingerprint as associated data), not just
signed. A token from another query, an altered token or random text is INVALID_ARGUMENT on
`page_token` — never a crash, never a page of someone else's filter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from his.runtime.errors import InvalidArgument

_NONCE_BYTES = 12


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

    def decode(self, token: str, *, query: str, field: str = "page_token") -> dict[str, Any] | None:
        """The cursor of a token, None for an empty token, INVALID_ARGUMENT for anything else."""
        if not token:
            return None
        bad = InvalidArgument.field(field, "is not a page token returned by this query")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            body = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _fingerprint(query))
        except (binascii.Error, ValueError, InvalidTag):
            raise bad from None
        cursor = json.loads(body)
        if not isinstance(cursor, dict):
            raise bad
        return cursor


def _fingerprint(query: str) -> bytes:
    return hashlib.sha256(query.encode()).digest()
