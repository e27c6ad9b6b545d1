"""A test identity provider: real RS256 tokens and a JWKS file the servers under test trust.

Servers verify these tokens exactly as they verify iam's (the same verifier, a file key source),
so tests can be any staff member or service without running iam.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from his.iam.tokens import thumbprint

ISSUER_URL = "https://iam.his.test"
AUDIENCE = "his"


class Issuer:
    """Mints tokens for staff and services; writes the JWKS and per-service token files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # The same key id iam gives its keys, so an iam signing with this key (the session's iam
        # service) issues tokens every server of the session trusts.
        self.kid = thumbprint(self._key.public_key())
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        self.jwks_path = directory / "jwks.json"
        self.jwks_path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
        self.signing_key_path = directory / "signing-key.pem"
        self.signing_key_path.write_bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    @property
    def env(self) -> dict[str, str]:
        """HIS_AUTH_* settings that make a server trust this issuer."""
        return {
            "HIS_AUTH_JWKS_FILE": str(self.jwks_path),
            "HIS_AUTH_ISSUER": ISSUER_URL,
            "HIS_AUTH_AUDIENCE": AUDIENCE,
        }

    def service_env(self, service: str) -> dict[str, str]:
        """The settings of a service under test: trust this issuer, speak with its own token."""
        path = self.directory / f"{service}.token"
        path.write_text(self.service(service, ttl_s=24 * 3600), encoding="utf-8")
        return {**self.env, "HIS_SERVICE_TOKEN_FILE": str(path)}

    def token(
        self,
        subject: str,
        roles: tuple[str, ...],
        *,
        departments: tuple[str, ...] = (),
        username: str | None = None,
        ttl_s: float = 3600,
        issuer: str = ISSUER_URL,
        audience: str = AUDIENCE,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A signed token with the claims iam puts in its tokens."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "preferred_username": username or subject.rsplit("/", 1)[-1],
            "roles": list(roles),
            "departments": list(departments),
            "iat": now,
            "exp": now + int(ttl_s),
            "jti": str(uuid.uuid4()),
            **(extra or {}),
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def staff(
        self, *roles: str, departments: tuple[str, ...] = (), staff_id: str | None = None
    ) -> str:
        """A staff member's token (a new staff id unless one is given)."""
        return self.token(f"staff/{staff_id or uuid.uuid4()}", roles, departments=departments)

    def service(self, name: str, *, ttl_s: float = 3600) -> str:
        """A HIS service's own token."""
        return self.token(f"services/{name}", ("SERVICE",), username=name, ttl_s=ttl_s)


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]


class BearerInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds a default token to calls that do not bring their own `authorization`."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        existing = list(client_call_details.metadata or ())
        if not any(key == "authorization" for key, _ in existing):
            existing.append(("authorization", f"Bearer {self._token}"))
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout,
            metadata=grpc.aio.Metadata(*existing),
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def channel_as(address: str, token: str, **options: Any) -> grpc.aio.Channel:
    """A channel whose calls carry `token` unless they set their own."""
    return grpc.aio.insecure_channel(address, interceptors=[BearerInterceptor(token)], **options)


def _session_issuer() -> Issuer:
    directory = Path(tempfile.mkdtemp(prefix="his-issuer-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return Issuer(directory)


# The one test identity provider of a test session: every server under test trusts it.
ISSUER = _session_issuer()
# A registrar: demographics and scheduling, the default caller of the session's channels.
REGISTRAR = ISSUER.staff("REGISTRAR")
# The administrator who loads the demo staff in tests (same request ids, same caller: one set of
# demo departments and staff whichever test loads them first).
DEMO_ADMINISTRATOR = ISSUER.staff("ADMINISTRATOR")


def registrar_channel(address: str, **options: Any) -> grpc.aio.Channel:
    """A channel calling as the session's registrar unless a call sets its own token."""
    return channel_as(address, REGISTRAR, **options)
