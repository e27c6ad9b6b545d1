"""Keyed pseudonyms of patients for de-identified research exports.

A pseudonym is HMAC-SHA256(research pseudonym key, "patients/{id}") in lower-case base32, cut to
20 characters (100 bits). Every service that exports research data makes it with the same key, so
an export's tables join on it; without the key it cannot be turned back into the patient, and a
new key gives every patient a new, unlinkable pseudonym.

The key comes from `HIS_RESEARCH_PSEUDONYM_KEY` (base64, 32 bytes). Locally, when it is unset, a
key is generated once into `<HIS_DATA_DIR>/secrets/research.json` (0600) and reused; inside the
mesh (`HIS_MESH=istio`) an unset key is a configuration error of the services that export.

Nothing here logs or puts into an exception message a key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from his.base.env import ConfigError
from his.runtime.secret_files import json_once

KEY_BYTES = 32
PSEUDONYM_CHARS = 20
KEY_VARIABLE = "HIS_RESEARCH_PSEUDONYM_KEY"
DEV_KEY_FILE = "research.json"


@dataclass(frozen=True)
class ResearchConfig:
    """The research pseudonym key (`HIS_RESEARCH_PSEUDONYM_KEY`), or where a local one is kept."""

    # The configured key; empty means the development key in `dev_key_file`.
    pseudonym_key: bytes = field(default=b"", repr=False)
    # Where a development key is generated once; None where one must be configured (the mesh).
    dev_key_file: Path | None = Path(".his") / "secrets" / DEV_KEY_FILE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ResearchConfig:
        """Read HIS_RESEARCH_PSEUDONYM_KEY (HIS_DATA_DIR and HIS_MESH when it is unset).

        A missing key in the mesh is reported when a service builds its `Pseudonyms`, so that
        services exporting no research data do not need the key.
        """
        raw = env.get(KEY_VARIABLE) or ""
        if raw:
            return cls(pseudonym_key=decode_key(raw, KEY_VARIABLE), dev_key_file=None)
        if env.get("HIS_MESH") == "istio":
            return cls(dev_key_file=None)
        data_dir = Path(env.get("HIS_DATA_DIR") or ".his")
        return cls(dev_key_file=data_dir / "secrets" / DEV_KEY_FILE)


def decode_key(encoded: str, what: str) -> bytes:
    """A 32-byte key from (standard or URL-safe) base64; errors name `what`, never the value."""
    text = encoded.strip()
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            padded = text + "=" * (-len(text) % 4)
            key = base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{what} is not base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{what} must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def load_dev_key(path: Path) -> bytes:
    """The development key in `path`, created (0600) on first use; safe for racing processes.

    The file is written under a temporary name and hard-linked into place, so a reader never sees
    half a file and two services starting together (patient and scheduling) end up with one key.
    """
    document = json_once(
        path,
        lambda: {
            "pseudonym_key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode(),
            "create_time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return decode_key(str(document["pseudonym_key"]), f"{path} pseudonym_key")


class Pseudonyms:
    """Makes the pseudonyms of patients under one research key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"the research pseudonym key must be {KEY_BYTES} bytes")
        self._key = key
        # Names the key without revealing it: the same on every service holding the same key.
        self.key_id = hmac.new(key, b"his-research-key-id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_config(cls, config: ResearchConfig) -> Pseudonyms:
        """The configured key, or the local development key when none is configured."""
        if config.pseudonym_key:
            return cls(config.pseudonym_key)
        if config.dev_key_file is None:
            raise ConfigError(f"{KEY_VARIABLE} is required with HIS_MESH=istio")
        return cls(load_dev_key(config.dev_key_file))

    def __repr__(self) -> str:
        return f"Pseudonyms(key_id={self.key_id!r})"

    def patient(self, patient_id: uuid.UUID | str) -> str:
        """The pseudonym of `patients/{patient_id}`."""
        return pseudonym(self._key, f"patients/{patient_id}")


def pseudonym(key: bytes, name: str) -> str:
    """The first 20 characters of the lower-case, unpadded base32 HMAC-SHA256 of `name`."""
    digest = hmac.new(key, name.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:PSEUDONYM_CHARS]
