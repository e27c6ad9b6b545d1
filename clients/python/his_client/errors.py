"""Errors of calls to other services, carrying which upstream failed."""

from __future__ import annotations

import grpc

from his.runtime.errors import HisError, Unavailable

# Codes that say the upstream (or the way to it) is in trouble, as opposed to answering "no".
FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class UpstreamError(grpc.aio.AioRpcError):
    """An AioRpcError from calling `upstream`; still caught by `except grpc.aio.AioRpcError`."""

    def __init__(
        self,
        upstream: str,
        code: grpc.StatusCode,
        details: str,
        *,
        initial_metadata: grpc.aio.Metadata | None = None,
        trailing_metadata: grpc.aio.Metadata | None = None,
        circuit_open: bool = False,
    ) -> None:
        super().__init__(
            code,
            initial_metadata or grpc.aio.Metadata(),
            trailing_metadata or grpc.aio.Metadata(),
            details,
        )
        self.upstream = upstream
        self.circuit_open = circuit_open

    @classmethod
    def wrap(cls, upstream: str, error: grpc.aio.AioRpcError) -> UpstreamError:
        """The same error, labelled with the upstream it came from."""
        if isinstance(error, UpstreamError):
            return error
        return cls(
            upstream,
            error.code(),
            error.details() or "",
            initial_metadata=error.initial_metadata(),
            trailing_metadata=error.trailing_metadata(),
        )


def translate_error(error: BaseException) -> HisError | None:
    """For servers: an upstream outage that a servicer did not handle becomes UNAVAILABLE naming
    the dependency, never INTERNAL. Other upstream answers stay the servicer's business."""
    if isinstance(error, UpstreamError) and error.code() in FAILURE_CODES:
        why = "circuit open" if error.circuit_open else error.code().name.lower()
        return Unavailable(
            f"dependency {error.upstream} is unavailable ({why}); retry later",
            reason="DEPENDENCY_UNAVAILABLE",
            metadata={"dependency": error.upstream},
        )
    return None
