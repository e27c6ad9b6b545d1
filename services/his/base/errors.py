"""The error model: domain exceptions under one root, turned into `google.rpc.Status` in one place.

Servicers raise these; the error interceptor maps them to a status with `ErrorInfo` (reason, domain,
metadata) and, for bad input, `BadRequest` field violations. Messages must never contain patient
data: they are returned to callers and may be logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `patient.birth_date.month`) and what is wrong."""

    field: str
    description: str


class HisError(Exception):
    """Root of every error a servicer raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        """Extra detail messages beyond ErrorInfo (BadRequest for invalid input)."""
        return []


class InvalidArgument(HisError):
    """Bad input; names every offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = tuple(violations)
        message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message, reason=reason, metadata=metadata)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """A single-field violation."""
        return cls([FieldViolation(field, description)])

    def details(self) -> list[any_pb2.Any]:
        """BadRequest with one field violation per bad field."""
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clip(v.field, _FIELD_CHARS), description=clip(v.description)
                )
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class NotFound(HisError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(HisError):
    """A resource with the same unique key exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(HisError):
    """The resource is in a state that does not allow the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(HisError):
    """A concurrent change won: stale etag or lost race. Re-read and try again."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(HisError):
    """The caller may not do this. Checked before existence, so it leaks nothing."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(HisError):
    """No valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unimplemented(HisError):
    """The rpc is switched off in this deployment (iam's local identity provider in production)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Unavailable(HisError):
    """A dependency (database, another service) cannot be reached; safe to retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(HisError):
    """The work did not finish in the time it was allowed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(HisError):
    """The server is at its limit of concurrent work."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class RateLimited(ResourceExhausted):
    """A caller asked too often; `RetryInfo` says when asking again can succeed."""

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = max(1.0, retry_after_s)

    def details(self) -> list[any_pb2.Any]:
        whole = int(self.retry_after_s)
        info = error_details_pb2.RetryInfo()
        info.retry_delay.seconds = whole if whole == self.retry_after_s else whole + 1
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]


# Bounds on what an error may echo of its input: a status rides in HTTP/2 headers (a few KiB at
# most before the peer refuses them), and a message quoting a 1 MB field helps nobody.
_MESSAGE_CHARS = 1024
_TEXT_CHARS = 256
_FIELD_CHARS = 128


def clip(text: str, limit: int = _TEXT_CHARS) -> str:
    """`text`, shortened to at most `limit` characters with an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_status(error: HisError, *, domain: str) -> grpc.Status:
    """The `grpc.Status` (with rich details in trailing metadata) for a domain error."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=domain,
        metadata={clip(k, _FIELD_CHARS): clip(v) for k, v in error.metadata.items()},
    )
    packed_info = any_pb2.Any()
    packed_info.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=clip(error.message, _MESSAGE_CHARS),
        details=[packed_info, *error.details()],
    )
    return rpc_status.to_status(status)


def internal_status(*, domain: str, trace_id: str) -> grpc.Status:
    """The status for an unexpected exception: no detail beyond the trace id to look it up by."""
    error = HisError(f"internal error (trace id {trace_id})", metadata={"trace_id": trace_id})
    return to_status(error, domain=domain)
