"""How this process calls other services: addresses, mesh mode, deadlines, retries, breakers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from his.base.catalog import CATALOG, lookup
from his.base.env import choice, integer, number


@dataclass(frozen=True)
class ClientConfig:
    """How this process calls other services (the `his_client` SDK)."""

    # service name → host:port. Locally the catalog's ports; in Kubernetes `HIS_<SERVICE>_ADDR`
    # such as `patient.his.svc.cluster.local:50051`.
    addresses: Mapping[str, str] = field(default_factory=dict)
    # "none": the SDK retries idempotent calls itself; "istio": the mesh retries, never the SDK.
    mesh: str = "none"
    # Deadline of a call when the caller gives none (inside a server: never past the caller's own).
    default_timeout_s: float = 5.0
    # Attempts in all (first try + retries) for idempotent calls failing with UNAVAILABLE.
    max_attempts: int = 3
    # Full-jitter exponential backoff between attempts: random in [0, min(cap, base * 2^n)].
    backoff_base_s: float = 0.05
    backoff_max_s: float = 1.0
    # Circuit breaker per upstream: opens after this many consecutive failures ...
    breaker_fail_max: int = 5
    # ... and lets a trial call through after this many seconds.
    breaker_reset_s: float = 10.0

    @property
    def retries_enabled(self) -> bool:
        """Client retries are off inside the mesh: it retries once per call, never both."""
        return self.mesh != "istio" and self.max_attempts > 1

    def address(self, service: str) -> str:
        """Where `service` listens."""
        return self.addresses.get(service) or f"localhost:{lookup(service).port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientConfig:
        """Read HIS_MESH, HIS_<SERVICE>_ADDR and the HIS_CLIENT_* settings."""
        return cls(
            addresses={
                entry.name: env.get(f"HIS_{entry.name.upper()}_ADDR") or f"localhost:{entry.port}"
                for entry in CATALOG
            },
            mesh=choice(env, "HIS_MESH", "none", ("none", "istio")),
            default_timeout_s=number(env, "HIS_CLIENT_TIMEOUT_S", 5.0),
            max_attempts=integer(env, "HIS_CLIENT_MAX_ATTEMPTS", 3, minimum=1),
            backoff_base_s=number(env, "HIS_CLIENT_BACKOFF_BASE_S", 0.05),
            backoff_max_s=number(env, "HIS_CLIENT_BACKOFF_MAX_S", 1.0),
            breaker_fail_max=integer(env, "HIS_CLIENT_BREAKER_FAIL_MAX", 5, minimum=1),
            breaker_reset_s=number(env, "HIS_CLIENT_BREAKER_RESET_S", 10.0),
        )
