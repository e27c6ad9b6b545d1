"""The mobile gateway's policy as mesh/istio/gateway states it, read for the local Envoy.

One source of truth: the VirtualService `mobile` (routes, timeouts, retries, CORS), the
AuthorizationPolicy `mobile-gateway` (which rpcs are reachable, which without a token) and the
RequestAuthentication `mobile-gateway` (issuer, audiences). The local gateway is generated from
exactly these objects, so what works through `his up` is what the cluster lets through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GATEWAY_DIR = Path("mesh/istio/gateway")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class PolicyError(ValueError):
    """mesh/istio/gateway says something the local gateway cannot reproduce."""


def seconds(duration: str) -> float:
    """An Istio duration (`1500ms`, `5s`, `24h`, `1h30m`) in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise PolicyError(f"not a duration: {duration!r}")
    return sum(float(n) * _SECONDS[u] for n, u in parts)


@dataclass(frozen=True)
class Retries:
    """A route's retry policy (Istio HTTPRetry)."""

    attempts: int
    retry_on: str
    per_try_timeout_s: float | None


@dataclass(frozen=True)
class Route:
    """One HTTP route of the VirtualService, with its only destination service."""

    name: str
    # Exactly one of the two, as the VirtualService writes it.
    regex: str | None
    prefix: str | None
    # The short service name (`patient`) of the destination host.
    service: str
    timeout_s: float
    retries: Retries | None


@dataclass(frozen=True)
class Cors:
    """The gateway's CORS policy (one for every route)."""

    origins: tuple[str, ...]
    methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age_s: int


@dataclass(frozen=True)
class GatewayPolicy:
    """What mesh/istio/gateway says the mobile gateway does."""

    routes: tuple[Route, ...]
    cors: Cors
    # Paths (`/pkg.Service/Method`) reachable without a token, and with a valid one.
    open_paths: tuple[str, ...]
    signed_in_paths: tuple[str, ...]
    # Whether CORS preflight (OPTIONS) is let in without a token.
    preflight_open: bool
    issuer: str
    audiences: tuple[str, ...]
    forward_token: bool


def load(root: Path) -> GatewayPolicy:
    """The policy in `<root>/mesh/istio/gateway/*.yaml`."""
    objects: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((root / GATEWAY_DIR).glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict):
                objects.setdefault(str(document.get("kind")), []).append(document)
    return parse(objects)


def _one(objects: Mapping[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = objects.get(kind, [])
    if len(found) != 1:
        raise PolicyError(f"mesh/istio/gateway must hold exactly one {kind}, found {len(found)}")
    spec = found[0].get("spec")
    if not isinstance(spec, dict):
        raise PolicyError(f"the {kind} has no spec")
    return spec


def parse(objects: Mapping[str, list[dict[str, Any]]]) -> GatewayPolicy:
    """The policy from the gateway's objects by kind."""
    routes_spec = _one(objects, "VirtualService")
    authz = _one(objects, "AuthorizationPolicy")
    authn = _one(objects, "RequestAuthentication")
    routes, cors = _routes(routes_spec.get("http") or [])
    rules = authn.get("jwtRules") or []
    if len(rules) != 1:
        raise PolicyError("the RequestAuthentication must have exactly one jwtRule")
    rule = rules[0]
    open_paths, signed_in_paths, preflight = _allowed(authz, str(rule["issuer"]))
    return GatewayPolicy(
        routes=routes,
        cors=cors,
        open_paths=open_paths,
        signed_in_paths=signed_in_paths,
        preflight_open=preflight,
        issuer=str(rule["issuer"]),
        audiences=tuple(str(a) for a in rule.get("audiences") or ()),
        forward_token=bool(rule.get("forwardOriginalToken", False)),
    )


def service_of(host: str) -> str:
    """`patient.his.svc.cluster.local` → `patient`."""
    return host.split(".", 1)[0]


def _routes(http: Iterable[dict[str, Any]]) -> tuple[tuple[Route, ...], Cors]:
    routes: list[Route] = []
    policies: list[dict[str, Any]] = []
    for entry in http:
        matches = entry.get("match") or []
        if len(matches) != 1 or not isinstance(matches[0].get("uri"), dict):
            raise PolicyError(f"route {entry.get('name')!r}: one uri match expected")
        uri = matches[0]["uri"]
        services = {service_of(str(d["destination"]["host"])) for d in entry.get("route") or []}
        if len(services) != 1:
            raise PolicyError(f"route {entry.get('name')!r}: one destination service expected")
        retries = entry.get("retries")
        routes.append(
            Route(
                name=str(entry["name"]),
                regex=uri.get("regex"),
                prefix=uri.get("prefix"),
                service=services.pop(),
                timeout_s=seconds(str(entry.get("timeout", "15s"))),
                retries=None
                if not retries
                else Retries(
                    attempts=int(retries.get("attempts", 0)),
                    retry_on=str(retries.get("retryOn", "")),
                    per_try_timeout_s=seconds(str(retries["perTryTimeout"]))
                    if "perTryTimeout" in retries
                    else None,
                ),
            )
        )
        policies.append(entry.get("corsPolicy") or {})
    if not routes or any(p != policies[0] for p in policies):
        raise PolicyError("every route of the mobile VirtualService must carry one CORS policy")
    return tuple(routes), _cors(policies[0])


def _cors(policy: Mapping[str, Any]) -> Cors:
    origins = []
    for origin in policy.get("allowOrigins") or ():
        if set(origin) != {"exact"}:
            raise PolicyError("CORS origins must be `exact` matches")
        origins.append(str(origin["exact"]))
    return Cors(
        origins=tuple(origins),
        methods=tuple(policy.get("allowMethods") or ()),
        allow_headers=tuple(policy.get("allowHeaders") or ()),
        expose_headers=tuple(policy.get("exposeHeaders") or ()),
        max_age_s=int(seconds(str(policy.get("maxAge", "0s")))),
    )


def _allowed(
    authz: Mapping[str, Any], issuer: str
) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(paths open to anyone, paths for a valid token of `issuer`, preflight open)."""
    if authz.get("action", "ALLOW") != "ALLOW":
        raise PolicyError("the gateway's AuthorizationPolicy must be an ALLOW list")
    open_paths: list[str] = []
    signed_in: list[str] = []
    preflight = False
    for rule in authz.get("rules") or ():
        principals = [
            principal
            for source in rule.get("from") or ()
            for principal in source["source"].get("requestPrincipals") or ()
        ]
        for target in rule.get("to") or ():
            operation = target["operation"]
            methods = set(operation.get("methods") or ())
            paths = [str(p) for p in operation.get("paths") or ()]
            if methods == {"OPTIONS"} and not paths and not principals:
                preflight = True
                continue
            if methods != {"POST"} or not paths:
                raise PolicyError("gateway rules allow POST to listed rpc paths (or OPTIONS)")
            if not principals:
                open_paths.extend(paths)
            elif principals == [f"{issuer}/*"]:
                signed_in.extend(paths)
            else:
                raise PolicyError(f"requestPrincipals must be [{issuer}/*], got {principals}")
    return tuple(open_paths), tuple(signed_in), preflight
