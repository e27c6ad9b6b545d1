"""Which methods may be retried, read from the protos' `idempotency_level` — never a second list."""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from his.base.catalog import CATALOG

_SAFE = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


@functools.cache
def retryable_methods() -> frozenset[str]:
    """Full method paths (`/his.patient.v1.PatientService/GetPatient`) declared safe to repeat."""
    paths: set[str] = set()
    for entry in CATALOG:
        service = entry.descriptor()
        for method in service.methods:
            if method.GetOptions().idempotency_level in _SAFE:
                paths.add(f"/{service.full_name}/{method.name}")
    return frozenset(paths)


def carries_request_id(request: object) -> bool:
    """Creates with a `request_id` are deduplicated by the server, so they may be retried too."""
    if not isinstance(request, Message):
        return False
    field = request.DESCRIPTOR.fields_by_name.get("request_id")
    return field is not None and bool(getattr(request, "request_id", ""))
