"""Bearer token verification: RS256 JWTs against the identity provider's key set (JWKS).

Keys come from a JWKS file, a JWKS URL (an external identity provider) or the local iam service.
A token naming an unknown key id makes the key set be fetched again (after a successful fetch, at
most every `jwks_refresh_s`), which is how key rotation reaches every service without a restart.
A failed fetch is not throttled: the next call tries again, so a service that started before its
identity provider recovers as soon as the provider answers (calls meanwhile get UNAVAILABLE).
Verified tokens are cached until they expire, so a busy caller costs one signature check per token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import jwt

from his.base.errors import Unauthenticated, Unavailable
from his.base.identity import PATIENT_ROLE, SERVICE_ROLE, Principal
from his.runtime.config import AuthConfig

log = logging.getLogger(__name__)

# Fetches a JWKS document ({"keys": [...]}) from wherever this deployment keeps it.
FetchJwks = Callable[[], Awaitable[Mapping[str, Any]]]

_CACHE_LIMIT = 10_000
_SUBJECT_PREFIXES = ("staff/", "services/", "patients/")


def _invalid(why: str) -> Unauthenticated:
    # The message names the problem, never the token or its claims.
    return Unauthenticated(f"invalid bearer token: {why}", reason="INVALID_TOKEN")


def jwks_from_file(path: Path) -> FetchJwks:
    """Key set source: a JWKS file (mounted from a ConfigMap or written by tests)."""

    async def fetch() -> Mapping[str, Any]:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        return dict(json.loads(text))

    return fetch


def jwks_from_url(url: str, timeout_s: float = 5.0) -> FetchJwks:
    """Key set source: an external identity provider's JWKS endpoint."""

    def get() -> Mapping[str, Any]:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (configured URL)
            return dict(json.loads(response.read()))

    async def fetch() -> Mapping[str, Any]:
        return await asyncio.to_thread(get)

    return fetch


class TokenVerifier:
    """Turns a bearer token into a `Principal`, or refuses it with UNAUTHENTICATED."""

    def __init__(self, config: AuthConfig, fetch_jwks: FetchJwks) -> None:
        self._config = config
        self._fetch = fetch_jwks
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._fetch_lock = asyncio.Lock()
        # token → (principal, key id that verified it)
        self._verified: dict[str, tuple[Principal, str]] = {}

    async def verify(self, token: str) -> Principal:
        """The principal a token proves; UNAUTHENTICATED when it proves nothing."""
        now = time.time()
        await self._refresh_if_stale()
        cached = self._verified.get(token)
        if cached is not None:
            known, known_kid = cached
            # A key withdrawn from the key set takes its tokens with it, cached or not.
            if known.expires_at + self._config.leeway_s > now and known_kid in self._keys:
                return known
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("not a JWT") from None
        if header.get("alg") != "RS256":
            raise _invalid("signature algorithm must be RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("no key id")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=["RS256"],
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_s,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("bearer token expired", reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError as error:
            raise _invalid(type(error).__name__) from None
        principal = _principal(claims, token)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified = {t: e for t, e in self._verified.items() if e[0].expires_at > now}
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
        self._verified[token] = (principal, kid)
        return principal

    async def _refresh_if_stale(self) -> None:
        """Fetch the key set again once it is older than `jwks_max_age_s`, so a key the provider
        withdrew stops verifying tokens; if the provider cannot be reached, keep the keys."""
        if not self._keys or time.monotonic() - self._fetched_at < self._config.jwks_max_age_s:
            return
        async with self._fetch_lock:
            if time.monotonic() - self._fetched_at < self._config.jwks_max_age_s:
                return
            try:
                await self._refresh()
            except Unavailable:
                # Try again in a while rather than on every call.
                self._fetched_at = time.monotonic() - self._config.jwks_max_age_s / 2

    async def _key(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._fetch_lock:
            key = self._keys.get(kid)
            if key is None and time.monotonic() - self._fetched_at >= self._config.jwks_refresh_s:
                await self._refresh()
                key = self._keys.get(kid)
        if key is None:
            raise _invalid("signed by an unknown key")
        return key

    async def _refresh(self) -> None:
        try:
            document = await self._fetch()
        except Exception as error:
            # Without keys nothing can be verified; the caller may retry, so not UNAUTHENTICATED.
            log.warning("token keys unavailable", extra={"fields": {"error": type(error).__name__}})
            raise Unavailable(
                "token verification keys are unavailable", reason="AUTH_KEYS_UNAVAILABLE"
            ) from None
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", ()):
            try:
                parsed = jwt.PyJWK(dict(entry))
            except jwt.PyJWTError:
                continue  # a key we cannot use (another algorithm) must not hide the others
            if parsed.key_id:
                keys[parsed.key_id] = parsed
        self._keys = keys
        self._fetched_at = time.monotonic()


def _principal(claims: Mapping[str, Any], token: str) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.startswith(_SUBJECT_PREFIXES):
        raise _invalid("subject is neither staff, a patient nor a service")
    roles = claims.get("roles", [])
    departments = claims.get("departments", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _invalid("roles must be a list of names")
    if not isinstance(departments, list) or not all(isinstance(d, str) for d in departments):
        raise _invalid("departments must be a list of names")
    # A service is exactly SERVICE, and a person never is: a token mixing them (a misissued or
    # forged one) must not borrow the other kind's permissions.
    if subject.startswith("services/") != (set(roles) == {SERVICE_ROLE}):
        raise _invalid("roles do not fit the subject (services carry exactly SERVICE)")
    # Likewise a patient is exactly PATIENT and nobody else ever is: a staff member holding
    # PATIENT, or a patient holding a staff role, would mix a patient's own-record permissions
    # with staff ones. A patient belongs to no department.
    if subject.startswith("patients/") != (PATIENT_ROLE in roles):
        raise _invalid("roles do not fit the subject (patients carry exactly PATIENT)")
    if subject.startswith("patients/") and (set(roles) != {PATIENT_ROLE} or departments):
        raise _invalid("roles do not fit the subject (patients carry exactly PATIENT)")
    username = claims.get("preferred_username")
    return Principal(
        subject=subject,
        username=username if isinstance(username, str) else subject,
        roles=frozenset(roles),
        departments=frozenset(departments),
        token_id=str(claims.get("jti", "")),
        expires_at=float(claims["exp"]),
        token=token,
    )
