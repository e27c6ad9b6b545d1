"""What the protos say about each service: its rpcs and whether each may be repeated.

The mesh tools read the same descriptors as the client SDK (`his_client.idempotency`), so the
read/write class of a method has one source: its `idempotency_level`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from his.base.catalog import CATALOG, lookup
from his_client.idempotency import retryable_methods


@dataclass(frozen=True)
class Rpc:
    """One rpc of a service: `/his.patient.v1.PatientService/GetPatient`."""

    service: str  # catalog name, e.g. "patient"
    grpc_service: str  # full name, e.g. "his.patient.v1.PatientService"
    method: str

    @property
    def path(self) -> str:
        return f"/{self.grpc_service}/{self.method}"

    @property
    def repeatable(self) -> bool:
        """NO_SIDE_EFFECTS or IDEMPOTENT in the proto: safe to retry after it reached a server."""
        return self.path in retryable_methods()

    @property
    def kind(self) -> str:
        return "read-class" if self.repeatable else "write-class"


@functools.cache
def rpcs(service: str) -> tuple[Rpc, ...]:
    """Every rpc of one catalog service, in proto order."""
    entry = lookup(service)
    descriptor = entry.descriptor()
    return tuple(Rpc(entry.name, descriptor.full_name, m.name) for m in descriptor.methods)


@functools.cache
def all_paths() -> dict[str, Rpc]:
    """Every rpc path of every service in the catalog (implemented or not) → its Rpc."""
    return {rpc.path: rpc for entry in CATALOG for rpc in rpcs(entry.name)}


def host(service: str, namespace: str = "his") -> str:
    """The in-mesh host of a service."""
    return f"{service}.{namespace}.svc.cluster.local"
