"""Access tokens of the local identity provider: RS256 JWTs and the key set that verifies them.

`kid` is the RFC 7638 thumbprint of the public key, so a key's id follows from the key itself and
every party computes the same one. `jwks()` is the published key set (RFC 7517); its format is
shared with the verifier side (`public_jwk`, `jwks`), which reads exactly these members.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from his.runtime.secret_files import write_once

ALGORITHM = "RS256"
_MIN_KEY_BITS = 2048


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of an RSA public key."""
    numbers = public_key.public_numbers()
    # The required members in lexicographic order, no white space (RFC 7638 section 3).
    canonical = json.dumps(
        {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """One public signing key as a JWK (RFC 7517/7518): kty, kid, use, alg, n, e."""
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "kid": thumbprint(public_key),
        "use": "sig",
        "alg": ALGORITHM,
        "n": _b64url_uint(numbers.n),
        "e": _b64url_uint(numbers.e),
    }


def jwks(public_keys: Iterable[rsa.RSAPublicKey]) -> dict[str, list[dict[str, str]]]:
    """A JSON Web Key Set of the given keys, in the given order (the signing key first)."""
    return {"keys": [public_jwk(key) for key in public_keys]}


@dataclass(frozen=True)
class IssuedToken:
    """A signed access token and its claims."""

    # The compact JWS; kept out of repr so it never reaches a log line by accident.
    token: str = field(repr=False)
    claims: dict[str, Any]

    @property
    def expires_at(self) -> int:
        """The `exp` claim, seconds since the epoch."""
        return int(self.claims["exp"])


class TokenIssuer:
    """Signs access tokens with the first key; publishes every key in the JWKS."""

    def __init__(
        self,
        keys: Sequence[rsa.RSAPrivateKey],
        *,
        issuer: str,
        audience: str,
        ttl_s: int,
    ) -> None:
        if not keys:
            raise ValueError("a token issuer needs at least one signing key")
        for key in keys:
            if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < _MIN_KEY_BITS:
                raise ValueError(f"signing keys must be RSA keys of at least {_MIN_KEY_BITS} bits")
        self._keys = tuple(keys)
        self._kid = thumbprint(self._keys[0].public_key())
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s

    @property
    def kid(self) -> str:
        """The key id of the signing key."""
        return self._kid

    def sign(
        self,
        subject: str,
        *,
        username: str,
        roles: Sequence[str],
        departments: Sequence[str] = (),
        now: float | None = None,
        ttl_s: int | None = None,
    ) -> IssuedToken:
        """A token for `subject` (`staff/{id}`, `services/{name}` or `patients/{id}`), valid for
        `ttl_s` (default: the issuer's TTL)."""
        issued_at = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "preferred_username": username,
            "roles": list(roles),
            "departments": list(departments),
            "iat": issued_at,
            "exp": issued_at + (self.ttl_s if ttl_s is None else ttl_s),
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self._keys[0], algorithm=ALGORITHM, headers={"kid": self._kid})
        return IssuedToken(token=token, claims=claims)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The published key set: the signing key first, then the retired ones."""
        return jwks(key.public_key() for key in self._keys)


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key from a PEM file."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return key


def development_key(path: Path) -> rsa.RSAPrivateKey:
    """The local development signing key at `path`, generated (mode 0600) on first use."""
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=_MIN_KEY_BITS)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_once(path, pem)  # a concurrent start-up may win: everyone loads the file
    return load_private_key(path)


def signing_keys(paths: Sequence[Path], generated: Path) -> list[rsa.RSAPrivateKey]:
    """The configured keys in order, or the development key when none is configured."""
    if paths:
        return [load_private_key(path) for path in paths]
    return [development_key(generated)]
