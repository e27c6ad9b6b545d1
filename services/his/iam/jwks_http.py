"""iam's keys over HTTP: the JWKS and the OIDC discovery document, for those who cannot call gRPC.

Istio's RequestAuthentication (istiod fetches `jwksUri`) and the local Envoy gateway's jwt_authn
read the key set here; the services keep asking GetJwks. Both come from the servicer's one token
issuer, so they always publish the same keys. Runs in the iam process beside its gRPC server
(ServiceSpec.companion) on `HIS_IAM_HTTP_PORT`; off with the local provider or port -1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from his.base.catalog import DISCOVERY_PATH, JWKS_PATH, lookup
from his.base.env import ConfigError
from his.iam.config import IamConfig
from his.iam.service import IamService
from his.iam.tokens import ALGORITHM
from his.runtime.documents_http import Document, DocumentServer
from his.runtime.server import ServiceResources

# Relying parties refetch within minutes: a new signing key is published (listed second) before
# it signs, so caches this short always know it by the time they see a token of it.
_CACHE = "public, max-age=300"


@dataclass(frozen=True)
class KeysHttpConfig:
    """Where the key documents are served and what URL they announce for the key set."""

    host: str
    # -1: not served. 0: any free port.
    port: int
    # The key set's URL as relying parties reach it (`jwks_uri` of the discovery document);
    # empty: the issuer's URL + JWKS_PATH.
    jwks_uri: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, host: str) -> KeysHttpConfig:
        """HIS_IAM_HTTP_PORT (default: the catalog's local port) and HIS_IAM_JWKS_URI."""
        default = lookup("iam").http_port
        raw = (env.get("HIS_IAM_HTTP_PORT") or "").strip()
        try:
            port = int(raw) if raw else (-1 if default is None else default)
        except ValueError:
            raise ConfigError(f"HIS_IAM_HTTP_PORT must be an integer, got {raw!r}") from None
        if not -1 <= port <= 65535:
            raise ConfigError("HIS_IAM_HTTP_PORT must be -1 (off), 0 (any) or a port")
        return cls(host=host, port=port, jwks_uri=(env.get("HIS_IAM_JWKS_URI") or "").strip())


def documents(iam: IamConfig, key_set: Mapping[str, object], jwks_uri: str) -> dict[str, Document]:
    """The documents by path: the key set and the discovery document pointing at it."""
    discovery = {
        "issuer": iam.issuer,
        "jwks_uri": jwks_uri or iam.issuer.rstrip("/") + JWKS_PATH,
        # Tokens are issued over gRPC (IssueToken, the patient sign-in rpcs), not by an OAuth
        # authorization endpoint; these members say how the tokens look for those who verify.
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "claims_supported": [
            "iss",
            "aud",
            "sub",
            "exp",
            "iat",
            "jti",
            "preferred_username",
            "roles",
            "departments",
        ],
    }
    return {
        JWKS_PATH: _json(key_set, "application/jwk-set+json"),
        DISCOVERY_PATH: _json(discovery, "application/json"),
    }


def _json(value: object, content_type: str) -> Document:
    return Document(
        json.dumps(value, separators=(",", ":")).encode(), content_type, cache_control=_CACHE
    )


async def serve(resources: ServiceResources, servicer: IamService) -> DocumentServer | None:
    """Start the key documents' server of the running iam (None: not served here), with the
    servicer's own settings and key set (no second read of either)."""
    http = KeysHttpConfig.from_env(resources.config.environment, host=resources.config.server.host)
    if servicer.issuer is None or http.port < 0:
        return None
    served = documents(servicer.config, servicer.issuer.jwks(), http.jwks_uri)
    return await DocumentServer(served.get, host=http.host, port=http.port, name="iam-keys").start()
