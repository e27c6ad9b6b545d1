"""Known development credentials, derived from the local development seed (`his up` only).

`HIS_IAM_DEV_CREDENTIAL` (made once per data directory by his.local_secrets; refused with
HIS_MESH=istio) seeds the bootstrap administrator's password and TOTP secret, and the passwords
`his up --demo` enrols the demo staff with, so the local tools can compute them. Every person's
differs; each is a keyed hash of the seed and the username.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pyotp


def password(seed: str, username: str) -> str:
    """The development password of `username` (24 URL-safe characters)."""
    digest = hmac.new(seed.encode(), b"password\0" + username.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:24]


def totp_secret(seed: str, username: str) -> str:
    """The development TOTP secret of `username` (base32, 160 bits)."""
    digest = hmac.new(seed.encode(), b"totp\0" + username.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:20]).decode()


def totp_code(secret: str) -> str:
    """The TOTP code of `secret` now (what an authenticator app shows)."""
    return pyotp.TOTP(secret).now()
