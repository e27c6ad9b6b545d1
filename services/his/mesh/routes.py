"""How Istio picks the http route of a VirtualService for one call, and its durations.

Istio's semantics, kept small: routes are tried in order; a route without `match` takes
everything; its `match` entries are OR'd and the conditions inside one entry AND'd; regexes are
RE2 (Envoy's engine, through google-re2) and must match the whole value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

# gRPC is always POST; matching on other request properties is not evaluated.
_EVALUATED = {"uri", "headers", "withoutHeaders", "method", "name"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# Envoy's retry conditions (x-envoy-retry-on and x-envoy-retry-grpc-on), as Istio passes them.
GRPC_TOKENS = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)
CONNECTION_TOKENS = frozenset(
    {
        "connect-failure",
        "refused-stream",
        "reset",
        "reset-before-request",
        "envoy-ratelimited",
        "http3-post-connect-failure",
    }
)
# These look at the HTTP status; a gRPC error travels as HTTP 200 with a grpc-status trailer.
HTTP_TOKENS = frozenset(
    {"5xx", "gateway-error", "retriable-4xx", "retriable-status-codes", "retriable-headers"}
)
# Safe for a write: the request never reached a server that could have committed it.
NEVER_REACHED = frozenset({"connect-failure", "refused-stream", "reset-before-request"})


def unsafe_retries(repeatable: bool, attempts: int, tokens: Iterable[str]) -> list[str] | None:
    """How a route's retries disagree with the proto class of a call, or None when they agree.

    A read-class call (NO_SIDE_EFFECTS/IDEMPOTENT) must retry on `unavailable`: the result is
    `[]` when it does not. A write-class call may retry only before reaching a server: the
    result lists the conditions beyond that.
    """
    given = {token.strip() for token in tokens} - {""}
    if repeatable:
        return [] if attempts == 0 or "unavailable" not in given else None
    unsafe = sorted(given - NEVER_REACHED) if attempts else []
    return unsafe or None


def fqdn(host: str, namespace: str) -> str:
    """A host as a pod's DNS resolver in `namespace` finds it (`patient`, `patient.his`,
    `patient.his.svc` → FQDN through the search domains). Istio resolves differently: see
    istio_host."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.cluster.local"
    if len(parts) == 2:
        return f"{host}.svc.cluster.local"
    if parts[2:] == ["svc"]:
        return f"{host}.cluster.local"
    return host


def istio_host(host: str, namespace: str) -> str:
    """A host of an Istio object (VirtualService hosts and destinations, DestinationRule host)
    as istiod resolves it from `namespace`: only a name without a dot is expanded
    (`patient` → patient.<namespace>.svc.cluster.local). A dotted name is kept as written, so
    `patient.his` is a different host from patient.his.svc.cluster.local and matches no Service
    (istiod's ResolveShortnameToFQDN)."""
    if host == "*" or "." in host or ":" in host:
        return host
    return f"{host}.{namespace}.svc.cluster.local"


def route_label(index: int, route: Mapping[str, Any]) -> str:
    """How findings name an http route: its index, and its name when it has one."""
    name = route.get("name")
    return f"http[{index}] {name}" if name else f"http[{index}]"


@dataclass(frozen=True)
class Match:
    """The route a call takes: its index and body, and conditions that could not be judged."""

    index: int
    route: dict[str, Any]
    ignored: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.route.get("name") or f"http[{self.index}]")


# RE2 logs every pattern it refuses to stderr by default; a refusal here is a finding instead.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@functools.cache
def regex(pattern: str) -> re2._Regexp[str]:
    """An Istio regex compiled by RE2, as Envoy and istiod do. Raises re2.error."""
    return re2.compile(pattern, _RE2_OPTIONS)


def regex_error(pattern: str) -> str | None:
    """Why RE2 (so istiod) refuses a pattern, or None when it is valid."""
    try:
        regex(pattern)
    except re2.error as error:
        return str(
            error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else error
        )
    return None


def _string_match(condition: Any, value: str | None) -> bool:
    """Istio's StringMatch (exact, prefix, regex) against a value that may be absent."""
    if not isinstance(condition, Mapping) or value is None:
        return False
    if "exact" in condition:
        return value == str(condition["exact"])
    if "prefix" in condition:
        return value.startswith(str(condition["prefix"]))
    if "regex" in condition:
        try:
            return regex(str(condition["regex"])).fullmatch(value) is not None
        except re2.error:
            return False  # refused by istiod; the check reports it
    return True  # an empty StringMatch matches any present value


def _entry_matches(entry: Mapping[str, Any], path: str, headers: Mapping[str, str]) -> bool:
    if "uri" in entry and not _string_match(entry["uri"], path):
        return False
    if "method" in entry and not _string_match(entry["method"], "POST"):
        return False
    for name, condition in (entry.get("headers") or {}).items():
        if not _string_match(condition, headers.get(str(name).lower())):
            return False
    for name, condition in (entry.get("withoutHeaders") or {}).items():
        if _string_match(condition, headers.get(str(name).lower())):
            return False
    return True


def first_match(
    virtual_service: Mapping[str, Any], path: str, headers: Mapping[str, str] | None = None
) -> Match | None:
    """The http route a gRPC call to `path` with these (lower-case) headers takes, if any."""
    given = {key.lower(): value for key, value in (headers or {}).items()}
    routes = (virtual_service.get("spec") or {}).get("http") or []
    for index, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        entries = route.get("match")
        if not entries:
            return Match(index, dict(route))
        for entry in entries:
            if isinstance(entry, Mapping) and _entry_matches(entry, path, given):
                ignored = sorted(set(entry) - _EVALUATED)
                return Match(index, dict(route), ignored)
    return None


def header_names(virtual_service: Mapping[str, Any]) -> list[str]:
    """Every header a route of this VirtualService matches on (to try calls with and without)."""
    names: set[str] = set()
    for route in (virtual_service.get("spec") or {}).get("http") or []:
        for entry in (route or {}).get("match") or []:
            names.update(str(n).lower() for n in ((entry or {}).get("headers") or {}))
    return sorted(names)


def header_values(virtual_service: Mapping[str, Any], name: str) -> list[str]:
    """The exact values routes match for one header (the calls worth trying)."""
    values: set[str] = set()
    for route in (virtual_service.get("spec") or {}).get("http") or []:
        for entry in (route or {}).get("match") or []:
            condition = ((entry or {}).get("headers") or {}).get(name)
            if isinstance(condition, Mapping) and "exact" in condition:
                values.add(str(condition["exact"]))
    return sorted(values)


def seconds(duration: Any) -> float | None:
    """An Istio duration (`5s`, `1500ms`, `1m30s`) in seconds; None when it is not one."""
    if not isinstance(duration, str) or not duration:
        return None
    parts = _DURATION.findall(duration)
    if "".join(number + unit for number, unit in parts) != duration:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def destinations(route: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The weighted destinations of one http route (missing weight: 100 when alone)."""
    return [d for d in route.get("route") or [] if isinstance(d, dict)]
