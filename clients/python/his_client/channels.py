"""Where each service is and how to open a channel to it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from his.runtime.catalog import CATALOG

# Keepalive matching the servers' policy, so idle channels survive proxies and the mesh.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class ServiceAddresses:
    """`host:port` of every service: local ports by default, `HIS_<SERVICE>_ADDR` to override
    (Kubernetes: `patient.his.svc.cluster.local:50051`)."""

    by_service: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceAddresses:
        """Addresses from `HIS_<SERVICE>_ADDR`, defaulting to the local port table."""
        source = os.environ if env is None else env
        return cls(
            {
                entry.name: source.get(f"HIS_{entry.name.upper()}_ADDR", f"localhost:{entry.port}")
                for entry in CATALOG
            }
        )

    def of(self, service: str) -> str:
        """The address of one service."""
        return self.by_service[service]


def open_channel(address: str) -> grpc.aio.Channel:
    """An insecure channel (inside the mesh, the sidecars add mTLS)."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
