"""Semantic lint of one rendered overlay: what the schemas cannot see.

Each rule yields findings naming the file an SRE edits, the object, the problem and the fix.
Facts come from the rendered objects (Services, ServiceAccounts, Deployments) and from the
protos (rpcs and their `idempotency_level`, via his.mesh.contracts) — never from a list kept
by hand here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from his.base.catalog import implemented
from his.mesh.authz_lint import AUTHORIZATION_RULES
from his.mesh.cluster import (
    Cluster,
    finding,
    name_of,
    namespace_of,
    spec_of,
    suggest,
)
from his.mesh.connection_budget import connection_budget
from his.mesh.contracts import Rpc, rpcs
from his.mesh.deploy_lint import lint_deploy
from his.mesh.edge_lint import EDGE_RULES, lost_mesh
from his.mesh.findings import Finding, subject
from his.mesh.identity_lint import lint_identity
from his.mesh.network_lint import network_calls, platform_ports
from his.mesh.port_protocols import not_grpc, reading
from his.mesh.routes import (
    CONNECTION_TOKENS,
    GRPC_TOKENS,
    HTTP_TOKENS,
    NEVER_REACHED,
    Match,
    destinations,
    first_match,
    header_names,
    header_values,
    route_label,
    seconds,
    unsafe_retries,
)
from his.mesh.scaling_lint import SCALING_RULES
from his.mesh.sources import Manifest
from his.mesh.traffic_lint import TRAFFIC_RULES
from his.mesh.visibility_lint import VISIBILITY_RULES


def lint(cluster: Cluster) -> list[Finding]:
    """Every finding of every rule, sorted and without repeats."""
    rules = (
        _presence,
        _service_ports,
        _destination_rules,
        _virtual_service_hosts,
        _route_destinations,
        _route_retries,
        _method_classes,
        *AUTHORIZATION_RULES,
        *TRAFFIC_RULES,
        *EDGE_RULES,
        network_calls,
        platform_ports,
        lint_deploy,
        lint_identity,
        *SCALING_RULES,
        connection_budget,
        *VISIBILITY_RULES,
    )
    found: set[Finding] = set()
    for rule in rules:
        found.update(_guarded(rule, cluster))
    return sorted(found)


def _guarded(rule: Callable[[Cluster], Iterable[Finding]], cluster: Cluster) -> list[Finding]:
    """The rule's findings; one finding instead of a traceback when an object is not of the
    shape its schema says (a list where a map belongs, a null item): the schema findings, which
    the check prints too, name that object."""
    try:
        return list(rule(cluster))
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as error:
        return [
            Finding(
                cluster.locate({}),
                f"rule {getattr(rule, '__name__', rule)}",
                f"could not read an object of an unexpected shape ({type(error).__name__}: "
                f"{error}), so this rule checked nothing here",
                "fix the objects the schema findings name, then run the check again",
            )
        ]


def _mesh_virtual_services(cluster: Cluster) -> list[Manifest]:
    """VirtualServices that apply to calls inside the mesh (gateways absent or `mesh`)."""
    return [
        vs
        for vs in cluster.of_kind("VirtualService")
        if not spec_of(vs).get("gateways") or "mesh" in spec_of(vs)["gateways"]
    ]


# --- every deployed service has its Service, DestinationRule, VirtualService, policy ---------


def _presence(cluster: Cluster) -> Iterator[Finding]:
    rules = cluster.of_kind("DestinationRule")
    meshed = _mesh_virtual_services(cluster)
    # A VirtualService of the service that lost `mesh` is reported as such (hosts rule).
    unmeshed = {t for vs in cluster.of_kind("VirtualService") for t in lost_mesh(cluster, vs)}
    policies = cluster.of_kind("AuthorizationPolicy")
    for entry in implemented():
        name = entry.name
        place = f"service {name}"
        if ("his", name) not in cluster.services:
            yield Finding(
                f"deploy/kustomize/base/{name}/service.yaml",
                place,
                "no Service his/" + name,
                f"add deploy/kustomize/base/{name}/service.yaml",
            )
            continue
        if not any(
            cluster.resolve(str(spec_of(dr).get("host", "")), namespace_of(dr)) == ("his", name)
            for dr in rules
        ):
            own = [dr for dr in rules if namespace_of(dr) == "his" and name_of(dr) == name]
            if own:
                # Its DestinationRule is there under another host: a host naming no Service is
                # the host rule's finding, a wildcard this one's.
                yield from _wildcard_host(cluster, own[0], name)
            else:
                yield Finding(
                    f"mesh/istio/destination-rules/{name}.yaml",
                    place,
                    "no DestinationRule: no mTLS origination settings, pool limits, outlier "
                    "detection or stable/canary subsets",
                    f"add mesh/istio/destination-rules/{name}.yaml and list it in "
                    "mesh/istio/kustomization.yaml",
                )
        if ("his", name) not in unmeshed and not any(
            cluster.resolve(str(h), namespace_of(vs)) == ("his", name)
            for vs in meshed
            for h in spec_of(vs).get("hosts") or []
        ):
            yield Finding(
                f"mesh/istio/virtual-services/{name}.yaml",
                place,
                "no VirtualService: Istio's default retries (unavailable, cancelled) "
                "apply to every rpc, writes included",
                f"add mesh/istio/virtual-services/{name}.yaml and list it in "
                "mesh/istio/kustomization.yaml",
            )
        if not any(
            namespace_of(ap) == "his"
            and ((spec_of(ap).get("selector") or {}).get("matchLabels") or {}).get("app") == name
            for ap in policies
        ):
            yield Finding(
                f"mesh/istio/authorization/{name}.yaml",
                place,
                "no AuthorizationPolicy selects app: "
                + name
                + ", so default-deny refuses every call to it",
                f"add mesh/istio/authorization/{name}.yaml allowing its callers and list "
                "it in mesh/istio/kustomization.yaml",
            )


# --- Service ports carry the protocol Istio must see ----------------------------------------


def _service_ports(cluster: Cluster) -> Iterator[Finding]:
    names = {entry.name for entry in implemented()}
    for (namespace, name), service in sorted(cluster.services.items()):
        if namespace != "his" or name not in names:
            continue
        ports = spec_of(service).get("ports") or []
        grpc = False
        for index, port in enumerate(ports):
            label = str(port.get("name", ""))
            protocol = port.get("appProtocol")
            where = f"ports[{index}] {label}".rstrip()
            if label == "grpc-web" or label.startswith("grpc-web-"):
                # gRPC that the destination's sidecar also translates from gRPC-web
                # (edge_lint checks the gateway's destinations have it).
                grpc = True
                if protocol != "grpc-web":
                    yield finding(
                        cluster,
                        service,
                        where,
                        f"appProtocol is {protocol!r}, not 'grpc-web'",
                        "set appProtocol: grpc-web (Istio reads it before the name)",
                    )
            elif label == "grpc" or label.startswith("grpc-"):
                grpc = True
                if protocol != "grpc":
                    yield finding(
                        cluster,
                        service,
                        where,
                        f"appProtocol is {protocol!r}, not 'grpc'",
                        "set appProtocol: grpc (Istio reads it before the name)",
                    )
            elif protocol in ("grpc", "grpc-web"):
                yield finding(
                    cluster,
                    service,
                    where,
                    f"gRPC port named {label!r}",
                    f"name it {protocol} (or {protocol}-<suffix>) so the name and appProtocol "
                    "agree",
                )
                grpc = True
            elif not protocol and "-" not in label and label not in ("http", "http2", "tcp"):
                yield finding(
                    cluster,
                    service,
                    where,
                    reading(port),
                    "name it <protocol>[-suffix] and set appProtocol",
                )
        if not grpc:
            yield finding(
                cluster,
                service,
                "ports",
                not_grpc(ports),
                "name the serving port grpc and set appProtocol: grpc",
            )


def wildcard_covers(pattern: str, host: str) -> bool:
    """Whether a wildcard host of an Istio object (`*`, `*.his.svc.cluster.local`) matches a
    fully qualified host."""
    return pattern == "*" or (pattern.startswith("*.") and host.endswith(pattern[1:]))


def _wildcard_host(cluster: Cluster, rule: Manifest, name: str) -> Iterator[Finding]:
    host = str(spec_of(rule).get("host", ""))
    if not host.startswith("*"):
        return
    exact = {
        cluster.resolve(str(spec_of(dr).get("host", "")), namespace_of(dr))
        for dr in cluster.of_kind("DestinationRule")
    }
    covered = sorted(
        service
        for namespace, service in cluster.services
        if (namespace, service) not in exact
        and wildcard_covers(host, f"{service}.{namespace}.svc.cluster.local")
    )
    # The Services CloudNativePG makes for a Cluster are not rendered, but the rule reaches them.
    databases = [
        f"{name_of(db)}-{suffix}"
        for db in cluster.of_kind("Cluster")
        if str(db.get("apiVersion", "")).startswith("postgresql.cnpg.io/")
        and wildcard_covers(host, f"{name_of(db)}-rw.{namespace_of(db)}.svc.cluster.local")
        for suffix in ("rw", "ro", "r")
    ]
    yield finding(
        cluster,
        rule,
        "host",
        f"host {host!r} is a wildcard: Istio applies it, as a default, to every Service it "
        f"matches that has no DestinationRule of its own ({', '.join(covered + databases)}), "
        f"not to {name} alone: its mTLS, limits and subsets reach them all"
        + (
            f" ({', '.join(databases)}: database pods without a sidecar cannot answer "
            "ISTIO_MUTUAL, so every service loses its database)"
            if databases
            else ""
        ),
        f"name the service's host: {name}.his.svc.cluster.local",
        paths=[("spec", "host")],
    )


# --- DestinationRules: host, mTLS, subsets that select pods ---------------------------------


def _destination_rules(cluster: Cluster) -> Iterator[Finding]:
    for rule in cluster.of_kind("DestinationRule"):
        spec = spec_of(rule)
        host = str(spec.get("host", ""))
        mode = ((spec.get("trafficPolicy") or {}).get("tls") or {}).get("mode")
        if host.startswith("*"):
            # A default for every host it matches (`*.local`, `*.his.svc.cluster.local`), as
            # istiod reads it: no one Service to find, but its mTLS mode applies to them all.
            if mode is not None and mode != "ISTIO_MUTUAL":
                yield finding(
                    cluster,
                    rule,
                    "trafficPolicy.tls.mode",
                    f"mode {mode!r} for every host {host!r} matches: the mesh is STRICT mTLS",
                    "set trafficPolicy.tls.mode: ISTIO_MUTUAL",
                )
            continue
        target = cluster.resolve(host, namespace_of(rule))
        if target is None:
            yield finding(
                cluster,
                rule,
                "host",
                cluster.host_problem(host, namespace_of(rule)),
                "use <service>.<namespace>.svc.cluster.local of an existing Service"
                + suggest(host, _hosts(cluster)),
            )
            continue
        if mode != "ISTIO_MUTUAL":
            yield finding(
                cluster,
                rule,
                "trafficPolicy.tls.mode",
                f"mode {mode!r}: the mesh is STRICT mTLS, so anything but ISTIO_MUTUAL "
                "breaks or weakens the calls",
                "set trafficPolicy.tls.mode: ISTIO_MUTUAL",
            )
        selector = spec_of(cluster.services[target]).get("selector") or {}
        pod_keys = {key for ns, pod in cluster.pods if ns == target[0] for key in pod}
        for index, subset in enumerate(spec.get("subsets") or []):
            labels = {str(k): str(v) for k, v in (subset.get("labels") or {}).items()}
            for key in sorted(set(labels) - pod_keys):
                yield finding(
                    cluster,
                    rule,
                    f"subsets[{index}] {subset.get('name')}",
                    f"label {key!r} is on no pod of namespace {target[0]}",
                    "use a label the Deployments set" + suggest(key, sorted(pod_keys)),
                )
            if subset.get("name") == "stable" and not cluster.selects_pods(
                target[0], {**selector, **labels}
            ):
                yield finding(
                    cluster,
                    rule,
                    f"subsets[{index}] stable",
                    f"selects no pods ({_labels({**selector, **labels})}): every call "
                    "to the stable subset fails",
                    "match the stable Deployment's labels",
                )


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _hosts(cluster: Cluster) -> list[str]:
    return [f"{name}.{ns}.svc.cluster.local" for ns, name in cluster.services]


def _subsets(cluster: Cluster, target: tuple[str, str]) -> dict[str, dict[str, str]] | None:
    """The subsets (name → labels) the DestinationRule of a Service defines, None without one."""
    rules = cluster.of_kind("DestinationRule")
    exact = [
        r
        for r in rules
        if cluster.resolve(str(spec_of(r).get("host", "")), namespace_of(r)) == target
    ]
    # Without a rule of its own, Istio applies the most specific wildcard rule matching it.
    fqdn = f"{target[1]}.{target[0]}.svc.cluster.local"
    wildcards = sorted(
        (r for r in rules if wildcard_covers(str(spec_of(r).get("host", "")), fqdn)),
        key=lambda r: -len(str(spec_of(r).get("host", ""))),
    )
    chosen = [*exact, *wildcards]
    if not chosen:
        return None
    return {
        str(s.get("name")): {str(k): str(v) for k, v in (s.get("labels") or {}).items()}
        for s in spec_of(chosen[0]).get("subsets") or []
    }


# --- VirtualServices: hosts, gateways, destinations, weights --------------------------------


def _virtual_service_hosts(cluster: Cluster) -> Iterator[Finding]:
    seen: dict[tuple[str, str], Manifest] = {}
    for vs in cluster.of_kind("VirtualService"):
        spec = spec_of(vs)
        gateways = [str(g) for g in spec.get("gateways") or []]
        for gateway in gateways:
            if gateway == "mesh":
                continue
            namespace, _, name = gateway.rpartition("/")
            if (namespace or namespace_of(vs), name) not in cluster.gateways:
                yield finding(
                    cluster,
                    vs,
                    "gateways",
                    f"gateway {gateway!r} does not exist",
                    "name an existing Gateway as <namespace>/<name>",
                )
        if gateways and "mesh" not in gateways:
            services = lost_mesh(cluster, vs)
            if services:
                names = ", ".join(f"{n}.{ns}.svc.cluster.local" for ns, n in services)
                yield finding(
                    cluster,
                    vs,
                    "gateways",
                    f"lists {', '.join(gateways)} but not mesh, though its host {names} is a "
                    "Service of the mesh that no gateway listed serves: the routes apply "
                    "nowhere, so calls inside the mesh get Istio's default retries (unavailable, "
                    "cancelled) on every rpc, writes included",
                    "put mesh back in gateways (the apps' routes belong in "
                    "mesh/istio/gateway/routes.yaml)",
                )
            continue  # external host names, served by the gateway
        for host in spec.get("hosts") or []:
            target = cluster.resolve(str(host), namespace_of(vs))
            if target is None:
                yield finding(
                    cluster,
                    vs,
                    "hosts",
                    cluster.host_problem(str(host), namespace_of(vs))
                    + ", so the routes never apply",
                    "use <service>.<namespace>.svc.cluster.local"
                    + suggest(str(host), _hosts(cluster)),
                )
            elif target in seen and seen[target] is not vs:
                yield finding(
                    cluster,
                    vs,
                    "hosts",
                    f"host {host!r} is also routed by {subject(seen[target])}: Istio "
                    "merges them in no defined order",
                    "keep one VirtualService per host",
                )
            else:
                seen[target] = vs


def _route_destinations(cluster: Cluster) -> Iterator[Finding]:
    for vs in cluster.of_kind("VirtualService"):
        for index, route in enumerate(spec_of(vs).get("http") or []):
            label = route_label(index, route)
            targets = destinations(route)
            weights = [d.get("weight") for d in targets]
            if len(targets) > 1:
                total = sum(int(w or 0) for w in weights)
                if total != 100:
                    parts = " + ".join(
                        f"{(d.get('destination') or {}).get('subset', '?')} {d.get('weight', 0)}"
                        for d in targets
                    )
                    yield finding(
                        cluster,
                        vs,
                        f"{label} route",
                        f"weights sum to {total} ({parts}), not 100",
                        "make them add up to 100 (`his canary` sets both)",
                    )
            elif targets and weights[0] not in (None, 100):
                yield finding(
                    cluster,
                    vs,
                    f"{label} route",
                    f"a single destination with weight {weights[0]}",
                    "drop the weight or make it 100",
                )
            headered = _headered(route)
            for number, target in enumerate(targets):
                yield from _destination(
                    cluster,
                    vs,
                    f"{label} route[{number}]",
                    target,
                    weighted=not headered
                    and (target.get("weight") is None or int(target["weight"]) > 0),
                    headered=headered,
                )


def _headered(route: Mapping[str, Any]) -> bool:
    return any((m or {}).get("headers") for m in route.get("match") or [])


def _header_routes_to(cluster: Cluster, vs: Manifest, subset: str) -> list[str]:
    """The header-matched routes of `vs` that send to `subset`: weight 0 does not stop them."""
    return [
        route_label(index, route)
        for index, route in enumerate(spec_of(vs).get("http") or [])
        if _headered(route)
        and any((t.get("destination") or {}).get("subset") == subset for t in destinations(route))
    ]


def _destination(
    cluster: Cluster,
    vs: Manifest,
    where: str,
    target: Mapping[str, Any],
    *,
    weighted: bool,
    headered: bool = False,
) -> Iterator[Finding]:
    destination = target.get("destination") or {}
    host = str(destination.get("host", ""))
    service = cluster.resolve(host, namespace_of(vs))
    if service is None:
        yield finding(
            cluster,
            vs,
            where,
            "destination " + cluster.host_problem(host, namespace_of(vs)),
            "use <service>.<namespace>.svc.cluster.local" + suggest(host, _hosts(cluster)),
        )
        return
    name = destination.get("subset")
    if name is None:
        return
    subsets = _subsets(cluster, service)
    if subsets is None:
        # One line per VirtualService, not per route: the cause is the missing rule.
        yield finding(
            cluster,
            vs,
            "",
            f"routes to subsets of {host}, which has no "
            "DestinationRule: Envoy answers UNAVAILABLE (no healthy upstream)",
            f"add the DestinationRule of {host}",
        )
        return
    if name not in subsets:
        known = ", ".join(sorted(subsets)) or "none"
        yield finding(
            cluster,
            vs,
            where,
            f"unknown subset {name!r}: the DestinationRule of {host} defines {known}; "
            "Envoy answers UNAVAILABLE (no healthy upstream)",
            "use a defined subset" + suggest(str(name), sorted(subsets)),
        )
        return
    selector = spec_of(cluster.services[service]).get("selector") or {}
    labels = {**selector, **subsets[str(name)]}
    if (weighted or headered) and not cluster.selects_pods(service[0], labels):
        strays = _in_no_subset(cluster, service, selector, subsets)
        if not weighted and not strays:
            # A header route (`x-canary: always`) to a version that is not deployed is the
            # policy's normal state; with pods relabelled out of every subset it is a mistake:
            # testers and the canary analysis sending the header get UNAVAILABLE.
            return
        by_header = _header_routes_to(cluster, vs, str(name))
        for stray in strays:
            pod = _template_labels(stray)
            wanted = subsets[str(name)]
            # Weight 0 is a fix only when no header-matched route still sends to the subset.
            zero = (
                f"remove subset {name!r} from {', '.join(by_header)} of {subject(vs)} and give "
                "it weight 0"
                if by_header
                else f"give subset {name!r} weight 0"
            )
            yield finding(
                cluster,
                stray,
                "spec.template.metadata.labels",
                f"its pods ({_labels({k: pod.get(k, '-') for k in wanted})}) are in no subset "
                f"of the DestinationRule of {host}, and subset {name!r} ({_labels(wanted)}), "
                "which gets calls, selects no pods: those calls fail with UNAVAILABLE (no "
                "healthy upstream)",
                f"label its pods {_labels(wanted)} again (template labels and selector), or {zero}",
                paths=[("spec", "template", "metadata", "labels")],
            )
        if strays:
            return
        yield finding(
            cluster,
            vs,
            where,
            f"subset {name!r} gets traffic but selects no pods ({_labels(labels)})",
            "deploy that version (components/canary) or "
            + (f"remove it from {', '.join(by_header)}" if by_header else "set its weight to 0"),
        )


def _template_labels(workload: Manifest) -> dict[str, str]:
    labels = ((spec_of(workload).get("template") or {}).get("metadata") or {}).get("labels")
    return {str(k): str(v) for k, v in (labels or {}).items()}


def _in_no_subset(
    cluster: Cluster,
    service: tuple[str, str],
    selector: Mapping[str, Any],
    subsets: Mapping[str, Mapping[str, str]],
) -> list[Manifest]:
    """The workloads whose pods the Service selects but no subset does: relabelled pods, the
    likely cause of a subset selecting nothing (the file to edit is theirs)."""
    return [
        workload
        for kind in ("Deployment", "StatefulSet")
        for workload in cluster.of_kind(kind)
        if namespace_of(workload) == service[0]
        and all(_template_labels(workload).get(str(k)) == str(v) for k, v in selector.items())
        and not any(
            all(_template_labels(workload).get(k) == v for k, v in wanted.items())
            for wanted in subsets.values()
        )
    ]


# --- retries and timeouts, route by route ----------------------------------------------------


def retry_tokens(retries: Mapping[str, Any]) -> list[str]:
    """The retryOn conditions of a route, split as Envoy splits them (on commas only)."""
    text = retries.get("retryOn")
    return str(text).split(",") if text else []


def _route_retries(cluster: Cluster) -> Iterator[Finding]:
    for vs in cluster.of_kind("VirtualService"):
        for index, route in enumerate(spec_of(vs).get("http") or []):
            label = route_label(index, route)
            retries = route.get("retries")
            if not isinstance(retries, dict):
                yield finding(
                    cluster,
                    vs,
                    label,
                    "no retries: Istio then retries connect-failure, refused-stream, "
                    "unavailable, cancelled and 503 twice, writes included",
                    "state retries explicitly (attempts, perTryTimeout, retryOn)",
                )
                continue
            yield from _retry_on(cluster, vs, label, retries)
            yield from _timeouts(cluster, vs, label, route, retries)


def _retry_on(
    cluster: Cluster, vs: Manifest, label: str, retries: Mapping[str, Any]
) -> Iterator[Finding]:
    text = retries.get("retryOn")
    attempts = int(retries.get("attempts") or 0)
    if attempts > 0 and not text:
        yield finding(
            cluster,
            vs,
            f"{label} retries",
            "attempts without retryOn: Istio's defaults apply (unavailable, cancelled, 503)",
            "list the retryOn conditions",
        )
        return
    if not text:
        return
    if any(ch.isspace() for ch in str(text)):
        yield finding(
            cluster,
            vs,
            f"{label} retries.retryOn",
            f"{text!r} has spaces: Envoy splits retryOn on commas, so "
            f"{', '.join(repr(t) for t in str(text).split(',') if t != t.strip())} is not a "
            "condition it knows and may silently never fire",
            f"write {','.join(t.strip() for t in str(text).split(','))!r}",
        )
    known = sorted(GRPC_TOKENS | CONNECTION_TOKENS | HTTP_TOKENS)
    for token in (t.strip() for t in str(text).split(",")):
        if token in HTTP_TOKENS or token.isdigit():
            yield finding(
                cluster,
                vs,
                f"{label} retries.retryOn",
                f"{token!r} looks at the HTTP status, but gRPC errors travel as HTTP "
                "200 with a grpc-status",
                "use gRPC conditions: " + ",".join(sorted(GRPC_TOKENS)),
            )
        elif token not in GRPC_TOKENS | CONNECTION_TOKENS:
            yield finding(
                cluster,
                vs,
                f"{label} retries.retryOn",
                f"unknown retry condition {token!r}: Envoy ignores it",
                "use one of "
                + ",".join(sorted(GRPC_TOKENS | CONNECTION_TOKENS))
                + suggest(token, known),
            )


def _timeouts(
    cluster: Cluster,
    vs: Manifest,
    label: str,
    route: Mapping[str, Any],
    retries: Mapping[str, Any],
) -> Iterator[Finding]:
    timeout = route.get("timeout")
    total = seconds(timeout)
    if timeout is None:
        yield finding(
            cluster,
            vs,
            label,
            "no timeout: a stuck upstream holds the caller until its own deadline",
            "set a route timeout (reads 5s, writes 10s here)",
        )
        return
    if total is None:
        yield finding(
            cluster,
            vs,
            f"{label} timeout",
            f"{timeout!r} is not a duration",
            "write it like 5s or 1500ms",
        )
        return
    attempts = int(retries.get("attempts") or 0)
    per_try = seconds(retries.get("perTryTimeout"))
    if "perTryTimeout" in retries and per_try is None:
        yield finding(
            cluster,
            vs,
            f"{label} retries.perTryTimeout",
            f"{retries['perTryTimeout']!r} is not a duration",
            "write it like 1500ms",
        )
    elif per_try is not None and attempts and (attempts + 1) * per_try > total + 1e-9:
        yield finding(
            cluster,
            vs,
            f"{label} timeout",
            f"timeout {timeout} < (1 try + {attempts} retries) x perTryTimeout "
            f"{retries['perTryTimeout']} = {(attempts + 1) * per_try:g}s: the route "
            "gives up before the last retry can answer",
            f"raise the timeout to at least {(attempts + 1) * per_try:g}s or lower "
            "perTryTimeout/attempts",
        )


# --- each rpc against the route it takes: the proto's class decides the retries --------------


def _calls(vs: Manifest) -> list[dict[str, str]]:
    """The header sets worth trying: none, and each exact header value a route matches on."""
    variants: list[dict[str, str]] = [{}]
    for name in header_names(vs):
        variants.extend({name: value} for value in header_values(vs, name))
    return variants


def _method_classes(cluster: Cluster) -> Iterator[Finding]:
    for vs in cluster.of_kind("VirtualService"):
        if lost_mesh(cluster, vs):
            continue  # one finding says `mesh` is missing: its routes are judged once it is back
        gateway = bool(spec_of(vs).get("gateways")) and "mesh" not in spec_of(vs)["gateways"]
        own = {
            target[1]
            for host in spec_of(vs).get("hosts") or []
            if (target := cluster.resolve(str(host), namespace_of(vs))) is not None
        }
        wanted = [
            rpc
            for entry in implemented()
            if gateway or entry.name in own
            for rpc in rpcs(entry.name)
        ]
        wrong: dict[tuple[int, str], list[str]] = {}
        routes: dict[int, Match] = {}
        for headers in _calls(vs):
            for rpc in wanted:
                match = first_match(vs, rpc.path, headers)
                if match is None:
                    if not gateway:
                        wrong.setdefault((-1, "unrouted"), []).append(rpc.method)
                    continue
                routes[match.index] = match
                problem = _class_problem(cluster, vs, rpc, match)
                if problem:
                    wrong.setdefault((match.index, problem), []).append(rpc.method)
                if match.route.get("mirror") and not rpc.repeatable:
                    # Envoy sends a copy of each call to the mirror and drops its answer: a
                    # write then runs twice (both versions share the database).
                    mirror = (match.route.get("mirror") or {}).get("host", "?")
                    subset = (match.route.get("mirror") or {}).get("subset")
                    copied = f"{mirror} subset {subset}" if subset else str(mirror)
                    wrong.setdefault((match.index, "mirrored:" + copied), []).append(rpc.method)
        for (index, problem), methods in sorted(wrong.items()):
            names = ", ".join(dict.fromkeys(methods))
            yield _class_finding(cluster, vs, routes.get(index), problem, names)


def _class_problem(cluster: Cluster, vs: Manifest, rpc: Rpc, match: Match) -> str:
    hosts = {
        cluster.resolve(str((d.get("destination") or {}).get("host", "")), namespace_of(vs))
        for d in destinations(match.route)
    }
    if ("his", rpc.service) not in hosts:
        return "misrouted:" + rpc.service
    retries = match.route.get("retries")
    if not isinstance(retries, dict):
        return ""  # reported by the route rule
    unsafe = unsafe_retries(
        rpc.repeatable, int(retries.get("attempts") or 0), retry_tokens(retries)
    )
    if unsafe is None:
        return ""
    return "write-retried:" + ",".join(unsafe) if unsafe else "read-unretried"


def _class_finding(
    cluster: Cluster, vs: Manifest, match: Match | None, problem: str, methods: str
) -> Finding:
    label = route_label(match.index, match.route) if match else "http"
    kind, _, detail = problem.partition(":")
    if kind == "unrouted":
        return finding(
            cluster,
            vs,
            label,
            f"no route matches {methods}: calls fail",
            "keep a catch-all write route last",
        )
    if kind == "misrouted":
        return finding(
            cluster,
            vs,
            label,
            f"{methods} of {detail} are routed to another service",
            f"route them to {detail}",
        )
    if kind == "mirrored":
        return finding(
            cluster,
            vs,
            f"{label} mirror",
            f"mirrors write-class {methods} (not idempotent in the proto) to {detail}: every "
            "such call runs twice, the copy's answer dropped, and both write the shared "
            "database (duplicate records, events, charges)",
            "remove mirror and mirrorPercentage from this route; mirror only a route of "
            "NO_SIDE_EFFECTS/IDEMPOTENT methods (the reads route)",
        )
    if kind == "write-retried":
        return finding(
            cluster,
            vs,
            f"{label} retries",
            f"retries write-class {methods} (not idempotent in the proto) on {detail}: "
            "the server may have committed before the answer was lost",
            "take them out of this route's uri regex, or retry only on "
            + ",".join(sorted(NEVER_REACHED)),
        )
    return finding(
        cluster,
        vs,
        label,
        f"read-class {methods} (NO_SIDE_EFFECTS/IDEMPOTENT in the proto) "
        f"{'fall' if ',' in methods else 'falls'} to a route that does not retry on unavailable",
        "add them to the uri regex of the reads route",
    )
