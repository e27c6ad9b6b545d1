"""The mobile edge: gRPC-web really translated, and the gateway's jwksUri really served.

Istio inserts Envoy's grpc_web filter (gRPC-web → gRPC) in exactly two places: the HTTP connection
manager of a Gateway server whose protocol is GRPC-WEB (such a server cannot carry TLS), and the
inbound side of a sidecar for a Service port whose protocol is grpc-web (appProtocol, else the
port name). A gateway route that reaches neither passes the browser's gRPC-web body to a plain
gRPC server, which cannot read it. istiod fetches a RequestAuthentication's jwksUri itself: an
in-cluster URL must name a Service port that exists and speaks HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from his.mesh.cluster import Cluster, finding, name_of, namespace_of, spec_of
from his.mesh.findings import Finding
from his.mesh.sources import Manifest

GRPC_WEB = "grpc-web"


def port_protocol(port: Mapping[str, Any]) -> str:
    """The protocol Istio reads for a Service port: appProtocol, else the name's prefix."""
    if port.get("appProtocol"):
        return str(port["appProtocol"]).lower()
    name = str(port.get("name", "")).lower()
    return GRPC_WEB if name.startswith(GRPC_WEB) else name.split("-", 1)[0]


def _gateway_servers(cluster: Cluster, vs: Manifest) -> list[dict[str, Any]] | None:
    """The servers of the Gateways a VirtualService is bound to (None: a mesh-only one)."""
    names = [g for g in spec_of(vs).get("gateways") or [] if g != "mesh"]
    if not names:
        return None
    servers: list[dict[str, Any]] = []
    for name in names:
        namespace, _, gateway = str(name).rpartition("/")
        for obj in cluster.of_kind("Gateway"):
            if name_of(obj) == gateway and namespace_of(obj) == (namespace or namespace_of(vs)):
                servers.extend(spec_of(obj).get("servers") or [])
    return servers


def _served_port(service: Manifest, number: object) -> Mapping[str, Any] | None:
    """The Service port a route's destination reaches: the one numbered, else the gRPC one."""
    ports = [p for p in spec_of(service).get("ports") or [] if isinstance(p, Mapping)]
    if number is not None:
        return next((p for p in ports if p.get("port") == number), None)
    grpc = [p for p in ports if port_protocol(p) in ("grpc", GRPC_WEB)]
    return grpc[0] if len(grpc) == 1 else (ports[0] if len(ports) == 1 else None)


def _grpc_web_translated(cluster: Cluster) -> Iterator[Finding]:
    for vs in cluster.of_kind("VirtualService"):
        servers = _gateway_servers(cluster, vs)
        if servers is None:
            continue
        protocols = {str((s.get("port") or {}).get("protocol", "")).upper() for s in servers}
        if protocols == {"GRPC-WEB"}:
            continue  # translated by the gateway's own Envoy
        for number, route in enumerate(spec_of(vs).get("http") or []):
            for index, target in enumerate(route.get("route") or []):
                destination = target.get("destination") or {}
                host = str(destination.get("host", ""))
                resolved = cluster.resolve(host, namespace_of(vs))
                if resolved is None:
                    continue  # lint's route rules report unknown hosts
                service = cluster.services[resolved]
                port = _served_port(service, (destination.get("port") or {}).get("number"))
                protocol = None if port is None else port_protocol(port)
                if protocol == GRPC_WEB:
                    continue
                yield finding(
                    cluster,
                    vs,
                    f"http[{number}].route[{index}]",
                    f"gateway {', '.join(sorted(protocols))} traffic to {host} reaches a port "
                    f"of protocol {protocol!r}: Istio inserts no grpc_web filter on that path, "
                    "so browsers' gRPC-web calls arrive untranslated",
                    f"name the Service {resolved[1]}'s port grpc-web with appProtocol: grpc-web "
                    "(its sidecar then translates), or serve the route from a GRPC-WEB Gateway "
                    "server",
                )


def _jwks_served(cluster: Cluster) -> Iterator[Finding]:
    for auth in cluster.of_kind("RequestAuthentication"):
        for number, rule in enumerate(spec_of(auth).get("jwtRules") or []):
            uri = rule.get("jwksUri")
            if not uri or rule.get("jwks"):
                continue
            where = f"jwtRules[{number}].jwksUri"
            parts = urlsplit(str(uri))
            if parts.scheme == "https":
                continue  # outside the cluster's manifests: served with a certificate
            host = parts.hostname or ""
            resolved = cluster.resolve(host, namespace_of(auth))
            if parts.scheme != "http" or resolved is None:
                yield finding(
                    cluster,
                    auth,
                    where,
                    f"{uri} is neither https nor a Service of this overlay: istiod cannot fetch "
                    "the keys, and every token at the gateway is refused",
                    "use http://<service>.<namespace>.svc.cluster.local:<port>/... of the "
                    "Service serving the JWKS, or an https URL",
                )
                continue
            service = cluster.services[resolved]
            wanted = parts.port or 80
            port = next(
                (p for p in spec_of(service).get("ports") or [] if p.get("port") == wanted), None
            )
            if port is None or port_protocol(port) not in ("http", "http2"):
                what = "no port" if port is None else f"port of protocol {port_protocol(port)!r}"
                yield finding(
                    cluster,
                    auth,
                    where,
                    f"Service {resolved[0]}/{resolved[1]} has {what} {wanted} serving HTTP",
                    f"add an appProtocol: http port {wanted} to the Service (iam: http-keys), "
                    "or point jwksUri at the port that serves the JWKS",
                )


EDGE_RULES = (_grpc_web_translated, _jwks_served)
