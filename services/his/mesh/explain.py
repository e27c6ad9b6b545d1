"""`his mesh explain`: which route of which VirtualService one gRPC call takes, and what then.

Reads the VirtualServices straight from mesh/istio (no kubectl) and picks the route with the
same matcher `his mesh check` uses (his.mesh.routes), so the two tools cannot disagree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from his.base.catalog import lookup
from his.mesh import drills
from his.mesh.cluster import namespace_of, spec_of
from his.mesh.contracts import Rpc, host, rpcs
from his.mesh.routes import first_match, istio_host, unsafe_retries
from his.mesh.sources import Manifest, RootNotFound, Source, documents, repository_root

MESH = "mesh/istio"
DEPLOY = "deploy/kustomize"  # where the gateway's Deployment (its pods' labels) is written
MOBILE_GATEWAY = "his/mobile"
# Its policies apply in every namespace: without selector to all workloads, with one to those
# it selects (Istio's root namespace).
ROOT_NAMESPACE = "istio-system"
# Where Kubernetes puts an object that names no namespace.
DEFAULT_NAMESPACE = "default"
# Istio (HTTPRoute.fault): "timeouts or retries will not be enabled when faults are enabled on the
# client side" — for every call on the route while the fault is set, not only the faulted share.
FAULT_DISABLES = "not applied (fault injection disables them on this route)"
# AuthorizationPolicy fields evaluated for a call through the gateway; any other is named.
_SOURCE_FIELDS = frozenset(
    {
        "requestPrincipals",
        "notRequestPrincipals",
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
    }
)
_OPERATION_FIELDS = frozenset({"methods", "notMethods", "paths", "notPaths"})
# Said of a service whose API is defined but which no server implements yet (catalog).
CONTRACT_ONLY = (
    "contract-only: its API is defined (protos) but no server implements it yet, so no pods "
    "answer; a call routed to it fails with UNAVAILABLE (no healthy upstream)"
)
# What Istio does on a route without `retries` (or with attempts but no retryOn).
ISTIO_DEFAULT_ATTEMPTS = 2
ISTIO_DEFAULT_RETRY_ON = (
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
)
_SHOWN_PATTERN = 60  # characters of a long uri regex worth printing; the file has the rest


class ExplainError(Exception):
    """The call cannot be explained (unknown service, method, drill, header); exit 2."""


@dataclass(frozen=True)
class Destination:
    """One weighted destination of the route and the pod labels its subset selects."""

    host: str
    subset: str | None
    weight: int
    labels: dict[str, str] | None  # None: no DestinationRule defines the subset


@dataclass(frozen=True)
class Authorization:
    """What the gateway's AuthorizationPolicies decide for the call (Istio's ALLOW/DENY order)."""

    allowed: bool
    policy: str  # `AuthorizationPolicy ns/name` that decided, or the ALLOW policies that apply
    file: str
    rule: int | None = None  # index into the policy's rules of the rule that decided
    principal: str | None = None  # the request principal assumed for the call
    ignored: tuple[str, ...] = ()  # conditions not evaluated (taken as holding)
    notes: tuple[str, ...] = ()  # policies whose decision is not ours to know (CUSTOM)

    def line(self) -> str:
        # Rules are named by their index, as in the file and in `his mesh check` findings.
        if self.rule is not None and self.allowed:
            return f"allowed by rules[{self.rule}] of {self.policy}  ({self.file})"
        if self.rule is not None:
            return (
                f"denied (403 PERMISSION_DENIED at the gateway): rules[{self.rule}] of "
                f"{self.policy} denies it  ({self.file})"
            )
        if self.allowed:
            return "allowed: no ALLOW or DENY AuthorizationPolicy selects the gateway"
        return (
            f"denied (403 PERMISSION_DENIED at the gateway): no rule of {self.policy} "
            f"allows it  ({self.file})"
        )


@dataclass(frozen=True)
class Explanation:
    """Everything `his mesh explain` says about one call."""

    rpc: Rpc
    headers: dict[str, str]
    virtual_service: str  # namespace/name
    file: str
    drill: drills.Drill | None = None
    route_index: int | None = None  # None: no route matches
    route_name: str = ""
    matched_by: str = ""
    ignored: tuple[str, ...] = ()
    destinations: tuple[Destination, ...] = ()
    subsets_from: str = ""  # the DestinationRule(s) the labels come from
    timeout: str | None = None
    retries: dict[str, Any] | None = None
    fault: dict[str, Any] | None = None
    authorization: Authorization | None = None  # through the gateway only
    warnings: tuple[str, ...] = field(default=())
    contract_only: bool = False  # no server implements the service yet

    @property
    def route_label(self) -> str:
        """`http[2] patient-reads`: the route by its index in the file, as `his mesh check`
        and `his canary` name routes, then its name."""
        index = f"http[{self.route_index}]"
        return index if self.route_name in ("", index) else f"{index} {self.route_name}"

    @property
    def routed(self) -> bool:
        return self.route_index is not None

    @property
    def denied(self) -> bool:
        return self.authorization is not None and not self.authorization.allowed


# --- inputs ---------------------------------------------------------------------------------


def parse_headers(pairs: Iterable[str]) -> dict[str, str]:
    """`-H key=value` pairs as lower-case header names (HTTP/2 sends them lower-case)."""
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ExplainError(f"header {pair!r} is not KEY=VALUE (e.g. -H x-canary=always)")
        headers[name.strip().lower()] = value
    return headers


def find_rpc(service: str, method: str) -> Rpc:
    """The rpc `method` of `service`, or ExplainError naming the known ones."""
    try:
        known = rpcs(service)
    except ValueError as error:  # the catalog names the known services
        raise ExplainError(str(error)) from error
    for rpc in known:
        if rpc.method == method:
            return rpc
    names = ", ".join(rpc.method for rpc in known)
    raise ExplainError(f"unknown method {method!r} of {service}; known methods: {names}")


def policy(root: Path) -> list[Source]:
    """Every object written under mesh/istio, drills and kustomization files left out."""
    found: list[Source] = []
    for path in sorted((root / MESH).rglob("*.yaml")):
        relative = path.relative_to(root).as_posix()
        if path.name == "kustomization.yaml" or relative.startswith(f"{drills.DRILLS}/"):
            continue
        try:
            found.extend(Source(relative, manifest) for manifest in documents(path))
        except yaml.YAMLError as error:
            raise ExplainError(f"{relative} does not parse: run `his mesh check`") from error
    return found


def _qualified(manifest: Manifest) -> str:
    return (
        f"{namespace_of(manifest, 'default')}/{(manifest.get('metadata') or {}).get('name', '?')}"
    )


def _serves_gateway(manifest: Manifest, gateway: str) -> bool:
    gateways = [str(g) for g in spec_of(manifest).get("gateways") or []]
    if gateway == "mesh":
        return not gateways or "mesh" in gateways
    # A bare gateway name refers to the VirtualService's own namespace.
    return any(
        (g if "/" in g else f"{namespace_of(manifest, 'default')}/{g}") == gateway for g in gateways
    )


def select(sources: list[Source], service: str, *, gateway: bool) -> tuple[Source, list[str]]:
    """The VirtualService the call goes through, and warnings when more than one claims it."""
    candidates = []
    for source in sources:
        manifest = source.manifest
        if manifest.get("kind") != "VirtualService":
            continue
        if gateway:
            if _serves_gateway(manifest, MOBILE_GATEWAY):
                candidates.append(source)
            continue
        hosts = {
            istio_host(str(h), namespace_of(manifest, DEFAULT_NAMESPACE))
            for h in spec_of(manifest).get("hosts") or []
        }
        if host(service) in hosts and _serves_gateway(manifest, "mesh"):
            candidates.append(source)
    if not candidates:
        where = f"gateway {MOBILE_GATEWAY}" if gateway else f"host {host(service)} in the mesh"
        raise ExplainError(f"no VirtualService under {MESH} routes {where}")
    extra = [
        f"warning: {c.file} also claims this traffic (VirtualService "
        f"{_qualified(c.manifest)}); Istio's choice between them is not defined"
        for c in candidates[1:]
    ]
    return candidates[0], extra


def subset_labels(sources: list[Source]) -> dict[str, tuple[str, dict[str, dict[str, str]]]]:
    """Host → (DestinationRule and file, subset name → pod labels)."""
    found: dict[str, tuple[str, dict[str, dict[str, str]]]] = {}
    for source in sources:
        manifest = source.manifest
        if manifest.get("kind") != "DestinationRule":
            continue
        spec = spec_of(manifest)
        subsets = {
            str(s.get("name")): {str(k): str(v) for k, v in (s.get("labels") or {}).items()}
            for s in spec.get("subsets") or []
            if isinstance(s, dict)
        }
        rule = f"DestinationRule {_qualified(manifest)} in {source.file}"
        found.setdefault(
            istio_host(str(spec.get("host", "")), namespace_of(manifest, DEFAULT_NAMESPACE)),
            (rule, subsets),
        )
    return found


# --- the route ------------------------------------------------------------------------------


def _condition(kind: str, condition: Any) -> str:
    if not isinstance(condition, Mapping) or not condition:
        return f"{kind} present"
    operator, value = next(iter(condition.items()))
    text = str(value)
    if len(text) > _SHOWN_PATTERN:
        text = text[:_SHOWN_PATTERN] + "…"
    return f'{kind} {operator} "{text}"'


def describe_entry(entry: Mapping[str, Any]) -> str:
    """The conditions of one match entry in words (`uri regex "…" and header x-canary …`)."""
    parts: list[str] = []
    for kind in ("uri", "method"):
        if kind in entry:
            parts.append(_condition(kind, entry[kind]))
    for name, condition in (entry.get("headers") or {}).items():
        parts.append(_condition(f"header {name}", condition))
    for name, condition in (entry.get("withoutHeaders") or {}).items():
        parts.append(_condition(f"without header {name}", condition))
    return " and ".join(parts) or "an empty match (every call)"


def matched_entry(route: Mapping[str, Any], path: str, headers: Mapping[str, str]) -> str:
    """Why the route took the call: the first of its match entries that holds."""
    for entry in route.get("match") or []:
        alone = {"spec": {"http": [{"match": [entry]}]}}
        if isinstance(entry, Mapping) and first_match(alone, path, headers) is not None:
            return "matched " + describe_entry(entry)
    return "no match conditions: it takes every call that reaches it"


def _destinations(
    route: Mapping[str, Any], namespace: str, rules: Mapping[str, Any]
) -> tuple[tuple[Destination, ...], str]:
    entries = [d for d in route.get("route") or [] if isinstance(d, dict)]
    found: list[Destination] = []
    used: list[str] = []
    for entry in entries:
        target = entry.get("destination") or {}
        name = istio_host(str(target.get("host", "")), namespace)
        subset = target.get("subset")
        default = 100 if len(entries) == 1 else 0  # Istio: a lone destination takes everything
        weight = int(entry.get("weight", default) or 0)
        rule, subsets = rules.get(name, ("", {}))
        if rule and rule not in used:
            used.append(rule)
        labels = subsets.get(str(subset)) if subset is not None else {}
        found.append(Destination(name, None if subset is None else str(subset), weight, labels))
    return tuple(found), "; ".join(used)


def retry_plan(retries: Mapping[str, Any] | None) -> tuple[int, list[str]]:
    """(retries, retryOn tokens) as Envoy will apply them, Istio's defaults filled in."""
    if not isinstance(retries, Mapping):
        return ISTIO_DEFAULT_ATTEMPTS, ISTIO_DEFAULT_RETRY_ON.split(",")
    attempts = int(retries.get("attempts") or 0)
    text = str(retries.get("retryOn") or ISTIO_DEFAULT_RETRY_ON)
    return attempts, [token.strip() for token in text.split(",") if token.strip()]


def class_warnings(rpc: Rpc, route_name: str, retries: Mapping[str, Any] | None) -> list[str]:
    """The proto's class against the route's retries (informational; the check enforces it)."""
    attempts, tokens = retry_plan(retries)
    unsafe = unsafe_retries(rpc.repeatable, attempts, tokens)
    if unsafe is None:
        return []
    if rpc.repeatable:
        return [
            f"warning: {rpc.method} is read-class but route {route_name} does not retry on "
            "unavailable: a call that met a restarting pod fails instead of trying another"
        ]
    return [
        f"warning: {rpc.method} is write-class but route {route_name} retries on "
        f"{','.join(unsafe)}: the server may have committed it before the answer was lost"
    ]


def explain(
    root: Path,
    service: str,
    method: str,
    headers: Mapping[str, str] | None = None,
    *,
    gateway: bool = False,
    drill: str | None = None,
) -> Explanation:
    """How the mesh routes one call of `service`.`method` with these headers."""
    rpc = find_rpc(service, method)
    contract_only = not lookup(service).implemented
    given = {name.lower(): value for name, value in (headers or {}).items()}
    sources = policy(root)
    try:
        chosen, warnings = select(sources, service, gateway=gateway)
    except ExplainError as error:
        if contract_only:
            raise ExplainError(
                f"{error}; {service} is {CONTRACT_ONLY.partition(',')[0]}"
            ) from error
        raise
    manifest, applied = _with_drill(root, chosen.manifest, service, drill, gateway=gateway)
    base = Explanation(
        rpc,
        given,
        _qualified(manifest),
        chosen.file,
        drill=applied,
        authorization=authorize(root, sources, rpc, given) if gateway else None,
        contract_only=contract_only,
    )
    match = first_match(manifest, rpc.path, given)
    if match is None:
        return replace(base, warnings=tuple(warnings))
    route = match.route
    retries = route.get("retries") if isinstance(route.get("retries"), dict) else None
    found, rules = _destinations(
        route, namespace_of(manifest, DEFAULT_NAMESPACE), subset_labels(sources)
    )
    warnings.extend(class_warnings(rpc, match.name, retries))
    return replace(
        base,
        route_index=match.index,
        route_name=match.name,
        matched_by=matched_entry(route, rpc.path, given),
        ignored=tuple(match.ignored),
        destinations=found,
        subsets_from=rules,
        timeout=None if route.get("timeout") is None else str(route["timeout"]),
        retries=retries,
        fault=route.get("fault") if isinstance(route.get("fault"), dict) else None,
        warnings=tuple(warnings),
    )


def _with_drill(
    root: Path, manifest: Manifest, service: str, name: str | None, *, gateway: bool
) -> tuple[Manifest, drills.Drill | None]:
    """The VirtualService with the drill's JSON patch applied (drills patch his/<service>)."""
    if name is None:
        return manifest, None
    try:
        drill = drills.find(root, name)
    except drills.DrillError as error:
        raise ExplainError(str(error)) from error
    if drill.service != service:
        raise ExplainError(
            f"drill {drill.name} patches VirtualService his/{drill.service}, not {service}'s"
        )
    if gateway:
        raise ExplainError(
            f"drill {drill.name} patches VirtualService his/{drill.service}; calls through "
            f"the gateway go through {_qualified(manifest)}, which no drill changes"
        )
    try:
        return drills.apply(manifest, drill.operations), drill
    except drills.DrillError as error:
        raise ExplainError(f"drill {drill.name} ({drill.file}) does not apply: {error}") from error


# --- the gateway's AuthorizationPolicies ----------------------------------------------------


def _pattern(pattern: str, value: str | None) -> bool:
    """Istio's string match in policies: exact, `prefix*`, `*suffix` or `*` (any present value)."""
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _field(values: Any, value: str | None, *, negated: bool) -> bool:
    hit = any(_pattern(str(v), value) for v in values or [])
    return not hit if negated else hit


def _rule_matches(
    rule: Mapping[str, Any], path: str, principal: str | None, ignored: list[str]
) -> bool:
    """A rule holds when one of its `from` and one of its `to` entries hold (absent: any)."""
    sources = [s.get("source") or {} for s in rule.get("from") or [] if isinstance(s, Mapping)]
    operations = [o.get("operation") or {} for o in rule.get("to") or [] if isinstance(o, Mapping)]
    # A call from outside the mesh reaches the gateway without mTLS: it has no peer identity, so
    # `principals` and `namespaces` (both read from the peer certificate) never match and their
    # `not` forms always do; only the JWT's request principal is known. gRPC is POST.
    values = {
        "requestPrincipals": principal,
        "principals": None,
        "namespaces": None,
        "methods": "POST",
        "paths": path,
    }
    values.update({"not" + name[0].upper() + name[1:]: value for name, value in values.items()})

    def holds(entry: Mapping[str, Any], evaluated: frozenset[str]) -> bool:
        ignored.extend(f"{name} (not evaluated)" for name in sorted(set(entry) - evaluated))
        return all(
            _field(entry[name], values[name], negated=name.startswith("not"))
            for name in entry
            if name in evaluated
        )

    if rule.get("when"):
        ignored.append("when (not evaluated)")
    return (not sources or any(holds(s, _SOURCE_FIELDS) for s in sources)) and (
        not operations or any(holds(o, _OPERATION_FIELDS) for o in operations)
    )


def _gateway_labels(root: Path, sources: list[Source]) -> tuple[str, dict[str, str]]:
    """Namespace and labels of the mobile Gateway's pods.

    The Gateway's selector names only some of the pods' labels; a policy may select them by any
    other (`app: mobile-gateway`), so the labels of the Deployment whose pod template carries
    the selector are added. Without such a Deployment the selector is all that is known.
    """
    namespace, _, name = MOBILE_GATEWAY.partition("/")
    gateway = next(
        (
            s.manifest
            for s in sources
            if s.manifest.get("kind") == "Gateway" and _qualified(s.manifest) == MOBILE_GATEWAY
        ),
        None,
    )
    if gateway is None:
        raise ExplainError(f"no Gateway {MOBILE_GATEWAY} under {MESH} ({name})")
    labels = {str(k): str(v) for k, v in (spec_of(gateway).get("selector") or {}).items()}
    for path in sorted((root / DEPLOY).rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        try:
            manifests = list(documents(path))
        except yaml.YAMLError as error:
            relative = path.relative_to(root).as_posix()
            raise ExplainError(f"{relative} does not parse: run `his mesh check`") from error
        for manifest in manifests:
            template = (spec_of(manifest).get("template") or {}).get("metadata") or {}
            pods = {str(k): str(v) for k, v in (template.get("labels") or {}).items()}
            # The pods' labels include the selector (an empty one would match any Deployment).
            if manifest.get("kind") == "Deployment" and labels and labels.items() <= pods.items():
                own = (manifest.get("metadata") or {}).get("namespace")
                return str(own or namespace), pods
    return namespace, labels


def _issuer(sources: list[Source], namespace: str, labels: Mapping[str, str]) -> str | None:
    """The JWT issuer the gateway's RequestAuthentication accepts (its first jwtRule)."""
    for source in sources:
        manifest = source.manifest
        if manifest.get("kind") == "RequestAuthentication" and _selects(
            manifest, namespace, labels
        ):
            for rule in spec_of(manifest).get("jwtRules") or []:
                if isinstance(rule, Mapping) and rule.get("issuer"):
                    return str(rule["issuer"])
    return None


def _selects(manifest: Manifest, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether a policy applies to the pods: its own namespace or the root one, and its selector."""
    if namespace_of(manifest, DEFAULT_NAMESPACE) not in (namespace, ROOT_NAMESPACE):
        return False
    selector = (spec_of(manifest).get("selector") or {}).get("matchLabels") or {}
    return all(labels.get(str(k)) == str(v) for k, v in selector.items())


def authorize(
    root: Path, sources: list[Source], rpc: Rpc, headers: Mapping[str, str]
) -> Authorization:
    """What the mobile gateway's AuthorizationPolicies decide for a gRPC call (always POST).

    With an `authorization` header the call is taken to carry a valid JWT of the issuer the
    gateway's RequestAuthentication accepts (request principal `<issuer>/<subject>`); without
    one it has no request principal. CUSTOM policies are only named: Istio asks their external
    authorizer first, and its answer is not in the repository. Then DENY policies, then: allowed
    when some rule of an ALLOW policy holds, denied when ALLOW policies apply and none does.
    """
    namespace, labels = _gateway_labels(root, sources)
    issuer = _issuer(sources, namespace, labels)
    principal = f"{issuer}/<subject>" if issuer and "authorization" in headers else None
    ignored: list[str] = []
    selecting = [
        s
        for s in sources
        if s.manifest.get("kind") == "AuthorizationPolicy"
        and _selects(s.manifest, namespace, labels)
    ]

    def acting(action: str) -> list[Source]:
        return [s for s in selecting if (spec_of(s.manifest).get("action") or "ALLOW") == action]

    notes = tuple(
        f"AuthorizationPolicy {_qualified(s.manifest)} (CUSTOM, {s.file}) not evaluated "
        "(an external authorizer decides first)"
        for s in acting("CUSTOM")
    )
    for source in acting("DENY"):
        for index, rule in enumerate(spec_of(source.manifest).get("rules") or []):
            if isinstance(rule, Mapping) and _rule_matches(rule, rpc.path, principal, ignored):
                policy = f"AuthorizationPolicy {_qualified(source.manifest)}"
                return Authorization(
                    False, policy, source.file, index, principal, tuple(ignored), notes
                )
    allow = acting("ALLOW")
    for source in allow:
        for index, rule in enumerate(spec_of(source.manifest).get("rules") or []):
            if isinstance(rule, Mapping) and _rule_matches(rule, rpc.path, principal, ignored):
                policy = f"AuthorizationPolicy {_qualified(source.manifest)}"
                return Authorization(
                    True, policy, source.file, index, principal, tuple(ignored), notes
                )
    if not allow:
        return Authorization(True, "", "", None, principal, tuple(ignored), notes)
    # The policy with rules names the decision; an empty one (default-deny) allows nothing.
    named = [s for s in allow if spec_of(s.manifest).get("rules")] or allow
    return Authorization(
        False,
        " or ".join(f"AuthorizationPolicy {_qualified(s.manifest)}" for s in named),
        ", ".join(dict.fromkeys(s.file for s in named)),
        None,
        principal,
        tuple(dict.fromkeys(ignored)),
        notes,
    )


# --- the report -----------------------------------------------------------------------------


def _percent(value: Any) -> str:
    return f"{value:g}%" if isinstance(value, int | float) else f"{value}%"


def describe_fault(fault: Mapping[str, Any] | None) -> str:
    """The fault a drill injects, in words."""
    if not fault:
        return "none"
    parts: list[str] = []
    abort = fault.get("abort")
    if isinstance(abort, Mapping):
        status = next(
            (f"{k} {abort[k]}" for k in ("grpcStatus", "httpStatus", "http2Error") if k in abort),
            "?",
        )
        share = (abort.get("percentage") or {}).get("value", 100)
        parts.append(
            f"abort {status} for {_percent(share)} of calls (not retried: the fault filter "
            "answers before the router)"
        )
    delay = fault.get("delay")
    if isinstance(delay, Mapping):
        share = (delay.get("percentage") or {}).get("value", 100)
        parts.append(f"delay {delay.get('fixedDelay', '?')} for {_percent(share)} of calls")
    return "; ".join(parts) or "present but neither abort nor delay"


def describe_retries(retries: Mapping[str, Any] | None) -> str:
    """The retries of the route as Envoy will apply them."""
    attempts, tokens = retry_plan(retries)
    if retries is None:
        return (
            f"not stated: Istio's default applies ({attempts} retries on {','.join(tokens)}; "
            "writes included)"
        )
    if attempts == 0:
        return "none (attempts 0)"
    per_try = retries.get("perTryTimeout")
    per_try_text = f"perTryTimeout {per_try}" if per_try else "perTryTimeout = the route timeout"
    default = "" if retries.get("retryOn") else " (Istio's default retryOn)"
    noun = "retry" if attempts == 1 else "retries"
    return (
        f"{attempts} {noun}, {per_try_text}, on {','.join(tokens)}{default}  "
        f"(at most {attempts + 1} tries)"
    )


def _destination_line(destinations: Sequence[Destination]) -> str:
    by_host: dict[str, list[str]] = {}
    for d in destinations:
        where = f"subset {d.subset} {d.weight}%" if d.subset else f"{d.weight}%"
        by_host.setdefault(d.host, []).append(where)
    return "; ".join(f"{name} {', '.join(parts)}" for name, parts in by_host.items())


def _subsets_line(destinations: Sequence[Destination], rules: str) -> str:
    parts: list[str] = []
    for d in destinations:
        if d.subset is None:
            continue
        if d.labels is None:
            parts.append(f"{d.subset} = no such subset (Istio answers UNAVAILABLE)")
        else:
            labels = ", ".join(f"{k} {v}" for k, v in d.labels.items()) or "every pod"
            parts.append(f"{d.subset} = {labels}")
    text = ", ".join(dict.fromkeys(parts))
    return f"{text}  ({rules})" if rules else text


def format(explanation: Explanation) -> str:
    """The report `his mesh explain` prints."""
    e = explanation
    proto = (
        "NO_SIDE_EFFECTS/IDEMPOTENT in the proto"
        if e.rpc.repeatable
        else "neither NO_SIDE_EFFECTS nor IDEMPOTENT in the proto"
    )
    lines = [f"call        {e.rpc.path}  ({e.rpc.kind}: {proto})"]
    if e.contract_only:
        lines.append(f"service     {e.rpc.service} is {CONTRACT_ONLY}")
    if e.headers:
        lines.append("headers     " + ", ".join(f"{k}: {v}" for k, v in e.headers.items()))
    lines.append(f"through     VirtualService {e.virtual_service}  ({e.file})")
    if e.drill is not None:
        lines.append(f"drill       {e.drill.name} applied  ({e.drill.file})")
    if e.authorization is not None:
        lines.append(f"authorization  {e.authorization.line()}")
        if e.authorization.principal:
            lines.append(
                f"principal   {e.authorization.principal}  (assumed: the authorization header "
                "carries a valid JWT of the gateway's issuer)"
            )
        if e.authorization.ignored:
            lines.append(f"ignored     {', '.join(e.authorization.ignored)}: taken as holding")
        lines.extend(f"note        {note}" for note in e.authorization.notes)
    if e.denied:
        would = f"it would take {e.route_label}" if e.routed else "none matches either"
        lines.append(f"route       not reached (the gateway refuses the call first); {would}")
        lines.extend(e.warnings)
        return "\n".join(lines)
    if not e.routed:
        lines.append(
            "route       none matches: Istio answers HTTP 404, which the gRPC client sees as "
            "UNIMPLEMENTED"
        )
        lines.extend(e.warnings)
        return "\n".join(lines)
    lines.append(f"route       {e.route_label}  ({e.matched_by})")
    if e.ignored:
        lines.append(
            f"ignored     {', '.join(e.ignored)}: not evaluated here; the route was taken as "
            "if they hold"
        )
    lines.append(f"destination {_destination_line(e.destinations)}")
    subsets = _subsets_line(e.destinations, e.subsets_from)
    if subsets:
        lines.append(f"subsets     {subsets}")
    timeout = (
        e.timeout if e.timeout else "none stated (Istio sets none: the caller's deadline decides)"
    )
    retries = describe_retries(e.retries)
    if e.fault:
        # Istio turns the route's timeout and retries off while a fault is set on it.
        lines.append(f"timeout     {FAULT_DISABLES}; configured: {timeout}")
        lines.append(f"retries     {FAULT_DISABLES}; configured: {retries}")
    else:
        lines.append(f"timeout     {timeout}")
        lines.append(f"retries     {retries}")
    lines.append(f"fault       {describe_fault(e.fault)}")
    if e.fault:
        lines.append(
            "while set   every call on this route, faulted or not, is bounded only by the "
            "callers' own deadlines and circuit breakers: no mesh timeout, no mesh retry"
        )
    lines.extend(e.warnings)
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """`his mesh explain`: 0 routed, 1 no route matches or the gateway denies, 2 cannot explain."""
    try:
        root = repository_root(args.root)
        explanation = explain(
            root,
            args.service,
            args.method,
            parse_headers(args.header or []),
            gateway=args.gateway,
            drill=args.drill,
        )
    except (RootNotFound, ExplainError) as error:
        print(f"his mesh explain: {error}", file=sys.stderr)
        return 2
    print(format(explanation))
    return 0 if explanation.routed and not explanation.denied else 1
