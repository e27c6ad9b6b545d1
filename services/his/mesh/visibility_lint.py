"""Lint of what hides a rule or a destination from the workloads that call it.

Istio hands a sidecar only the configuration it may see: a VirtualService, DestinationRule or
Service is exported to the namespaces its `exportTo` lists (`*` everyone, `.` its own, `~` no
one; unset: everyone), and a Sidecar resource narrows what its workloads import further, to the
`namespace/host` entries of its egress listeners. A caller that cannot see a VirtualService gets
Istio's default route (no timeouts, no retry classes, no canary weights); one that cannot see the
DestinationRule knows none of its subsets, so routes to them fail with no healthy upstream; one
whose Sidecar imports no Service of the callee cannot reach it at all (passthrough is off under
REGISTRY_ONLY, and even where it is on the call skips every rule). Callers are the declared calls
(his.mesh.calls) and the mobile gateway's routes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any

from his.mesh.cluster import Cluster, finding, kind_of, name_of, namespace_of, spec_of
from his.mesh.findings import Finding
from his.mesh.network_lint import GATEWAY_APP, callers_of, selects
from his.mesh.sources import Manifest

NAMESPACE = "his"
ROOT_NAMESPACE = "istio-system"  # Istio's default meshConfig.rootNamespace
_SERVICE_EXPORT = "networking.istio.io/exportTo"


def exported_to(exports: list[str], own: str, namespace: str) -> bool:
    """Whether an object of namespace `own` with this exportTo is seen from `namespace`."""
    if not exports:
        return True  # Istio's default (meshConfig defaultExportTo unset): every namespace
    return any(
        entry == "*" or (entry == "." and namespace == own) or entry == namespace
        for entry in exports
    )


def _app_namespaces(cluster: Cluster) -> dict[str, str]:
    """app → the namespace its pods run in (callers with no pod here: namespace his)."""
    found: dict[str, str] = {}
    for namespace, labels in cluster.pods:
        if "app" in labels:
            found.setdefault(labels["app"], namespace)
    return found


def _targets(cluster: Cluster, manifest: Manifest) -> set[tuple[str, str]]:
    """The Services (namespace, name) a VirtualService or DestinationRule applies to."""
    spec = spec_of(manifest)
    if kind_of(manifest) == "DestinationRule":
        hosts = [spec.get("host", "")]
    elif spec.get("gateways") and "mesh" not in spec["gateways"]:
        # A gateway's routes: what matters is the services they send to.
        hosts = [
            (d.get("destination") or {}).get("host", "")
            for route in spec.get("http") or []
            for d in route.get("route") or []
        ]
    else:
        hosts = list(spec.get("hosts") or [])
    return {
        target
        for host in hosts
        if (target := cluster.resolve(str(host), namespace_of(manifest))) is not None
    }


def _exports(cluster: Cluster) -> Iterator[Finding]:
    callers = callers_of(cluster)
    homes = _app_namespaces(cluster)
    for manifest in cluster.of_kind("VirtualService") + cluster.of_kind("DestinationRule"):
        exports = [str(e) for e in spec_of(manifest).get("exportTo") or []]
        if not exports:
            continue
        gateway_only = bool(spec_of(manifest).get("gateways")) and "mesh" not in (
            spec_of(manifest).get("gateways") or []
        )
        for _, service in sorted(_targets(cluster, manifest)):
            who = {GATEWAY_APP} if gateway_only else set(callers.get(service, set()))
            if kind_of(manifest) == "VirtualService" and not gateway_only:
                who.discard(GATEWAY_APP)  # a gateway applies only routes bound to it
            hidden = sorted(
                app
                for app in who
                if not exported_to(exports, namespace_of(manifest), homes.get(app, NAMESPACE))
            )
            if hidden:
                yield finding(
                    cluster,
                    manifest,
                    "exportTo",
                    f"{exports} hides it from {', '.join(hidden)} (namespace "
                    f"{homes.get(hidden[0], NAMESPACE)}), which call(s) {service}: "
                    + _consequence(kind_of(manifest)),
                    f'export it to the callers\' namespace (exportTo: ["."] when they share '
                    f"{namespace_of(manifest)}), or remove exportTo",
                )
    for (namespace, service), manifest in sorted(cluster.services.items()):
        annotation = ((manifest.get("metadata") or {}).get("annotations") or {}).get(
            _SERVICE_EXPORT
        )
        if annotation is None:
            continue
        exports = [e.strip() for e in str(annotation).split(",") if e.strip()]
        hidden = sorted(
            app
            for app in callers.get(service, set())
            if not exported_to(exports, namespace, homes.get(app, NAMESPACE))
        )
        if namespace == NAMESPACE and hidden:
            yield finding(
                cluster,
                manifest,
                f"metadata.annotations[{_SERVICE_EXPORT}]",
                f"{annotation!r} hides the Service from {', '.join(hidden)}, which call(s) it: "
                "their sidecars have no cluster for it, so the calls fail",
                "export it to the callers' namespace, or remove the annotation",
            )


def _consequence(kind: str) -> str:
    if kind == "VirtualService":
        return (
            "their sidecars route by Istio's defaults instead (no timeouts, no retry classes, "
            "no canary weights)"
        )
    return (
        "their sidecars know none of its subsets, pool limits or outlier detection, so routes "
        "to its subsets fail with no healthy upstream (UNAVAILABLE)"
    )


# --- Sidecar resources: what each caller's proxy imports ----------------------------------


def _sidecar_for(cluster: Cluster, namespace: str, labels: Mapping[str, str]) -> Manifest | None:
    """The Sidecar that configures a pod, as Istio picks it: one of its namespace selecting it,
    else its namespace's Sidecar without a selector, else the root namespace's one."""
    sidecars = cluster.of_kind("Sidecar")
    own = [s for s in sidecars if namespace_of(s) == namespace]
    for sidecar in own:
        selector = (spec_of(sidecar).get("workloadSelector") or {}).get("labels")
        if selector and selects({"matchLabels": selector}, labels):
            return sidecar
    for candidates in (own, [s for s in sidecars if namespace_of(s) == ROOT_NAMESPACE]):
        plain = [s for s in candidates if not spec_of(s).get("workloadSelector")]
        if plain:
            return plain[0]
    return None


def _imports(egress: list[Any], own: str, namespace: str, host: str) -> bool:
    """Whether a Sidecar's egress hosts (`namespace/dnsName`) import `host` of `namespace`."""
    for listener in egress:
        for entry in (listener or {}).get("hosts") or []:
            scope, _, name = str(entry).partition("/")
            if scope == "~":
                continue
            if scope not in ("*", namespace) and not (scope == "." and namespace == own):
                continue
            if name == "*" or fnmatch.fnmatchcase(host, name) or host == name:
                return True
    return False


def _sidecars(cluster: Cluster) -> Iterator[Finding]:
    """One finding per Sidecar that hides something its workloads call: every caller and
    callee it cuts listed inside, with the hosts to add."""
    if not cluster.of_kind("Sidecar"):
        return
    callers = callers_of(cluster)
    # Sidecar (namespace, name) → callee → (callers, what is not imported).
    cut: dict[tuple[str, str], dict[str, tuple[set[str], list[str]]]] = {}
    sidecars: dict[tuple[str, str], Manifest] = {}
    for namespace, labels in cluster.pods:
        app = labels.get("app")
        if app is None or app == GATEWAY_APP:
            continue  # gateways ignore Sidecar resources
        sidecar = _sidecar_for(cluster, namespace, labels)
        if sidecar is None:
            continue
        egress = spec_of(sidecar).get("egress")
        if not egress:
            continue  # no egress listeners: everything visible is imported
        for service, who in sorted(callers.items()):
            if app not in who or (NAMESPACE, service) not in cluster.services:
                continue
            missing = _not_imported(cluster, sidecar, egress, service)
            if missing:
                ref = (namespace_of(sidecar), name_of(sidecar))
                sidecars[ref] = sidecar
                apps, _ = cut.setdefault(ref, {}).setdefault(service, (set(), missing))
                apps.add(app)
    for ref, callees in sorted(cut.items()):
        sidecar = sidecars[ref]
        calls = "; ".join(
            f"{', '.join(sorted(apps))} → {service} "
            f"(no {'/'.join(m.split()[0] for m in missing)} {missing[0].split()[1]})"
            for service, (apps, missing) in sorted(callees.items())
        )
        no_route = any(m[0].startswith("Service") for _, m in callees.values())
        consequence = (
            "those calls have no route and fail"
            if no_route
            else _consequence(next(iter(callees.values()))[1][0].split()[0])
        )
        hosts = ", ".join(
            f'"{NAMESPACE}/{s}.{NAMESPACE}.svc.cluster.local"' for s in sorted(callees)
        )
        yield finding(
            cluster,
            sidecar,
            "egress.hosts",
            f"hides from its workloads what they call ({len(callees)} service(s)): {calls}: "
            f"{consequence}",
            f'add {hosts} (or "./*" when they are in {ref[0]}) to egress.hosts',
        )


def _not_imported(
    cluster: Cluster, sidecar: Manifest, egress: list[Any], service: str
) -> list[str]:
    """What of a callee a Sidecar's egress does not import: its Service, and the routes and
    rules written for it, each from its namespace (`Service his/audit`, ...)."""
    host = f"{service}.{NAMESPACE}.svc.cluster.local"
    needed = [("Service", NAMESPACE)] + [
        (kind_of(m), namespace_of(m))
        for m in cluster.of_kind("VirtualService") + cluster.of_kind("DestinationRule")
        if (NAMESPACE, service) in _targets(cluster, m)
        and not (spec_of(m).get("gateways") and "mesh" not in spec_of(m)["gateways"])
    ]
    return [
        f"{kind} {where}/{service}"
        for kind, where in needed
        if not _imports(egress, namespace_of(sidecar), where, host)
    ]


def _ingress_endpoints(cluster: Cluster) -> Iterator[Finding]:
    """A Sidecar ingress listener's defaultEndpoint is where the proxy hands every inbound
    call of that port: it must be a port a container of each selected workload listens on."""
    for sidecar in cluster.of_kind("Sidecar"):
        selector = (spec_of(sidecar).get("workloadSelector") or {}).get("labels") or {}
        workloads = [
            w
            for w in cluster.of_kind("Deployment")
            if namespace_of(w) == namespace_of(sidecar)
            and selects({"matchLabels": selector}, _template_labels(w))
        ]
        for index, listener in enumerate(spec_of(sidecar).get("ingress") or []):
            endpoint = str((listener or {}).get("defaultEndpoint") or "")
            port = endpoint.rpartition(":")[2]
            if not port.isdigit():
                continue  # unix sockets and unset: nothing to compare with
            for workload in workloads:
                served = _container_ports(workload)
                if int(port) in served.values():
                    continue
                inbound = ((listener or {}).get("port") or {}).get("number")
                wanted = served.get(str(((listener or {}).get("port") or {}).get("name", "")))
                if wanted is None and str(inbound) in {str(n) for n in served.values()}:
                    wanted = int(str(inbound))
                listed = ", ".join(f"{n} {name}" for name, n in served.items()) or "none"
                yield finding(
                    cluster,
                    sidecar,
                    f"ingress[{index}].defaultEndpoint",
                    f"hands every inbound call on port {inbound} to {endpoint}, a port no "
                    f"container of {kind_of(workload)} {namespace_of(workload)}/"
                    f"{name_of(workload)} listens on (it serves {listed}): the calls are refused "
                    "(UNAVAILABLE)",
                    f"set defaultEndpoint: {endpoint.rpartition(':')[0]}:{wanted}"
                    if wanted
                    else "point defaultEndpoint at a containerPort of the workload",
                )


def _template_labels(workload: Manifest) -> dict[str, str]:
    labels = ((spec_of(workload).get("template") or {}).get("metadata") or {}).get("labels")
    return {str(k): str(v) for k, v in (labels or {}).items()}


def _container_ports(workload: Manifest) -> dict[str, int]:
    """name (or the number) → containerPort of every container of a workload's pods."""
    pod = (spec_of(workload).get("template") or {}).get("spec") or {}
    return {
        str(port.get("name") or port.get("containerPort")): int(port["containerPort"])
        for container in pod.get("containers") or []
        for port in (container or {}).get("ports") or []
        if isinstance(port, Mapping) and str(port.get("containerPort", "")).isdigit()
    }


VISIBILITY_RULES = (_exports, _sidecars, _ingress_endpoints)
