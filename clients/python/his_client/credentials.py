"""Who an outbound call speaks for: the person being served, or this process itself.

Inside a server, a call made while serving a staff member's call carries that person's token as
`authorization` and this service's own token as `x-his-caller`, so the next service authorizes
the person and audits both. Otherwise (background work, audit batches, a CLI) the call carries
this process's own token. A token source is any `async () -> str`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from his.base import identity
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his_client.call_details import with_metadata

AUTHORIZATION = "authorization"
CALLER = "x-his-caller"

TokenSource = Callable[[], Awaitable[str]]

# Renew a service token this long before it expires, so no call leaves with a dying token.
RENEW_BEFORE_S = 60.0


def static_token(token: str) -> TokenSource:
    """A fixed token: a person's token in a CLI or test, or one handed in by the platform."""

    async def source() -> str:
        return token

    return source


def token_file(path: Path, *, recheck_s: float = 5.0) -> TokenSource:
    """A token file the platform keeps fresh (a Kubernetes projected token): re-read when it
    changed, looking at most every `recheck_s` (platforms renew long before expiry)."""
    state: dict[str, Any] = {"mtime": None, "token": "", "checked": float("-inf")}

    async def source() -> str:
        now = time.monotonic()
        if now - state["checked"] >= recheck_s:
            mtime = (await asyncio.to_thread(os.stat, path)).st_mtime_ns
            if mtime != state["mtime"]:
                text = await asyncio.to_thread(path.read_text, encoding="utf-8")
                state["mtime"], state["token"] = mtime, text.strip()
            state["checked"] = now
        return str(state["token"])

    return source


def service_credential(key: bytes, service: str) -> str:
    """The local identity provider's credential for `service`: HMAC-SHA256(key, name), hex.

    Only iam holds `key`; each service is handed its own result, from which neither the key nor
    another service's credential can be computed."""
    return hmac.new(key, service.encode(), hashlib.sha256).hexdigest()


def iam_login(
    service: str, credential: str, iam: Callable[[], iam_grpc.IamServiceAsyncStub]
) -> TokenSource:
    """This service's token from the local iam (`IssueToken` as `service:<name>` with the
    service's own credential, `service_credential(key, name)` handed to it), kept fresh."""
    lock = asyncio.Lock()
    state: dict[str, Any] = {"token": "", "renew_at": 0.0}

    async def source() -> str:
        if time.time() < state["renew_at"]:
            return str(state["token"])
        async with lock:
            if time.time() >= state["renew_at"]:
                reply = await iam().IssueToken(
                    iam_pb.IssueTokenRequest(username=f"service:{service}", credential=credential),
                    timeout=5.0,
                )
                expires = reply.expire_time.ToSeconds()
                state["token"] = reply.access_token
                state["renew_at"] = max(time.time(), expires - RENEW_BEFORE_S)
            return str(state["token"])

    return source


class IdentityInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `authorization` (and `x-his-caller` when relaying a person) to every outbound call."""

    def __init__(self, own_token: TokenSource | None) -> None:
        self._own_token = own_token

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        # IssueToken, staff enrolment, patient sign-in and GetJwks are public; asking for a
        # token must not need one.
        if client_call_details.method in _PUBLIC:
            return await continuation(client_call_details, request)
        added: list[tuple[str, str]] = []
        person = identity.current_or_none()
        # A staff member's or a signed-in patient's call is relayed as that person (the next
        # service authorizes them, and audits both); a service's own call speaks as this one.
        if person is not None and (person.is_staff or person.is_patient) and person.token:
            added.append((AUTHORIZATION, f"Bearer {person.token}"))
            if self._own_token is not None:
                added.append((CALLER, f"Bearer {await self._own_token()}"))
        elif self._own_token is not None:
            added.append((AUTHORIZATION, f"Bearer {await self._own_token()}"))
        details = with_metadata(client_call_details, (AUTHORIZATION, CALLER), added)
        return await continuation(details, request)


# The identity provider's own doors: asking for a token needs none (the servers' authentication
# lets the same rpcs through: his.runtime.authn.PUBLIC_METHODS).
IAM_PUBLIC_METHODS = (
    "/his.iam.v1.IamService/IssueToken",
    "/his.iam.v1.IamService/CompleteStaffEnrolment",
    "/his.iam.v1.IamService/StartPatientSignIn",
    "/his.iam.v1.IamService/CompletePatientSignIn",
    "/his.iam.v1.IamService/GetJwks",
)
_PUBLIC = frozenset((*IAM_PUBLIC_METHODS, *(method.encode() for method in IAM_PUBLIC_METHODS)))
