"""Lint of the NetworkPolicies against the declared calls (his.mesh.calls).

Istio's AuthorizationPolicies decide by identity; the NetworkPolicies are the second wall, by
pod label and port. Both must admit every call the code makes and nothing else, or a call that
Istio allows still times out at the network (a connect failure, retried and then UNAVAILABLE).
Selectors are evaluated against the pods of the overlay (matchLabels and every matchExpressions
operator); an ipBlock peer cannot be judged by labels, so it silences the "missing" findings.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from his.base.catalog import implemented
from his.mesh.calls import CALLS
from his.mesh.cluster import Cluster, finding, kind_of, name_of, namespace_of, spec_of
from his.mesh.contracts import all_paths
from his.mesh.edge_lint import gateway_services
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


def callers_of(cluster: Cluster) -> dict[str, set[str]]:
    """service → the apps that call it: the declared calls and the mobile gateway's rpcs."""
    callers: dict[str, set[str]] = {}
    for caller, callees in _expected(cluster).items():
        for callee in callees:
            callers.setdefault(callee, set()).add(caller)
    return callers


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


# --- the platform ports every meshed pod and the gateway need ---------------------------------

ISTIOD_XDS_PORT = 15012  # xDS and certificates: a sidecar cut from it never gets config or a cert
# istiod's pods carry all of these labels (an install by istioctl or Helm, default revision):
# a policy may select them by any.
ISTIOD = (
    {"kubernetes.io/metadata.name": "istio-system"},
    {
        "app": "istiod",
        "istio": "pilot",
        "istio.io/rev": "default",
        "app.kubernetes.io/name": "istiod",
    },
)


def _admits_port(rule: Mapping[str, Any], number: int, name: str | None = None) -> bool:
    """Whether a NetworkPolicy rule's ports include `number` (no ports: all ports)."""
    ports = rule.get("ports")
    if not ports:
        return True
    for port in ports:
        if str(port.get("protocol") or "TCP").upper() != "TCP":
            continue  # gRPC and xDS are TCP: a UDP or SCTP rule admits none of them
        given, end = port.get("port"), port.get("endPort")
        if given is None or given == number or (name is not None and given == name):
            return True
        if isinstance(given, int) and isinstance(end, int) and given <= number <= end:
            return True
    return False


def _reaches_istiod(rule: Mapping[str, Any]) -> bool:
    if not _admits_port(rule, ISTIOD_XDS_PORT):
        return False
    peers = rule.get("to")
    if not peers:
        return True
    namespace_labels, pod_labels = ISTIOD
    for peer in peers:
        if "ipBlock" in peer:
            return True  # cannot be judged by labels
        namespaces = peer.get("namespaceSelector")
        if namespaces is None:
            continue  # pods of the policy's own namespace: istiod is not there
        if selects(namespaces, namespace_labels) and selects(
            peer.get("podSelector") or {}, pod_labels
        ):
            return True
    return False


def _names_istiod(rule: Mapping[str, Any]) -> bool:
    """Whether an egress rule is written for istiod (whatever ports it lists)."""
    namespace_labels, pod_labels = ISTIOD
    return any(
        peer.get("namespaceSelector") is not None
        and selects(peer["namespaceSelector"], namespace_labels)
        and selects(peer.get("podSelector") or {}, pod_labels)
        for peer in rule.get("to") or []
    )


def _selector_text(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as an SRE reads it: `k: v, key In [a, b]`."""
    parts = [f"{k}: {v}" for k, v in (selector.get("matchLabels") or {}).items()]
    parts += [
        f"{e.get('key')} {e.get('operator')}" + (f" {list(e['values'])}" if e.get("values") else "")
        for e in selector.get("matchExpressions") or []
    ]
    return "{" + ", ".join(parts) + "}"


def _istiod_rule_problem(rule: Mapping[str, Any]) -> str | None:
    """Why an egress rule written for istiod (it names istiod's pods or namespace, or port
    15012) does not reach istiod; None for a rule not written for istiod."""
    namespace_labels, pod_labels = ISTIOD
    istio_system = namespace_labels["kubernetes.io/metadata.name"]
    aimed = any(port.get("port") == ISTIOD_XDS_PORT for port in rule.get("ports") or [])
    reasons: list[str] = []
    for index, peer in enumerate(rule.get("to") or []):
        namespaces, pods = peer.get("namespaceSelector"), peer.get("podSelector")
        pod_ok = selects(pods or {}, pod_labels)
        namespace_ok = namespaces is not None and selects(namespaces, namespace_labels)
        written = [str(v) for v in ((namespaces or {}).get("matchLabels") or {}).values()]
        # A misspelt istio-system (istio-sytem), not another namespace (kube-system).
        near = difflib.get_close_matches(istio_system, written, n=1, cutoff=0.85)
        if not ((pods and pod_ok) or namespace_ok or near):
            continue
        aimed = True
        if namespaces is None:
            reasons.append(
                f"to[{index}] has no namespaceSelector, so it names pods of namespace "
                f"{NAMESPACE}, and istiod runs in {istio_system}"
            )
        elif not namespace_ok:
            reasons.append(
                f"to[{index}].namespaceSelector {_selector_text(namespaces)} does not select "
                f"namespace {istio_system}" + (f" ({near[0]!r} is misspelt)" if near else "")
            )
        elif not pod_ok:
            reasons.append(
                f"to[{index}].podSelector {_selector_text(pods or {})} selects no istiod pod "
                "(app: istiod)"
            )
    if not aimed:
        return None
    if not _admits_port(rule, ISTIOD_XDS_PORT):
        reasons.append(f"its ports do not include TCP {ISTIOD_XDS_PORT}")
    return "; ".join(reasons)


def _meshed(pod: Mapping[str, str]) -> bool:
    return pod.get("sidecar.istio.io/inject", "true").lower() != "false"


def _restricting(cluster: Cluster, labels: Mapping[str, str], direction: str) -> list[Manifest]:
    """The NetworkPolicies of namespace his that select a pod and restrict one direction."""
    return [
        policy
        for policy in cluster.of_kind("NetworkPolicy")
        if namespace_of(policy) == NAMESPACE
        and selects(spec_of(policy).get("podSelector") or {}, labels)
        and direction.capitalize() in (spec_of(policy).get("policyTypes") or [])
    ]


def platform_ports(cluster: Cluster) -> Iterator[Finding]:
    """Every meshed pod may reach istiod's xDS port; the gateway's pods take their real port."""
    if not cluster.of_kind("NetworkPolicy") or not cluster.of_kind("AuthorizationPolicy"):
        return  # no network policies, or no mesh in this overlay
    # The policy meant to open istiod (its egress is written for istiod) is the one to fix,
    # once, whatever pods it fails: not each policy that would need it.
    cut: dict[str, list[str]] = {}
    blamed: dict[str, tuple[Manifest, str | None]] = {}
    seen: set[str] = set()
    for namespace, labels in cluster.pods:
        app = labels.get("app", "?")
        if namespace != NAMESPACE or not _meshed(labels) or app in seen:
            continue
        seen.add(app)
        policies = _restricting(cluster, labels, "egress")
        rules = [(p, rule) for p in policies for rule in spec_of(p).get("egress") or []]
        if not policies or any(_reaches_istiod(rule) for _, rule in rules):
            continue
        meant = next(
            ((p, why) for p, rule in rules if (why := _istiod_rule_problem(rule)) is not None),
            None,
        )
        blame, why = meant if meant is not None else (_where(policies, app), None)
        key = f"{namespace_of(blame)}/{name_of(blame)}"
        blamed[key] = (blame, why)
        cut.setdefault(key, []).append(app)
    for key, apps in sorted(cut.items()):
        blame, why = blamed[key]
        problem = (
            f"no policy lets the pods of {', '.join(sorted(apps))} reach istiod (istio-system, "
            f"app: istiod) on port {ISTIOD_XDS_PORT}"
        )
        yield finding(
            cluster,
            blame,
            "egress",
            problem
            + (f" ({name_of(blame)}'s rule for istiod misses it: {why})" if why else "")
            + ": their sidecars get no configuration or certificate, so they never become ready",
            f"allow egress to istiod on {ISTIOD_XDS_PORT}: namespaceSelector "
            "kubernetes.io/metadata.name: istio-system with podSelector app: istiod"
            + ("" if why is not None else " (platform.yaml's allow-istiod)"),
        )
    yield from _gateway_ports(cluster)
    yield from _database_sidecars(cluster)
    yield from _operator_reach(cluster)


def _container_ports(cluster: Cluster, selector: Mapping[str, str]) -> dict[str, int]:
    """{port name: containerPort} of the containers of the workloads whose pods `selector`
    selects (a NetworkPolicy or a Service may name a port instead of numbering it)."""
    named: dict[str, int] = {}
    for workload in (*cluster.of_kind("Deployment"), *cluster.of_kind("StatefulSet")):
        template = spec_of(workload).get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector or any(str(labels.get(k)) != v for k, v in selector.items()):
            continue
        for container in (template.get("spec") or {}).get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") and isinstance(port.get("containerPort"), int):
                    named[str(port["name"])] = port["containerPort"]
    return named


def _gateway_ports(cluster: Cluster) -> Iterator[Finding]:
    for gateway in cluster.of_kind("Gateway"):
        selector = {str(k): str(v) for k, v in (spec_of(gateway).get("selector") or {}).items()}
        pods = [
            labels
            for namespace, labels in cluster.pods
            if selector and all(labels.get(k) == v for k, v in selector.items())
        ]
        if not pods:
            continue
        policies = _restricting(cluster, pods[0], "ingress")
        if not policies:
            continue
        named = _container_ports(cluster, selector)
        wanted: set[int] = set()
        servers = {
            (server.get("port") or {}).get("number")
            for server in spec_of(gateway).get("servers") or []
        }
        for service in gateway_services(cluster, gateway):
            for port in spec_of(service).get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                if isinstance(target, str):
                    target = named.get(target)  # a named targetPort: the container's port
                if port.get("port") in servers and isinstance(target, int):
                    wanted.add(target)
        names = {number: name for name, number in named.items()}
        # Behind a LoadBalancer or NodePort the apps connect from outside the cluster (with
        # externalTrafficPolicy Local from their own addresses): no pod or namespace selector,
        # nor a private range, names them.
        outside = [
            f"Service {namespace_of(s)}/{name_of(s)} is a {spec_of(s)['type']}"
            for s in gateway_services(cluster, gateway)
            if spec_of(s).get("type") in _EXTERNAL_SERVICE_TYPES
        ]
        for number in sorted(wanted):
            admitting = [
                (p, rule)
                for p in policies
                for rule in spec_of(p).get("ingress") or []
                if _admits_port(rule, number, names.get(number))
            ]
            if not admitting:
                yield finding(
                    cluster,
                    _where(policies, GATEWAY_APP),
                    "ingress",
                    f"does not admit port {number}, where the gateway's pods serve Gateway "
                    f"{namespace_of(gateway)}/{name_of(gateway)} "
                    "(the gateway Service's targetPort): the apps cannot connect",
                    f"admit port {number} (the targetPort, not the Service port)",
                )
            elif outside and not any(_from_anywhere(rule) for _, rule in admitting):
                policy = admitting[0][0]
                peers = "; ".join(_peer_text(peer) for _, r in admitting for peer in r["from"])
                yield finding(
                    cluster,
                    policy,
                    "ingress",
                    f"admits port {number} only from {peers}: the apps reach Gateway "
                    f"{namespace_of(gateway)}/{name_of(gateway)} from outside the cluster "
                    f"({', '.join(outside)}), so "
                    "they are cut off",
                    f"admit port {number} from anywhere: no `from` in that ingress rule (or "
                    "ipBlock cidr 0.0.0.0/0)",
                )


_EXTERNAL_SERVICE_TYPES = ("LoadBalancer", "NodePort")
_ANY_ADDRESS = ("0.0.0.0/0", "::/0")


def _from_anywhere(rule: Mapping[str, Any]) -> bool:
    """Whether an ingress rule admits any source address (no `from`, or an ipBlock of all)."""
    peers = rule.get("from")
    if not peers:
        return True
    return any(str((peer.get("ipBlock") or {}).get("cidr")) in _ANY_ADDRESS for peer in peers)


def _peer_text(peer: Mapping[str, Any]) -> str:
    if "ipBlock" in peer:
        return f"ipBlock {(peer.get('ipBlock') or {}).get('cidr')}"
    parts = [
        f"{field} {_selector_text(peer[field] or {})}"
        for field in ("namespaceSelector", "podSelector")
        if field in peer
    ]
    return " and ".join(parts) + (
        "" if "namespaceSelector" in peer else f" (pods of namespace {NAMESPACE})"
    )


# --- CloudNativePG instances stay out of the mesh ---------------------------------------------

_INJECT = "sidecar.istio.io/inject"


def _namespace_injects(cluster: Cluster) -> str | None:
    """The label by which namespace his asks for sidecars (`istio-injection: enabled`), if any."""
    for namespace in cluster.of_kind("Namespace"):
        if name_of(namespace) != NAMESPACE:
            continue
        labels = (namespace.get("metadata") or {}).get("labels") or {}
        if labels.get("istio-injection") == "enabled":
            return "istio-injection: enabled"
        if "istio.io/rev" in labels and labels.get("istio-injection") != "disabled":
            return f"istio.io/rev: {labels['istio.io/rev']}"
    return None


def _database_sidecars(cluster: Cluster) -> Iterator[Finding]:
    """The pods of a CloudNativePG Cluster in an injected namespace get sidecars unless its
    inheritedMetadata opts them out; such a sidecar needs istiod, which the platform policies
    (allow-istiod leaves out cnpg.io/cluster pods) may not let it reach."""
    injects = _namespace_injects(cluster)
    for db in cluster.of_kind("Cluster"):
        if not str(db.get("apiVersion", "")).startswith("postgresql.cnpg.io/"):
            continue
        if namespace_of(db) != NAMESPACE:
            continue
        inherited = spec_of(db).get("inheritedMetadata") or {}
        labels = {str(k): str(v) for k, v in (inherited.get("labels") or {}).items()}
        asked = labels.get(_INJECT, str((inherited.get("annotations") or {}).get(_INJECT, "")))
        if asked.lower() == "false" or (injects is None and asked.lower() != "true"):
            continue
        pod = labels | {"cnpg.io/cluster": name_of(db), "cnpg.io/podRole": "instance"}
        policies = _restricting(cluster, pod, "egress")
        rules = [rule for p in policies for rule in spec_of(p).get("egress") or []]
        if not policies or any(_reaches_istiod(rule) for rule in rules):
            continue
        leaving_out = sorted(
            name_of(p)
            for p in cluster.of_kind("NetworkPolicy")
            if namespace_of(p) == NAMESPACE
            and any(_names_istiod(rule) for rule in spec_of(p).get("egress") or [])
        )
        why = f" ({', '.join(leaving_out)} does not select the instances)" if leaving_out else ""
        reason = (
            f"{_INJECT}: true"
            if asked.lower() == "true"
            else f"namespace {NAMESPACE} has {injects}"
        )
        yield finding(
            cluster,
            db,
            "spec.inheritedMetadata.labels",
            f'no {_INJECT}: "false" for the instances, and they get sidecars ({reason}): no '
            f"NetworkPolicy lets those reach istiod on port {ISTIOD_XDS_PORT}{why}, so the "
            "sidecars never become ready and neither does the database",
            f'set spec.inheritedMetadata.labels {_INJECT}: "false" (the instances stay out of '
            "the mesh; the operator reaches them from outside it)",
            paths=[("spec", "inheritedMetadata", "labels", _INJECT), ("spec", "inheritedMetadata")],
        )


# The CloudNativePG operator (namespace cnpg-system, its Helm chart's labels) reaches every
# instance: 8000 is the instance manager's status endpoint (health, switchover, failover), 5432
# the database itself.
CNPG_OPERATOR = (
    {"kubernetes.io/metadata.name": "cnpg-system"},
    {"app.kubernetes.io/name": "cloudnative-pg"},
)
CNPG_OPERATOR_PORTS = {
    8000: "the instance manager's status endpoint: without it the operator cannot read the "
    "instances' status, so health checks, switchover and failover break",
    5432: "PostgreSQL: the operator's own connections (role and database management) fail",
}


def _from_operator(rule: Mapping[str, Any]) -> bool:
    peers = rule.get("from")
    if not peers:
        return True
    namespace_labels, pod_labels = CNPG_OPERATOR
    return any(
        "ipBlock" in peer
        or (
            peer.get("namespaceSelector") is not None
            and selects(peer["namespaceSelector"], namespace_labels)
            and selects(peer.get("podSelector") or {}, pod_labels)
        )
        for peer in peers
    )


def _operator_reach(cluster: Cluster) -> Iterator[Finding]:
    """Every port the operator needs on the instances of a CloudNativePG Cluster must be let in
    by the NetworkPolicies restricting their ingress."""
    for db in cluster.of_kind("Cluster"):
        if not str(db.get("apiVersion", "")).startswith("postgresql.cnpg.io/"):
            continue
        pod = {"cnpg.io/cluster": name_of(db), "cnpg.io/podRole": "instance"}
        policies = _restricting(cluster, pod, "ingress")
        if not policies:
            continue
        rules = [
            (policy, index, rule)
            for policy in policies
            for index, rule in enumerate(spec_of(policy).get("ingress") or [])
        ]
        operator_rules = [(p, i, r) for p, i, r in rules if _from_operator(r)]
        for port, why in sorted(CNPG_OPERATOR_PORTS.items()):
            if any(_admits_port(rule, port) for _, _, rule in operator_rules):
                continue
            policy, where = (
                (operator_rules[0][0], f"ingress[{operator_rules[0][1]}]")
                if operator_rules
                else (policies[0], "ingress")
            )
            yield finding(
                cluster,
                policy,
                where,
                f"does not let the CloudNativePG operator (namespace cnpg-system) reach the "
                f"instances of {kind_of(db)} {namespace_of(db)}/{name_of(db)} on port {port}, "
                f"{why}",
                f"add `- port: {port}` (protocol TCP) to the ingress rule from namespace "
                "cnpg-system",
            )
