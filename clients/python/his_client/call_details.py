"""Rewriting an outbound call's metadata, for the SDK's client interceptors (identity, trace)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc


def with_metadata(
    details: grpc.aio.ClientCallDetails,
    drop: Iterable[str],
    add: Iterable[tuple[str, str]],
) -> grpc.aio.ClientCallDetails:
    """`details` with every entry under a key in `drop` removed (a caller's own value never
    rides along with ours) and `add` appended."""
    dropped = frozenset(drop)
    metadata: list[tuple[str, Any]] = [
        (key, value) for key, value in (details.metadata or ()) if key not in dropped
    ]
    metadata += add
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )
