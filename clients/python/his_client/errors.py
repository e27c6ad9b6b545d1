"""Errors of calls to other services: what a failed call said (its rich status), and which
upstream failed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from his.base.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    HisError,
    PermissionDenied,
    Unavailable,
)

# Codes that say the upstream (or the way to it) is in trouble, as opposed to answering "no".
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# ErrorInfo reasons by which a server says "my own dependency failed", not "I failed".
RELAYED_REASONS = frozenset({"DEPENDENCY_UNAVAILABLE", "DEPENDENCY_DEADLINE_EXCEEDED"})


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
        budget_limited: bool = False,
    ) -> None:
        super().__init__(
            code,
            initial_metadata or grpc.aio.Metadata(),
            trailing_metadata or grpc.aio.Metadata(),
            details,
        )
        self.upstream = upstream
        # Refused without trying: the upstream's breaker is open.
        self.circuit_open = circuit_open
        # The deadline was cut short by the caller's own remaining time.
        self.budget_limited = budget_limited
        self.reason = rich_status(self).reason
        # The upstream relays an outage of its own dependency (already retried there).
        self.relayed_outage = self.reason in RELAYED_REASONS

    @classmethod
    def wrap(
        cls, upstream: str, error: grpc.aio.AioRpcError, budget_limited: bool = False
    ) -> UpstreamError:
        """The same error, labelled with the upstream it came from."""
        if isinstance(error, UpstreamError):
            return error
        return cls(
            upstream,
            error.code(),
            error.details() or "",
            initial_metadata=error.initial_metadata(),
            trailing_metadata=error.trailing_metadata(),
            budget_limited=budget_limited,
        )


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, from the status's `BadRequest`."""

    field: str
    description: str


@dataclass(frozen=True)
class RichStatus:
    """What a failed call said: the code and message, the `ErrorInfo` (reason, domain, metadata)
    and the `BadRequest` field violations. `str()` of it is a short description for people."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    # `RetryInfo`: how long to wait before asking again (a rate limit's refusal); None if unsaid.
    retry_delay_s: float | None = None

    def __str__(self) -> str:
        line = self.code.name
        if self.reason and self.reason != self.code.name:
            line += f" {self.reason}"
        if self.domain:
            line += f" ({self.domain})"
        if self.message:
            line += f": {self.message}"
        # Servers often write the violations into the message already; name each field once.
        unsaid = [v for v in self.field_violations if f"{v.field}: {v.description}" not in line]
        return "".join([line, *(f"\n  {v.field}: {v.description}" for v in unsaid)])


def rich_status(error: grpc.aio.AioRpcError) -> RichStatus:
    """Decode the `google.rpc.Status` details of a failed call (none: code and message only)."""
    code, message = error.code(), error.details() or ""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details that contradict the call's own code or message: ignore them
        status = None
    reason, domain, metadata, violations = "", "", {}, []
    retry_delay_s: float | None = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
    return RichStatus(code, message, reason, domain, metadata, tuple(violations), retry_delay_s)


def describe(error: grpc.aio.AioRpcError) -> str:
    """A failed call in a few lines for people: code, ErrorInfo reason and domain, message, and
    each bad field — instead of a traceback."""
    return str(rich_status(error))


def translate_error(error: BaseException) -> HisError | None:
    """For servers: an upstream failure that a servicer did not handle itself becomes a status
    naming the dependency — never INTERNAL."""
    if not isinstance(error, UpstreamError):
        return None
    metadata = {"dependency": error.upstream, "code": error.code().name}
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(
            f"dependency {error.upstream} did not answer in time",
            reason="DEPENDENCY_DEADLINE_EXCEEDED",
            metadata=metadata,
        )
    if code in FAILURE_CODES:
        why = "circuit open" if error.circuit_open else code.name.lower()
        return Unavailable(
            f"dependency {error.upstream} is unavailable ({why}); retry later",
            reason="DEPENDENCY_UNAVAILABLE",
            metadata=metadata,
        )
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(
            f"dependency {error.upstream} refused the call",
            reason="DEPENDENCY_PERMISSION_DENIED",
            metadata=metadata,
        )
    return FailedPrecondition(
        f"dependency {error.upstream} refused the call ({code.name})",
        reason="DEPENDENCY_REFUSED",
        metadata=metadata,
    )
