"""Lint of the NetworkPolicies against the declared calls (his.mesh.calls).

Istio's AuthorizationPolicies decide by identity; the NetworkPolicies are the second wall, by
pod label and port. Both must admit every call the code makes and nothing else, or a call that
Istio allows still times out at the network (a connect failure, retried and then UNAVAILABLE).
Selectors are evaluated against the pods of the overlay (matchLabels and every matchExpressions
operator); an ipBlock peer cannot be judged by labels, so it silences the "missing" findings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from his.base.catalog import implemented
from his.mesh.calls import CALLS
from his.mesh.cluster import Cluster, finding, namespace_of, spec_of
from his.mesh.contracts import all_paths
from his.mesh.findings import Finding
from his.mesh.sources import Manifest

NAMESPACE = "his"
GRPC_PORT = 50051
GATEWAY_APP = "mobile-gateway"
ANY = "*"  # every pod


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes' LabelSelector: matchLabels and every matchExpressions must hold."""
    if any(labels.get(str(k)) != str(v) for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = str(expression.get("key")), expression.get("operator")
        values = {str(v) for v in expression.get("values") or []}
        present = key in labels
        held = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(str(operator), False)
        if not held:
            return False
    return True


def _grpc_port(rule: Mapping[str, Any]) -> bool:
    """Whether a rule's ports include the gRPC port (no ports, or no port number: all ports)."""
    ports = rule.get("ports")
    if not ports:
        return True
    for port in ports:
        number, end = port.get("port"), port.get("endPort")
        if number is None or number in (GRPC_PORT, "grpc"):
            return True
        if isinstance(number, int) and isinstance(end, int) and number <= GRPC_PORT <= end:
            return True
    return False


@dataclass
class Peers:
    """The apps a set of rules lets through on the gRPC port."""

    apps: set[str] = field(default_factory=set)
    unknown: bool = False  # an ipBlock peer: cannot be judged by labels
    by: dict[str, Manifest] = field(default_factory=dict)  # app → the policy that admits it

    def add(self, apps: set[str], policy: Manifest) -> None:
        self.apps |= apps
        for app in apps:
            self.by.setdefault(app, policy)


def _pods(cluster: Cluster) -> list[dict[str, str]]:
    """Labels of the pods of namespace his, plus callers with no pod here (the research Job)."""
    pods = [labels for namespace, labels in cluster.pods if namespace == NAMESPACE]
    apps = {labels.get("app") for labels in pods}
    pods.extend({"app": caller} for caller in CALLS if caller not in apps)
    return pods


def _namespace_selected(cluster: Cluster, selector: Mapping[str, Any]) -> bool:
    labels = {"kubernetes.io/metadata.name": NAMESPACE}
    for namespace in cluster.of_kind("Namespace"):
        if (namespace.get("metadata") or {}).get("name") == NAMESPACE:
            labels |= {
                str(k): str(v)
                for k, v in ((namespace.get("metadata") or {}).get("labels") or {}).items()
            }
    return selects(selector, labels)


def _peers(
    cluster: Cluster, pods: list[dict[str, str]], policies: list[Manifest], direction: str
) -> tuple[Peers, bool]:
    """Who the policies let in (ingress) or out to (egress) on the gRPC port, and whether that
    direction is restricted at all (some policy lists it in policyTypes)."""
    side = "from" if direction == "ingress" else "to"
    peers = Peers()
    restricted = False
    for policy in policies:
        spec = spec_of(policy)
        if direction.capitalize() in (spec.get("policyTypes") or []):
            restricted = True
        for rule in spec.get(direction) or []:
            if not _grpc_port(rule):
                continue
            if not rule.get(side):
                peers.add({ANY}, policy)
                continue
            for peer in rule.get(side) or []:
                if "ipBlock" in peer:
                    peers.unknown = True
                    continue
                if "namespaceSelector" in peer and not _namespace_selected(
                    cluster, peer["namespaceSelector"] or {}
                ):
                    continue  # pods of other namespaces
                selector = peer.get("podSelector")
                if selector is None or not selector:
                    peers.add({ANY}, policy)
                    continue
                peers.add({pod.get("app", "?") for pod in pods if selects(selector, pod)}, policy)
    return peers, restricted


def _policies_of(cluster: Cluster, pods: list[dict[str, str]], app: str) -> list[Manifest]:
    return [
        policy
        for policy in cluster.of_kind("NetworkPolicy")
        if namespace_of(policy) == NAMESPACE
        and any(
            selects(spec_of(policy).get("podSelector") or {}, pod)
            for pod in pods
            if pod.get("app") == app
        )
    ]


def _expected(cluster: Cluster) -> dict[str, set[str]]:
    """caller app → the services it calls: the declared calls, and for the mobile gateway the
    services whose rpcs gateway/authorization.yaml admits."""
    expected = {caller: set(callees) for caller, callees in CALLS.items()}
    paths = all_paths()
    for policy in cluster.of_kind("AuthorizationPolicy"):
        if ((spec_of(policy).get("selector") or {}).get("matchLabels") or {}).get(
            "istio"
        ) != GATEWAY_APP:
            continue
        for rule in spec_of(policy).get("rules") or []:
            for target in rule.get("to") or []:
                for path in (target.get("operation") or {}).get("paths") or []:
                    if str(path) in paths:
                        expected.setdefault(GATEWAY_APP, set()).add(paths[str(path)].service)
    return expected


def _where(policies: list[Manifest], app: str) -> Manifest:
    """The policy written for this app (podSelector app: <app>), where a missing peer goes."""
    own = [
        p
        for p in policies
        if ((spec_of(p).get("podSelector") or {}).get("matchLabels") or {}).get("app") == app
    ]
    return (own or policies)[0]


def network_calls(cluster: Cluster) -> Iterator[Finding]:
    if not cluster.of_kind("NetworkPolicy"):
        return  # this overlay runs without the network-policies component
    expected = _expected(cluster)
    pods = _pods(cluster)
    callers: dict[str, set[str]] = {}
    for caller, callees in expected.items():
        for callee in callees:
            callers.setdefault(callee, set()).add(caller)
    for entry in implemented():
        yield from _ingress(cluster, pods, entry.name, callers.get(entry.name, set()))
    for caller, callees in sorted(expected.items()):
        yield from _egress(cluster, pods, caller, callees)


def _ingress(
    cluster: Cluster, pods: list[dict[str, str]], service: str, wanted: set[str]
) -> Iterator[Finding]:
    policies = _policies_of(cluster, pods, service)
    peers, restricted = _peers(cluster, pods, policies, "ingress")
    if not policies or not restricted:
        return
    where = _where(policies, service)
    if ANY in peers.apps:
        yield finding(
            cluster,
            peers.by[ANY],
            "ingress",
            f"admits every pod to {service} on port "
            f"{GRPC_PORT}: only {', '.join(sorted(wanted))} call it (least privilege)",
            "name the callers in a podSelector",
        )
        return
    if not peers.unknown:
        for caller in sorted(wanted - peers.apps):
            yield finding(
                cluster,
                where,
                "ingress",
                f"does not admit {caller} on port "
                f"{GRPC_PORT}, but {caller} calls {service} (his.mesh.calls): the "
                "call never connects",
                f"add {caller} to the ingress podSelector",
            )
    for extra in sorted(peers.apps - wanted):
        yield finding(
            cluster,
            peers.by[extra],
            "ingress",
            f"admits {extra}, which never calls {service} (least privilege)",
            f"remove {extra}",
        )


def _egress(
    cluster: Cluster, pods: list[dict[str, str]], caller: str, callees: set[str]
) -> Iterator[Finding]:
    policies = _policies_of(cluster, pods, caller)
    peers, restricted = _peers(cluster, pods, policies, "egress")
    if not policies or not restricted or ANY in peers.apps:
        return
    where = _where(policies, caller)
    if not peers.unknown:
        for callee in sorted(callees - peers.apps):
            yield finding(
                cluster,
                where,
                "egress",
                f"does not let {caller} reach {callee} on "
                f"port {GRPC_PORT}, but it calls {callee}: the call never connects",
                f"add {callee} to the egress podSelector",
            )
    for extra in sorted(peers.apps - callees):
        yield finding(
            cluster,
            peers.by[extra],
            "egress",
            f"lets {caller} reach {extra} on port "
            f"{GRPC_PORT}, which it never calls (least privilege)",
            f"remove {extra}",
        )
