"""How a service is wired for security: where token keys come from and how it gets its own token."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from his.iam.v1 import iam_service_pb2 as iam_pb
from his.iam.v1 import iam_service_pb2_grpc as iam_grpc
from his.runtime.config import AuthConfig
from his.runtime.peer_identity import PeerBinding
from his.runtime.tokens import FetchJwks, jwks_from_file, jwks_from_url
from his_client.credentials import TokenSource, iam_login, token_file


def jwks_source(config: AuthConfig, iam: Callable[[], iam_grpc.IamServiceAsyncStub]) -> FetchJwks:
    """A JWKS file or URL when configured; otherwise the local iam service's GetJwks."""
    if config.jwks_file is not None:
        return jwks_from_file(config.jwks_file)
    if config.jwks_url is not None:
        return jwks_from_url(config.jwks_url)

    async def from_iam() -> Mapping[str, Any]:
        reply = await iam().GetJwks(iam_pb.GetJwksRequest(), timeout=3.0)
        return {
            "keys": [
                {"kty": k.kty, "kid": k.kid, "use": k.use, "alg": k.alg, "n": k.n, "e": k.e}
                for k in reply.keys
            ]
        }

    return from_iam


def own_token_source(
    config: AuthConfig, service: str, iam: Callable[[], iam_grpc.IamServiceAsyncStub]
) -> TokenSource | None:
    """This service's own token: a platform-provided file, else a login at the local iam with
    this service's own credential (good for no other service)."""
    if not config.enabled:
        return None
    if config.service_token_file is not None:
        return token_file(config.service_token_file)
    if config.service_credential:
        return iam_login(service, config.service_credential, iam)
    return None


def peer_binding(config: AuthConfig) -> PeerBinding | None:
    """The rule that service tokens come from their own workload's mTLS principal (in the mesh)."""
    if not config.enabled or not config.service_peer_prefix:
        return None
    return PeerBinding(config.service_peer_prefix)
