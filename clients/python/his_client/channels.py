"""How a channel to a service is opened."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

# Keepalive matching the servers' policy, so idle channels survive proxies and the mesh.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # Retries are ours (or the mesh's): gRPC's own transparent retry policy stays out of it.
    ("grpc.enable_retries", 0),
    # Reconnect soon after an upstream comes back (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Connections of this channel's own: a new client does not inherit the failure and
    # reconnect backoff of another channel to the same address in the process (a test's fresh
    # channel to a server that a relay had tried before it listened failed at once, refused).
    ("grpc.use_local_subchannel_pool", 1),
)


def open_channel(
    address: str, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
) -> grpc.aio.Channel:
    """An insecure channel (inside the mesh, the sidecars add mTLS)."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
