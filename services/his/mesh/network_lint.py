"""Lint of the NetworkPolicies against the declared calls (his.mesh.calls).

Istio's AuthorizationPolicies decide by identity; the NetworkPolicies are the second wall, by
pod label and port. Both must admit every call the code makes and nothing else, or a call that
Istio allows still times out at the network (a connect failure, retried and then UNAVAILABLE).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from his.mesh.calls import CALLS
from his.mesh.cluster import Cluster, finding, namespace_of, spec_of
from his.mesh.contracts import deployed
from his.mesh.findings import Finding
from his.mesh.sources import Manifest

GRPC_PORT = 50051
GATEWAY_APP = "mobile-gateway"


def _apps(selector: Mapping[str, Any]) -> set[str] | None:
    """The `app` values a podSelector admits; None when it admits any app (empty selector)."""
    labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if "app" in labels:
        return {str(labels["app"])}
    for expression in expressions:
        if expression.get("key") == "app" and expression.get("operator") == "In":
            return {str(v) for v in expression.get("values") or []}
    return None if not labels and not expressions else set()


def _grpc_port(rule: Mapping[str, Any]) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") in (GRPC_PORT, "grpc") for p in ports)


def _policies_of(cluster: Cluster, app: str) -> list[Manifest]:
    found = []
    for policy in cluster.of_kind("NetworkPolicy"):
        if namespace_of(policy) != "his":
            continue
        apps = _apps(spec_of(policy).get("podSelector") or {})
        if apps is None or app in apps:
            found.append(policy)
    return found


def _peers(policies: list[Manifest], direction: str) -> tuple[set[str], bool]:
    """Apps the policies let in (ingress) or out to (egress) on the gRPC port, and whether the
    direction is restricted at all (a policy with that policyType)."""
    side = "from" if direction == "ingress" else "to"
    allowed: set[str] = set()
    restricted = False
    for policy in policies:
        spec = spec_of(policy)
        if direction.capitalize() in (spec.get("policyTypes") or []):
            restricted = True
        for rule in spec.get(direction) or []:
            if not _grpc_port(rule):
                continue
            for peer in rule.get(side) or []:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    apps = _apps(peer["podSelector"] or {})
                    allowed |= apps if apps is not None else {"*"}
    return allowed, restricted


def network_calls(cluster: Cluster) -> Iterator[Finding]:
    if not cluster.of_kind("NetworkPolicy"):
        return  # this overlay runs without the network-policies component
    callers: dict[str, set[str]] = {}
    for caller, callees in CALLS.items():
        for callee in callees:
            callers.setdefault(callee, set()).add(caller)
    for entry in deployed():
        service = entry.name
        policies = _policies_of(cluster, service)
        admitted, restricted = _peers(policies, "ingress")
        if not policies or not restricted:
            continue
        wanted = callers.get(service, set())
        where = next((p for p in policies if spec_of(p).get("ingress")), policies[0])
        for caller in sorted(wanted - admitted - {"*"}) if "*" not in admitted else []:
            yield finding(
                cluster,
                where,
                "ingress",
                f"does not admit {caller} on port "
                f"{GRPC_PORT}, but {caller} calls {service} (his.mesh.calls): the "
                "call never connects",
                f"add {caller} to the ingress podSelector",
            )
        for extra in sorted(admitted - wanted - {GATEWAY_APP, "*"}):
            yield finding(
                cluster,
                where,
                "ingress",
                f"admits {extra}, which never calls {service} (least privilege)",
                f"remove {extra}",
            )
    for caller, callees in sorted(CALLS.items()):
        policies = _policies_of(cluster, caller)
        allowed, restricted = _peers(policies, "egress")
        if not policies or not restricted or "*" in allowed:
            continue
        where = next((p for p in policies if spec_of(p).get("egress")), policies[0])
        for callee in sorted(set(callees) - allowed):
            yield finding(
                cluster,
                where,
                "egress",
                f"does not let {caller} reach {callee} on "
                f"port {GRPC_PORT}, but it calls {callee} (his.mesh.calls): the call "
                "never connects",
                f"add {callee} to the egress podSelector",
            )
