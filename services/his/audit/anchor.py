"""Signed checkpoints of the chain: what is signed, with which key, and how one is verified.

The key is Ed25519, held in a file outside the database (HIS_AUDIT_CHECKPOINT_KEY_FILE): a
database superuser can delete or alter stored checkpoints but cannot sign a new one. Verifying
needs only the public key (`CheckpointVerifier`); the message layout is the contract's (see
ChainCheckpoint in audit_service.proto), so an auditor can check checkpoints without this code.
ADR 0006 gives the threat model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from his.base.env import ConfigError
from his.runtime.secret_files import write_once

_LABEL = b"his.audit.v1.ChainCheckpoint\x00"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The `previous_checkpoint_digest` of checkpoint 1.
NO_PREVIOUS = bytes(32)
# How much of each event's hash a checkpoint keeps to name the first event a rewrite changed.
# Detection rests on the full head hash; the prefixes only locate the change (2^128 work to
# hide a changed event behind its neighbour).
EVENT_PREFIX_BYTES = 16


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex characters of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SignedCheckpoint:
    """One checkpoint as signed and stored (without the event prefixes themselves)."""

    checkpoint_number: int
    sequence_number: int
    hash: bytes
    create_time: dt.datetime
    key_id: str
    previous_digest: bytes
    events_digest: bytes
    signature: bytes = b""

    def well_formed(self) -> bool:
        """Whether the fields fit the signed layout: numbers that fit 8 bytes (the table's CHECKs
        say so, but a superuser can drop those), digests of exactly 32 bytes (fixed widths are
        what keep neighbouring fields from running into each other), a key id under 64 KiB."""
        return (
            0 <= self.checkpoint_number < 2**63
            and 0 <= self.sequence_number < 2**63
            and all(len(d) == 32 for d in (self.hash, self.previous_digest, self.events_digest))
            and len(self.key_id.encode()) < 2**16
            and -(2**63) <= (self.create_time - _EPOCH) // dt.timedelta(microseconds=1) < 2**63
        )

    def message(self) -> bytes:
        """The exact bytes the signature covers (layout in the proto's ChainCheckpoint); only
        for a well-formed checkpoint."""
        micros = (self.create_time - _EPOCH) // dt.timedelta(microseconds=1)
        key = self.key_id.encode()
        return b"".join(
            (
                _LABEL,
                self.checkpoint_number.to_bytes(8, "big"),
                self.sequence_number.to_bytes(8, "big"),
                self.hash,
                micros.to_bytes(8, "big", signed=True),
                len(key).to_bytes(2, "big"),
                key,
                self.previous_digest,
                self.events_digest,
            )
        )

    def digest(self) -> bytes:
        """What the next checkpoint's `previous_digest` must be (for a malformed one, a digest
        no signed checkpoint can name)."""
        if not self.well_formed():
            return hashlib.sha256(b"malformed\0" + repr(self).encode()).digest()
        return hashlib.sha256(self.message() + self.signature).digest()


def events_digest(prefixes: bytes) -> bytes:
    """The `events_digest` of the concatenated event-hash prefixes a checkpoint covers."""
    return hashlib.sha256(prefixes).digest()


class CheckpointVerifier:
    """Verifies checkpoints with public keys only."""

    def __init__(self, public_keys: list[Ed25519PublicKey]) -> None:
        self._keys = {key_id(key): key for key in public_keys}

    def genuine(self, checkpoint: SignedCheckpoint) -> bool:
        """True when a known key signed exactly this checkpoint."""
        key = self._keys.get(checkpoint.key_id)
        if key is None or not checkpoint.well_formed():
            return False
        try:
            key.verify(checkpoint.signature, checkpoint.message())
        except InvalidSignature:
            return False
        return True


class CheckpointSigner:
    """Signs checkpoints with the service's private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, unsigned: SignedCheckpoint) -> SignedCheckpoint:
        """`unsigned` with its signature (its key id must be this signer's)."""
        assert unsigned.key_id == self.key_id
        signature = self._key.sign(unsigned.message())
        return SignedCheckpoint(**{**unsigned.__dict__, "signature": signature})

    def verifier(self) -> CheckpointVerifier:
        """A verifier holding this signer's public key only."""
        return CheckpointVerifier([self.public_key])


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM (PKCS#8) file at `path`; a ConfigError naming the
    file and what is wrong otherwise (the service must not start without it, see ADR 0006)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"HIS_AUDIT_CHECKPOINT_KEY_FILE: cannot read {path}: {error.strerror or error}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"HIS_AUDIT_CHECKPOINT_KEY_FILE: {path} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"HIS_AUDIT_CHECKPOINT_KEY_FILE: {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM (SubjectPublicKeyInfo) file at `path`."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def make_private_key_file(path: Path) -> None:
    """Create a new Ed25519 key at `path` (0600) unless one exists (local development only)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_once(path, pem)


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """The PEM of a public key, as auditors keep it."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
