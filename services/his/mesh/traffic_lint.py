"""Lint of what Istio accepts silently but routes wrongly: the DestinationRule settings the
hospital relies on, route order, regexes Envoy cannot run, zero timeouts, per-try timeouts
that are never retried, and faults with a status Envoy does not know."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from his.mesh.cluster import Cluster, finding, spec_of, suggest
from his.mesh.findings import Finding
from his.mesh.routes import NEVER_REACHED, regex_error, route_label, seconds
from his.mesh.sources import Manifest

# A try cut by perTryTimeout counts as a reset/5xx to Envoy: only these retry it.
_PER_TRY_RETRIED = frozenset({"reset", "5xx", "gateway-error"})
_GRPC_CODES = sorted(code.name for code in grpc.StatusCode)


def _destination_policy(cluster: Cluster) -> Iterator[Finding]:
    for rule in cluster.of_kind("DestinationRule"):
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


TRAFFIC_RULES: tuple[Callable[[Cluster], Iterator[Finding]], ...] = (
    _destination_policy,
    _route_order,
    route_values,
)
