"""The authentication interceptor: every call names its caller with a verified bearer token.

`authorization: Bearer <token>` is the person (or a service acting on its own). A service that
relays a person's call adds its own token as `x-his-caller: Bearer <token>`, so the next service
knows both who asks and through whom. The verified `Principal` is put in context for the call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from his.base import identity
from his.base.errors import Unauthenticated
from his.runtime.interceptors import Behavior, Handler, WrappingInterceptor, wrap_unary
from his.runtime.peer_identity import PeerBinding
from his.runtime.tokens import TokenVerifier
from his_client.credentials import AUTHORIZATION, CALLER, IAM_PUBLIC_METHODS

# Calls anyone may make: probes, reflection, and the identity provider's own doors (staff and
# service login, patient sign-in; each limits its own abuse).
PUBLIC_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        *IAM_PUBLIC_METHODS,
    }
)


def bearer(metadata: Any, key: str) -> str | None:
    """The token of a `Bearer` header in call metadata, None when the header is absent."""
    for name, value in metadata or ():
        if name == key:
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    f"{key} metadata must be 'Bearer <token>'", reason="INVALID_TOKEN"
                )
            return token.strip()
    return None


class AuthenticationInterceptor(WrappingInterceptor):
    """Verifies the bearer token(s) of each unary call and sets `identity.current()`."""

    def __init__(
        self,
        verifier: TokenVerifier,
        public: frozenset[str] = PUBLIC_METHODS,
        *,
        peers: PeerBinding | None = None,
    ) -> None:
        super().__init__()
        self._verifier = verifier
        self._public = public
        # In the mesh: a service token counts only from that service's own mTLS principal.
        self._peers = peers

    def wrap_handler(self, handler: Handler | None, method: str) -> Handler | None:
        if method in self._public:
            return handler
        verifier = self._verifier
        peers = self._peers

        def wrap(inner: Behavior) -> Behavior:
            async def authenticated(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                metadata = context.invocation_metadata()
                token = bearer(metadata, AUTHORIZATION)
                if token is None:
                    raise Unauthenticated(
                        "this call needs 'authorization: Bearer <token>' metadata",
                        reason="MISSING_CREDENTIALS",
                    )
                principal = await verifier.verify(token)
                if peers is not None and principal.is_service:
                    peers.require(metadata, principal.service_name, "the token")
                relay_token = bearer(metadata, CALLER)
                if relay_token is not None:
                    relay = await verifier.verify(relay_token)
                    if not relay.is_service:
                        raise Unauthenticated(
                            f"{CALLER} must carry a service token", reason="INVALID_TOKEN"
                        )
                    if peers is not None:
                        peers.require(metadata, relay.service_name, f"the {CALLER} token")
                    principal = dataclasses.replace(principal, via_service=relay.service_name)
                entered = identity.enter(principal, method)
                try:
                    return await inner(request, context)
                finally:
                    identity.leave(entered)

            return authenticated

        return wrap_unary(handler, wrap)
