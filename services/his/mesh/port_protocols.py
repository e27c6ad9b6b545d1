"""What Istio does with a Service port, by the protocol it reads there, in words for findings.

Istio's protocol selection (istio.io, "Protocol Selection"): the port's `appProtocol`, else the
prefix of its name (`<protocol>[-<suffix>]`). `http` is HTTP/1.1, `http2` and `grpc` are HTTP/2;
`tcp`, `tls`, `mongo` and the like are proxied as plain TCP (no HTTP routes, no retries, no
per-request metrics). A port that declares no protocol Istio knows is not simply TCP: Istio
sniffs each connection (automatic protocol selection) and handles it as HTTP/1.1 or HTTP/2 when
it recognises one, as TCP otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from his.mesh.edge_lint import port_protocol

HTTP1 = frozenset({"http", "kubernetes.io/ws"})
HTTP2 = frozenset({"http2", "kubernetes.io/h2c"})
GRPC = frozenset({"grpc", "grpc-web"})
# Proxied as plain TCP (Istio's other declared protocols).
TCP = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis", "kubernetes.io/wss"})


def reading(port: Mapping[str, Any]) -> str:
    """What Istio makes of one port's traffic, for a gRPC server behind it."""
    protocol = port_protocol(port)
    name = str(port.get("name", "")) or "(unnamed)"
    declared = (
        f"port {name!r} (appProtocol {protocol})" if port.get("appProtocol") else f"name {name!r}"
    )
    if protocol in HTTP1:
        return (
            f"Istio reads {declared} as http, which is HTTP/1.1: the sidecars forward each call "
            "to the server as HTTP/1.1, which a gRPC server (HTTP/2 only) refuses, so calls fail"
        )
    if protocol in HTTP2:
        return (
            f"Istio reads {declared} as http2: calls are routed and retried as HTTP/2, but "
            "Istio and the house's tools do not know them as gRPC"
        )
    if protocol in TCP:
        return (
            f"Istio reads {declared} as {protocol}, proxied as plain TCP: no routes, retries "
            "or per-call metrics"
        )
    return (
        f"{declared} declares no protocol Istio knows: Istio sniffs each connection (automatic "
        "protocol selection), routes it as HTTP/1.1 or HTTP/2 when it detects one and as plain "
        "TCP otherwise, so routes and retries hang on detection"
    )


GRPC_SERVER_PORT = 50051  # every service's gRPC server (his.runtime.server)
_GRPC_TARGETS = ("grpc", GRPC_SERVER_PORT)


def serving(ports: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ports that carry the gRPC server's calls: those sending to the container's grpc
    port (targetPort `grpc` or 50051, or port 50051); when none says so, every port that is not
    a metrics port. The metrics port (http-metrics, scraped over HTTP/1.1) is right as it is."""
    carrying = [
        p
        for p in ports
        if p.get("targetPort") in _GRPC_TARGETS
        or (p.get("targetPort") is None and p.get("port") == GRPC_SERVER_PORT)
    ]
    if carrying:
        return carrying
    return [p for p in ports if "metrics" not in str(p.get("name", ""))] or list(ports)


def not_grpc(ports: Sequence[Mapping[str, Any]]) -> str:
    """The problem of a Service whose ports declare no gRPC: what Istio does with the port that
    carries the calls (never the metrics port, which is not the cause)."""
    if not ports:
        return "no ports: Istio has nothing to route"
    return "no port named grpc with appProtocol grpc; " + "; ".join(
        reading(p) for p in serving(ports)
    )
