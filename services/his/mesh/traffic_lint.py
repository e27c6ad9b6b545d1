"""Lint of what Istio accepts silently but routes wrongly: the DestinationRule settings the
hospital relies on, route order, regexes Envoy cannot run, zero timeouts, per-try timeouts
that are never retried, and faults with a status Envoy does not know."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from his.mesh.cluster import Cluster, finding, namespace_of, spec_of, suggest
from his.mesh.findings import Finding, subject
from his.mesh.routes import NEVER_REACHED, regex_error, route_label, seconds
from his.mesh.scaling_lint import fewest_pods
from his.mesh.sources import Manifest

# A try cut by perTryTimeout counts as a reset/5xx to Envoy: only these retry it.
_PER_TRY_RETRIED = frozenset({"reset", "5xx", "gateway-error"})
_GRPC_CODES = sorted(code.name for code in grpc.StatusCode)


def _destination_policy(cluster: Cluster) -> Iterator[Finding]:
    for rule in cluster.of_kind("DestinationRule"):
        if str(spec_of(rule).get("host", "")).startswith("*"):
            continue  # a wildcard default (e.g. mesh-wide mTLS), not one service's tuning
        policy = spec_of(rule).get("trafficPolicy") or {}
        balancer = policy.get("loadBalancer") or {}
        # LEAST_CONN is Istio's deprecated name for the same balancer.
        if balancer.get("simple") not in ("LEAST_REQUEST", "LEAST_CONN"):
            yield finding(
                cluster,
                rule,
                "trafficPolicy.loadBalancer",
                f"simple is {balancer.get('simple')!r}: with long-lived HTTP/2 "
                "connections only LEAST_REQUEST spreads calls by load",
                "set loadBalancer.simple: LEAST_REQUEST",
            )
        outlier = policy.get("outlierDetection")
        if not isinstance(outlier, dict):
            yield finding(
                cluster,
                rule,
                "trafficPolicy.outlierDetection",
                "missing: failing pods stay in the pool, and Istio silently turns off "
                "locality failover without it",
                "restore outlierDetection",
            )
        else:
            if not outlier.get("consecutiveGatewayErrors"):
                yield finding(
                    cluster,
                    rule,
                    "trafficPolicy.outlierDetection",
                    "no consecutiveGatewayErrors: a pod that resets or refuses "
                    "connections is never ejected",
                    "set consecutiveGatewayErrors: 5",
                )
            if outlier.get("consecutive5xxErrors") != 0:
                yield finding(
                    cluster,
                    rule,
                    "trafficPolicy.outlierDetection.consecutive5xxErrors",
                    f"is {outlier.get('consecutive5xxErrors', 'unset (Istio: 5)')}: "
                    "application errors (a gRPC INTERNAL or UNKNOWN, counted as a 500) "
                    "would eject healthy pods over one bad request pattern; eject on gateway "
                    "errors only",
                    "set consecutive5xxErrors: 0",
                )
        http = (policy.get("connectionPool") or {}).get("http") or {}
        for field_name in ("maxRetries", "http2MaxRequests"):
            if field_name not in http:
                yield finding(
                    cluster,
                    rule,
                    "trafficPolicy.connectionPool.http",
                    f"no {field_name}: Istio's default is effectively unlimited, so "
                    "a slow service gets a retry storm",
                    f"set {field_name}",
                )
        yield from _tls_everywhere(cluster, rule, policy)


def _tls_everywhere(
    cluster: Cluster, rule: Manifest, policy: Mapping[str, Any]
) -> Iterator[Finding]:
    """Port-level and subset policies override the top-level TLS mode: check them all."""
    places: list[tuple[str, Mapping[str, Any]]] = [
        (f"trafficPolicy.portLevelSettings[{i}]", p)
        for i, p in enumerate(policy.get("portLevelSettings") or [])
    ]
    for index, subset in enumerate(spec_of(rule).get("subsets") or []):
        sub = subset.get("trafficPolicy") or {}
        places.append((f"subsets[{index}].trafficPolicy", sub))
        places.extend(
            (f"subsets[{index}].trafficPolicy.portLevelSettings[{i}]", p)
            for i, p in enumerate(sub.get("portLevelSettings") or [])
        )
    for where, place in places:
        mode = (place.get("tls") or {}).get("mode")
        if mode not in (None, "ISTIO_MUTUAL"):
            yield finding(
                cluster,
                rule,
                f"{where}.tls.mode",
                f"mode {mode} overrides "
                "ISTIO_MUTUAL: calls there fail against STRICT mTLS or lose identity",
                "remove it or set ISTIO_MUTUAL",
            )


# Below this many calls in flight to a whole service (every caller, every pod together) Envoy
# answers the rest with 503 overflow: the service is served a few calls at a time.
_MIN_IN_FLIGHT = 10
# Fewer connections than calling pods: callers share a handful of connections.
_MIN_CONNECTIONS = 10
# Ejecting a pod on fewer consecutive gateway errors than this ejects healthy pods during an
# ordinary rolling restart (each old pod refuses a connection or two while it drains).
_MIN_GATEWAY_ERRORS = 3
# An HTTP idle timeout shorter than this closes connections between the calls of an ordinary
# caller (seconds apart per caller pod and service pod), so most calls pay a new handshake.
_MIN_IDLE_S = 1.0
# Route retries beyond this multiply an outage's load by attempts + 1 at every hop.
MAX_ATTEMPTS = 3


def _policies(rule: Manifest) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every traffic policy of a DestinationRule: the top level, its ports, and its subsets."""
    top = spec_of(rule).get("trafficPolicy") or {}
    places: list[tuple[str, Mapping[str, Any]]] = [("trafficPolicy", top)]
    for index, subset in enumerate(spec_of(rule).get("subsets") or []):
        own = (subset or {}).get("trafficPolicy") or {}
        places.append((f"subsets[{index}].trafficPolicy", own))
    for where, policy in places:
        yield where, policy
        for index, port in enumerate(policy.get("portLevelSettings") or []):
            yield f"{where}.portLevelSettings[{index}]", port or {}


def _pool_and_ejection(cluster: Cluster) -> Iterator[Finding]:
    """Values Istio accepts that serialise the calls to a service or eject all of its pods."""
    for rule in cluster.of_kind("DestinationRule"):
        for where, policy in _policies(rule):
            pool = policy.get("connectionPool") or {}
            http = pool.get("http") or {}
            for name in ("maxRetries", "http2MaxRequests"):
                if http.get(name) == 0:
                    yield finding(
                        cluster,
                        rule,
                        f"{where}.connectionPool.http.{name}",
                        "0 is Istio's 'unset': Envoy's default applies (effectively unlimited), "
                        "not zero",
                        f"set {name} to the real limit",
                    )
            for name in ("http2MaxRequests", "maxConcurrentStreams", "http1MaxPendingRequests"):
                value = http.get(name)
                scope = (
                    "per connection"
                    if name == "maxConcurrentStreams"
                    else "to the whole service (every caller and pod together)"
                )
                if isinstance(value, int) and 0 < value < _MIN_IN_FLIGHT:
                    yield finding(
                        cluster,
                        rule,
                        f"{where}.connectionPool.http.{name}",
                        f"{value}: at most {value} call(s) in flight {scope}, so calls are "
                        "served a few at a time and the rest fail with 503 overflow "
                        "(UNAVAILABLE)",
                        "raise it to the service's real concurrency (here 100 or more), "
                        "or leave it unset",
                    )
            connections = (pool.get("tcp") or {}).get("maxConnections")
            if isinstance(connections, int) and 0 < connections < _MIN_CONNECTIONS:
                yield finding(
                    cluster,
                    rule,
                    f"{where}.connectionPool.tcp.maxConnections",
                    f"{connections}: every caller's sidecar together may hold {connections} "
                    "connection(s) to the whole service, so its pods are reached through a "
                    "few connections and the rest of the calls queue or fail with 503 overflow",
                    "raise it well above the number of calling pods (here 100 or more), or "
                    "leave it unset",
                )
            if http.get("maxRequestsPerConnection") == 1:
                yield finding(
                    cluster,
                    rule,
                    f"{where}.connectionPool.http.maxRequestsPerConnection",
                    "1: a new connection and mTLS handshake for every call, so HTTP/2 "
                    "multiplexing is lost and latency doubles",
                    "set 0 (no limit)",
                )
            idle = seconds(http.get("idleTimeout"))
            if idle is not None and 0 < idle < _MIN_IDLE_S:
                yield finding(
                    cluster,
                    rule,
                    f"{where}.connectionPool.http.idleTimeout",
                    f"{http['idleTimeout']}: Envoy closes a connection idle that long, and one "
                    "caller pod's calls to one service pod are mostly further apart, so most "
                    "calls open a new connection and mTLS handshake (as "
                    "maxRequestsPerConnection: 1 does)",
                    "set 300s, or leave it unset (Istio: 1h)",
                )
            yield from _ejection(cluster, rule, where, policy.get("outlierDetection"))


def _ejection(cluster: Cluster, rule: Manifest, where: str, outlier: Any) -> Iterator[Finding]:
    if not isinstance(outlier, Mapping):
        return
    percent = outlier.get("maxEjectionPercent")
    if isinstance(percent, int) and percent >= 100:
        yield finding(
            cluster,
            rule,
            f"{where}.outlierDetection.maxEjectionPercent",
            f"{percent}: every pod may be ejected at once (one bad dependency makes them all "
            "fail together), and then no pod is left to serve",
            "keep it at 50 or below",
        )
    healthy = outlier.get("minHealthPercent")
    fewest = _fewest_pods(cluster, rule)
    # Envoy stops detection while fewer than minHealthPercent % of the pods are healthy: the
    # first ejection does that when it is 100, or above (n - 1) / n of the fewest n pods.
    left = 100 * (fewest - 1) / fewest if fewest >= 2 else None
    if isinstance(healthy, int) and (healthy >= 100 or (left is not None and healthy > left)):
        scale = (
            ""
            if healthy >= 100 or left is None
            else f" (of the {fewest} pods at its lowest scale, one ejected leaves {left:.0f} %)"
        )
        yield finding(
            cluster,
            rule,
            f"{where}.outlierDetection.minHealthPercent",
            f"{healthy}: Envoy stops outlier detection while fewer than {healthy} % of the pods "
            f"are healthy, so the first ejection{scale} switches it off and calls go to every "
            "pod, the failing one too",
            "remove it (Istio: 0, detection always on), or keep it well below 100 (at most 50)",
        )
    errors = outlier.get("consecutiveGatewayErrors")
    if isinstance(errors, int) and 0 < errors < _MIN_GATEWAY_ERRORS:
        yield finding(
            cluster,
            rule,
            f"{where}.outlierDetection.consecutiveGatewayErrors",
            f"{errors}: a pod is ejected after {errors} refused connection(s), which every "
            "rolling restart and node drain causes, so healthy pods are ejected",
            "set 5",
        )
    base = seconds(outlier.get("baseEjectionTime"))
    if base is not None and base > 300:
        yield finding(
            cluster,
            rule,
            f"{where}.outlierDetection.baseEjectionTime",
            f"{outlier['baseEjectionTime']}: an ejected pod stays out at least that long "
            "(longer each time), far past a transient fault",
            "keep it at 30s to 300s",
        )


def _fewest_pods(cluster: Cluster, rule: Manifest) -> int:
    """The fewest pods behind a DestinationRule's host (0 when it names no Service)."""
    service = cluster.resolve(str(spec_of(rule).get("host", "")), namespace_of(rule))
    if service is None:
        return 0
    selector = spec_of(cluster.services[service]).get("selector") or {}
    return fewest_pods(cluster, service[0], selector)


def _covers(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> bool:
    """Whether every call the `later` match entry takes is taken by the `earlier` one first.

    Judged only when the earlier entry matches on the path alone (or on nothing); any other
    condition (headers, sourceLabels, method, ...) might let some calls through.
    """
    if set(earlier) - {"uri"}:
        return False
    if "uri" not in earlier:
        return True
    first, second = earlier["uri"], later.get("uri")
    if not isinstance(first, Mapping) or not isinstance(second, Mapping):
        return False
    if first == second:
        return True
    prefix = first.get("prefix")
    taken = second.get("exact", second.get("prefix"))
    return isinstance(prefix, str) and isinstance(taken, str) and taken.startswith(prefix)


def _headered(route: Mapping[str, Any]) -> bool:
    return any((entry or {}).get("headers") for entry in route.get("match") or [])


def _route_order(cluster: Cluster) -> Iterator[Finding]:
    for vs in cluster.of_kind("VirtualService"):
        routes = [r for r in spec_of(vs).get("http") or [] if isinstance(r, dict)]
        for index, route in enumerate(routes):
            earlier = list(enumerate(routes[:index]))
            catch_all = next((i for i, r in earlier if not r.get("match")), None)
            if catch_all is not None:
                yield finding(
                    cluster,
                    vs,
                    route_label(index, route),
                    f"unreachable: {route_label(catch_all, routes[catch_all])} before it "
                    "has no match and takes every call",
                    "move it before that route",
                )
                continue
            if not _headered(route):
                continue
            entries = [e for e in route.get("match") or [] if isinstance(e, Mapping)]
            shadows = [
                i
                for i, other in earlier
                if any(
                    _covers(first, entry)
                    for entry in entries
                    for first in other.get("match") or []
                    if isinstance(first, Mapping)
                )
            ]
            # Only when every entry of the header route is taken first does it never apply.
            if entries and all(
                any(
                    _covers(first, entry)
                    for _, other in earlier
                    for first in other.get("match") or []
                    if isinstance(first, Mapping)
                )
                for entry in entries
            ):
                yield finding(
                    cluster,
                    vs,
                    route_label(index, route),
                    f"its header match never applies: {route_label(shadows[0], routes[shadows[0]])}"
                    " takes the same calls first",
                    "move the header route before it",
                )


def _regexes(route: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for entry in route.get("match") or []:
        uri = (entry or {}).get("uri") or {}
        if "regex" in uri:
            yield "uri", str(uri["regex"])
        for name, condition in ((entry or {}).get("headers") or {}).items():
            if isinstance(condition, dict) and "regex" in condition:
                yield f"headers.{name}", str(condition["regex"])


def route_values(cluster: Cluster) -> Iterator[Finding]:
    """Regexes, zero timeouts, per-try retries and fault statuses (drills are checked with it)."""
    for vs in cluster.of_kind("VirtualService"):
        for index, route in enumerate(spec_of(vs).get("http") or []):
            label = route_label(index, route)
            for where, pattern in _regexes(route):
                yield from _regex(cluster, vs, f"{label} match {where}", pattern)
            if route.get("timeout") is not None and seconds(route.get("timeout")) == 0:
                yield finding(
                    cluster,
                    vs,
                    f"{label} timeout",
                    "0s turns the timeout off: a stuck upstream holds the caller",
                    "set a real timeout",
                )
            yield from _per_try(cluster, vs, label, route.get("retries"))
            yield from _attempts(cluster, vs, label, route.get("retries"))
            abort = ((route.get("fault") or {}).get("abort")) or {}
            if "grpcStatus" in abort and str(abort["grpcStatus"]) not in _GRPC_CODES:
                yield finding(
                    cluster,
                    vs,
                    f"{label} fault.abort.grpcStatus",
                    f"{abort['grpcStatus']!r} is not a gRPC status",
                    "use a code name" + suggest(str(abort["grpcStatus"]), _GRPC_CODES),
                )


def _regex(cluster: Cluster, vs: Manifest, where: str, pattern: str) -> Iterator[Finding]:
    error = regex_error(pattern)
    if error is not None:
        yield finding(
            cluster,
            vs,
            where,
            f"RE2 (Envoy's regex engine) refuses it: {error}; istiod rejects the VirtualService",
            "write it in RE2 syntax (no lookaround, backreferences or \\Z)",
        )


def _attempts(cluster: Cluster, vs: Manifest, label: str, retries: Any) -> Iterator[Finding]:
    attempts = retries.get("attempts") if isinstance(retries, dict) else None
    if isinstance(attempts, int) and attempts > MAX_ATTEMPTS:
        yield finding(
            cluster,
            vs,
            f"{label} retries.attempts",
            f"{attempts} retries: an outage sends up to {attempts + 1} times the calls, at "
            "every hop that retries (a retry storm)",
            f"retry at most {MAX_ATTEMPTS} times (2 for reads here)",
        )


def _per_try(cluster: Cluster, vs: Manifest, label: str, retries: Any) -> Iterator[Finding]:
    if not isinstance(retries, dict) or not retries.get("perTryTimeout"):
        return
    tokens = {t.strip() for t in str(retries.get("retryOn") or "").split(",")} - {""}
    # A write route retries only before the server has the call; a cut try must not be retried.
    if tokens and tokens <= NEVER_REACHED:
        return
    if int(retries.get("attempts") or 0) > 0 and not tokens & _PER_TRY_RETRIED:
        yield finding(
            cluster,
            vs,
            f"{label} retries",
            "a try cut by perTryTimeout is never retried: Envoy retries it only on "
            "reset (or 5xx/gateway-error)",
            "add reset to retryOn (read-class routes)",
        )


def _faults(cluster: Cluster) -> Iterator[Finding]:
    """Faults live in drills (mesh/istio/drills), applied by hand for a game day and reverted:
    one in the rendered policy fails real patients' calls, and Istio turns off the route's
    retries and timeout for every call on it."""
    for vs in cluster.of_kind("VirtualService"):
        for index, route in enumerate(spec_of(vs).get("http") or []):
            if not (isinstance(route, dict) and route.get("fault")):
                continue
            where = f"{route_label(index, route)} fault"
            problem = (
                "a fault outside a drill: it hits real calls whenever this is applied, and "
                "Istio drops the route's retries and timeout while it is there"
            )
            patch = cluster.patched_by(vs, ("spec", "http", index, "fault"))
            if patch is None:
                yield finding(
                    cluster,
                    vs,
                    where,
                    problem,
                    "remove it; write a drill under mesh/istio/drills/<service>/ and apply it "
                    "by hand (never from an overlay)",
                )
                continue
            # Written by a kustomize patch, not in the VirtualService's file: blame the patch.
            yield Finding(
                patch.written_in,
                f"{subject(vs, where)}, patched in by {patch}",
                problem,
                f"remove {patch.entry} from {patch.kustomization}; apply a drill by hand for "
                "a game day (kubectl patch --type json --patch-file ...), never from a "
                "kustomization",
            )


TRAFFIC_RULES: tuple[Callable[[Cluster], Iterator[Finding]], ...] = (
    _faults,
    _destination_policy,
    _pool_and_ejection,
    _route_order,
    route_values,
)
