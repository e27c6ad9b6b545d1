"""The services of HIS Mesh: their names, ports and whether they are implemented yet."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor

# Where iam serves its public key documents over HTTP (his.iam.jwks_http): the gateway's
# jwt_authn, Istio's RequestAuthentication and `his mesh check` name the same paths.
JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class ServiceEntry:
    """One service of the house: where it listens locally and where its code lives."""

    name: str
    grpc_service: str
    port: int
    metrics_port: int
    implemented: bool
    # An HTTP port of the service's own besides gRPC and metrics (iam: its key set), if any.
    http_port: int | None = None

    @property
    def module(self) -> str:
        """The Python package holding the servicer (`his.<name>`)."""
        return f"his.{self.name}"

    def descriptor(self) -> ServiceDescriptor:
        """The service of its contract, from the generated stubs (`his.<name>.v1`)."""
        stubs = importlib.import_module(f"his.{self.name}.v1.{self.name}_service_pb2")
        service: ServiceDescriptor = stubs.DESCRIPTOR.services_by_name[
            self.grpc_service.rpartition(".")[2]
        ]
        return service


def _entry(name: str, index: int, *, implemented: bool, http: bool = False) -> ServiceEntry:
    return ServiceEntry(
        name=name,
        grpc_service=f"his.{name}.v1.{name.capitalize()}Service",
        port=50050 + index,
        metrics_port=9050 + index,
        implemented=implemented,
        http_port=8050 + index if http else None,
    )


# The local port table of the README (iam's HTTP port serves its JWKS and OIDC discovery).
# In Kubernetes every service listens on 50051 inside its pod;
# these distinct ports only matter when `his up` runs them side by side on one machine.
CATALOG: tuple[ServiceEntry, ...] = (
    _entry("patient", 1, implemented=True),
    _entry("scheduling", 2, implemented=True),
    _entry("emr", 3, implemented=True),
    _entry("orders", 4, implemented=True),
    _entry("lab", 5, implemented=True),
    _entry("pharmacy", 6, implemented=True),
    _entry("billing", 7, implemented=True),
    _entry("iam", 8, implemented=True, http=True),
    _entry("audit", 9, implemented=True),
)

BY_NAME: dict[str, ServiceEntry] = {entry.name: entry for entry in CATALOG}


def implemented() -> tuple[ServiceEntry, ...]:
    """The services `his up` starts."""
    return tuple(entry for entry in CATALOG if entry.implemented)


def lookup(name: str) -> ServiceEntry:
    """The catalog entry of a service, or a ValueError listing the known names."""
    try:
        return BY_NAME[name]
    except KeyError:
        known = ", ".join(BY_NAME)
        raise ValueError(f"unknown service {name!r}; known services: {known}") from None
