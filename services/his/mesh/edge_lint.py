"""The mobile edge: gRPC-web really translated, and the gateway's jwksUri really served.

Istio inserts Envoy's grpc_web filter (gRPC-web → gRPC) in exactly two places: the HTTP connection
manager of a Gateway server whose protocol is GRPC-WEB (such a server cannot carry TLS), and the
inbound side of a sidecar for a Service port whose protocol is grpc-web (appProtocol, else the
port name). A gateway route that reaches neither passes the browser's gRPC-web body to a plain
gRPC server, which cannot read it. istiod fetches a RequestAuthentication's jwksUri itself: an
in-cluster URL must name a Service port that exists and speaks HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from his.base.catalog import BY_NAME, DISCOVERY_PATH, JWKS_PATH
from his.mesh.cluster import Cluster, finding, name_of, namespace_of, spec_of, suggest
from his.mesh.findings import Finding, subject
from his.mesh.routes import istio_host
from his.mesh.sources import Manifest

GRPC_WEB = "grpc-web"
ISTIOD_NAMESPACE = "istio-system"


def port_protocol(port: Mapping[str, Any]) -> str:
    """The protocol Istio reads for a Service port: appProtocol, else the name's prefix."""
    if port.get("appProtocol"):
        return str(port["appProtocol"]).lower()
    name = str(port.get("name", "")).lower()
    return GRPC_WEB if name.startswith(GRPC_WEB) else name.split("-", 1)[0]


def _gateway_servers(cluster: Cluster, vs: Manifest) -> list[dict[str, Any]] | None:
    """The servers of the Gateways a VirtualService is bound to (None: a mesh-only one)."""
    names = [g for g in spec_of(vs).get("gateways") or [] if g != "mesh"]
    if not names:
        return None
    servers: list[dict[str, Any]] = []
    for name in names:
        namespace, _, gateway = str(name).rpartition("/")
        for obj in cluster.of_kind("Gateway"):
            if name_of(obj) == gateway and namespace_of(obj) == (namespace or namespace_of(vs)):
                servers.extend(spec_of(obj).get("servers") or [])
    return servers


def lost_mesh(cluster: Cluster, vs: Manifest) -> list[tuple[str, str]]:
    """The Services of this overlay that a VirtualService bound only to gateways (no `mesh`)
    names as hosts its gateways do not serve: a mesh VirtualService whose `mesh` was replaced,
    its routes applying nowhere. One finding says so (lint.py); the rules a gateway's routes
    answer to (CORS, gRPC-web, binding, every rpc routed) keep quiet about it."""
    written = [str(g) for g in spec_of(vs).get("gateways") or []]
    if not written or "mesh" in written:
        return []
    named = {(g.rpartition("/")[0] or namespace_of(vs), g.rpartition("/")[2]) for g in written}
    gateways = [g for g in cluster.of_kind("Gateway") if (namespace_of(g), name_of(g)) in named]
    lost = []
    for host in spec_of(vs).get("hosts") or []:
        target = cluster.resolve(str(host), namespace_of(vs))
        if target is not None and not any(
            _serves(server, gateway, istio_host(str(host), namespace_of(vs)), namespace_of(vs))
            for gateway in gateways
            for server in spec_of(gateway).get("servers") or []
        ):
            lost.append(target)
    return lost


def _served_port(service: Manifest, number: object) -> Mapping[str, Any] | None:
    """The Service port a route's destination reaches: the one numbered, else the gRPC one."""
    ports = [p for p in spec_of(service).get("ports") or [] if isinstance(p, Mapping)]
    if number is not None:
        return next((p for p in ports if p.get("port") == number), None)
    grpc = [p for p in ports if port_protocol(p) in ("grpc", GRPC_WEB)]
    return grpc[0] if len(grpc) == 1 else (ports[0] if len(ports) == 1 else None)


def _grpc_web_translated(cluster: Cluster) -> Iterator[Finding]:
    for vs in cluster.of_kind("VirtualService"):
        servers = _gateway_servers(cluster, vs)
        if servers is None or lost_mesh(cluster, vs):
            continue
        protocols = {str((s.get("port") or {}).get("protocol", "")).upper() for s in servers}
        if protocols == {"GRPC-WEB"}:
            continue  # translated by the gateway's own Envoy
        for number, route in enumerate(spec_of(vs).get("http") or []):
            for index, target in enumerate(route.get("route") or []):
                destination = target.get("destination") or {}
                host = str(destination.get("host", ""))
                resolved = cluster.resolve(host, namespace_of(vs))
                if resolved is None:
                    continue  # lint's route rules report unknown hosts
                service = cluster.services[resolved]
                wanted = (destination.get("port") or {}).get("number")
                port = _served_port(service, wanted)
                if port is not None and port_protocol(port) == GRPC_WEB:
                    continue
                fix = (
                    f"name the Service {resolved[1]}'s port grpc-web with appProtocol: grpc-web "
                    "(its sidecar then translates), or serve the route from a GRPC-WEB Gateway "
                    "server"
                )
                if port is None:
                    listed = ", ".join(
                        f"{p.get('port')} {p.get('name', '(unnamed)')}"
                        for p in spec_of(service).get("ports") or []
                        if isinstance(p, Mapping)
                    )
                    problem = (
                        f"routes to port {wanted}, which Service {resolved[1]} does not expose "
                        f"(its ports: {listed or 'none'}): the route has no upstream"
                        if wanted is not None
                        else f"names no port, and Service {resolved[1]} has no single grpc-web "
                        f"port to pick (its ports: {listed or 'none'}): Istio cannot tell "
                        "which one gets the gRPC-web calls"
                    )
                    fix = (
                        "set destination.port.number to the Service's grpc-web port"
                        if wanted is not None
                        else fix
                    )
                else:
                    declared = port_protocol(port) or "no protocol"
                    problem = (
                        f"reaches port {port.get('port')} {port.get('name', '(unnamed)')} of "
                        f"protocol {declared}, not grpc-web: Istio inserts no grpc_web filter on "
                        "that path, so browsers' gRPC-web calls arrive untranslated"
                    )
                yield finding(
                    cluster,
                    vs,
                    f"http[{number}].route[{index}]",
                    f"gateway {', '.join(sorted(protocols))} traffic to {host} {problem}",
                    fix,
                )


def _jwks_served(cluster: Cluster) -> Iterator[Finding]:
    for auth in cluster.of_kind("RequestAuthentication"):
        for number, rule in enumerate(spec_of(auth).get("jwtRules") or []):
            uri = rule.get("jwksUri")
            if not uri or rule.get("jwks"):
                continue
            where = f"jwtRules[{number}].jwksUri"
            parts = urlsplit(str(uri))
            if parts.scheme == "https":
                continue  # outside the cluster's manifests: served with a certificate
            host = parts.hostname or ""
            # istiod fetches the keys itself, so its DNS (in istio-system) finds the host.
            resolved = cluster.resolve_dns(host, ISTIOD_NAMESPACE)
            if parts.scheme != "http" or resolved is None:
                yield finding(
                    cluster,
                    auth,
                    where,
                    f"{uri} is neither https nor a Service of this overlay: istiod cannot fetch "
                    "the keys, and every token at the gateway is refused",
                    "use http://<service>.<namespace>.svc.cluster.local:<port>/... of the "
                    "Service serving the JWKS, or an https URL",
                )
                continue
            service = cluster.services[resolved]
            wanted = parts.port or 80
            port = next(
                (p for p in spec_of(service).get("ports") or [] if p.get("port") == wanted), None
            )
            if port is None or port_protocol(port) not in ("http", "http2"):
                what = "no port" if port is None else f"port of protocol {port_protocol(port)!r}"
                yield finding(
                    cluster,
                    auth,
                    where,
                    f"Service {resolved[0]}/{resolved[1]} has {what} {wanted} serving HTTP",
                    f"add an appProtocol: http port {wanted} to the Service (iam: http-keys), "
                    "or point jwksUri at the port that serves the JWKS",
                )
                continue
            yield from _jwks_path(cluster, auth, where, str(uri), resolved)


def _jwks_path(
    cluster: Cluster, auth: Manifest, where: str, uri: str, resolved: tuple[str, str]
) -> Iterator[Finding]:
    """A service of the catalog serving key documents (iam, his.iam.jwks_http) serves the key
    set at JWKS_PATH only: any other path answers 404 (or, for discovery, no key set)."""
    entry = BY_NAME.get(resolved[1])
    path = urlsplit(uri).path or "/"
    if entry is None or entry.http_port is None or path == JWKS_PATH:
        return
    what = (
        "is the OpenID discovery document, not a key set"
        if path == DISCOVERY_PATH
        else f"is not a path {entry.name} serves (it serves {JWKS_PATH} and {DISCOVERY_PATH})"
    )
    yield finding(
        cluster,
        auth,
        where,
        f"path {path!r} {what}: istiod gets no key set from {uri}, so every token at the "
        "gateway is refused",
        f"use the path {JWKS_PATH} (his.base.catalog JWKS_PATH, served by his.iam.jwks_http): "
        + urlunsplit(urlsplit(uri)._replace(path=JWKS_PATH, query="", fragment="")),
    )


# --- the Gateway's servers: protocol, TLS, and a port the gateway Service really exposes ------

_TERMINATING = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")
_OLD_TLS = ("TLSV1_0", "TLSV1_1")
# Istio's TLS versions in order; TLS_AUTO (or unset) means TLSV1_2 as the minimum of a Gateway
# server and TLSV1_3 as its maximum.
_TLS_ORDER = ("TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
_TLS_DEFAULT = {"minProtocolVersion": "TLSV1_2", "maxProtocolVersion": "TLSV1_3"}


def _tls_impossible(tls: Mapping[str, Any]) -> bool:
    """Whether a server's minProtocolVersion is above its maxProtocolVersion (TLS_AUTO or
    unset read as Istio's defaults): no version satisfies both."""
    low, high = (
        _TLS_DEFAULT[field]
        if str(tls.get(field) or "TLS_AUTO").upper() == "TLS_AUTO"
        else str(tls[field]).upper()
        for field in ("minProtocolVersion", "maxProtocolVersion")
    )
    return (
        low in _TLS_ORDER and high in _TLS_ORDER and _TLS_ORDER.index(low) > _TLS_ORDER.index(high)
    )


def gateway_services(cluster: Cluster, gateway: Manifest) -> list[Manifest]:
    """The Services in front of a Gateway's pods (their selector selects a pod it selects)."""
    selector = {str(k): str(v) for k, v in (spec_of(gateway).get("selector") or {}).items()}
    pods = [
        labels
        for namespace, labels in cluster.pods
        if selector and all(labels.get(k) == v for k, v in selector.items())
    ]
    return [
        service
        for service in cluster.services.values()
        if (chosen := spec_of(service).get("selector"))
        and any(all(pod.get(str(k)) == str(v) for k, v in chosen.items()) for pod in pods)
    ]


def _gateway_servers_checked(cluster: Cluster) -> Iterator[Finding]:
    for gateway in cluster.of_kind("Gateway"):
        services = gateway_services(cluster, gateway)
        numbers = {p.get("port") for s in services for p in spec_of(s).get("ports") or []}
        for index, server in enumerate(spec_of(gateway).get("servers") or []):
            where = f"servers[{index}]"
            port = server.get("port") or {}
            protocol = str(port.get("protocol", "")).upper()
            tls = server.get("tls") or {}
            mode = tls.get("mode")
            if _tls_impossible(tls):
                low, high = (
                    tls.get(f) or f"TLS_AUTO (= {_TLS_DEFAULT[f]})"
                    for f in ("minProtocolVersion", "maxProtocolVersion")
                )
                yield finding(
                    cluster,
                    gateway,
                    f"{where}.tls",
                    f"minProtocolVersion {low} is above maxProtocolVersion {high}: no TLS "
                    "version satisfies both, so the gateway refuses every handshake",
                    "set maxProtocolVersion to TLSV1_3 (or remove it) and keep "
                    "minProtocolVersion TLSV1_2 or TLSV1_3",
                )
            if services and port.get("number") not in numbers:
                yield finding(
                    cluster,
                    gateway,
                    f"{where}.port.number",
                    f"{port.get('number')} is no port of the gateway's Service "
                    f"{', '.join(namespace_of(s) + '/' + name_of(s) for s in services)} "
                    f"(ports {sorted(n for n in numbers if n is not None)}): istiod opens the "
                    "listener on that Service port's targetPort, so this server never listens",
                    "use the Service's port number (443 here; the pod listens on its targetPort)",
                )
            if protocol == "HTTPS":
                if mode not in _TERMINATING:
                    yield finding(
                        cluster,
                        gateway,
                        f"{where}.tls.mode",
                        f"HTTPS server with tls.mode {mode!r}: the gateway does not end TLS, so "
                        "it sees no HTTP; routes, CORS and JWT checks never apply",
                        "set tls.mode: SIMPLE with credentialName",
                    )
                elif not tls.get("credentialName") and not tls.get("serverCertificate"):
                    yield finding(
                        cluster,
                        gateway,
                        f"{where}.tls",
                        "no credentialName: the gateway has no certificate and refuses every "
                        "TLS handshake",
                        "set credentialName to the certificate's Secret",
                    )
                version = tls.get("minProtocolVersion")
                if version in _OLD_TLS:
                    yield finding(
                        cluster,
                        gateway,
                        f"{where}.tls.minProtocolVersion",
                        f"{version} accepts TLS versions with known weaknesses for patient data",
                        "set minProtocolVersion: TLSV1_2 (or TLSV1_3)",
                    )
            elif protocol in ("HTTP", "HTTP2", "GRPC", "GRPC-WEB") and not tls.get("httpsRedirect"):
                yield finding(
                    cluster,
                    gateway,
                    f"{where}.port.protocol",
                    f"plaintext {protocol} server for {', '.join(server.get('hosts') or [])}: "
                    "tokens and patient data cross the network unencrypted",
                    "serve HTTPS with tls.mode SIMPLE (or set tls.httpsRedirect: true here)",
                )
            elif protocol in ("TLS", "TCP"):
                yield finding(
                    cluster,
                    gateway,
                    f"{where}.port.protocol",
                    f"{protocol}: the gateway passes bytes through without reading HTTP, so no "
                    "VirtualService http route, CORS policy or JWT rule applies",
                    "use protocol HTTPS with tls.mode SIMPLE",
                )


# --- CORS on every gateway route: what a browser's gRPC-web call needs ------------------------

# Request headers a gRPC-web client sends (grpc-web's own, and the bearer token).
GRPC_WEB_REQUEST_HEADERS = ("content-type", "x-grpc-web", "x-user-agent", "grpc-timeout")
TOKEN_HEADER = "authorization"  # noqa: S105 (a header name)
# Response headers the client must read; browsers hide any not listed.
GRPC_WEB_RESPONSE_HEADERS = ("grpc-status", "grpc-message")


def _any_origin(origin: Any) -> bool:
    if not isinstance(origin, Mapping):
        return False
    return (
        origin.get("exact") == "*"
        or origin.get("prefix") == ""
        or str(origin.get("regex", "")) in (".*", ".+", "^.*$", "*")
    )


def _cors(cluster: Cluster) -> Iterator[Finding]:
    for vs in cluster.of_kind("VirtualService"):
        if _gateway_servers(cluster, vs) is None or lost_mesh(cluster, vs):
            continue  # a mesh VirtualService that lost `mesh`: one finding says so (lint.py)
        for index, route in enumerate(spec_of(vs).get("http") or []):
            label = f"http[{index}] {route.get('name', '')}".rstrip()
            cors = route.get("corsPolicy")
            if not isinstance(cors, Mapping):
                yield finding(
                    cluster,
                    vs,
                    label,
                    "no corsPolicy: browsers refuse the gRPC-web calls this route takes (the "
                    "preflight gets no Access-Control-Allow-Origin)",
                    "add the corsPolicy the other gateway routes use",
                )
                continue
            origins = cors.get("allowOrigins") or []
            if cors.get("allowCredentials") is True and any(_any_origin(o) for o in origins):
                yield finding(
                    cluster,
                    vs,
                    f"{label} corsPolicy.allowOrigins",
                    "any origin with allowCredentials: any web page can call with the user's "
                    "credentials (and browsers refuse a credentialed wildcard anyway)",
                    "list the apps' exact origins",
                )
            allowed = {str(h).lower() for h in cors.get("allowHeaders") or []}
            # A `*` in Access-Control-Allow-Headers never covers Authorization (Fetch standard).
            missing = [
                h
                for h in (*GRPC_WEB_REQUEST_HEADERS, TOKEN_HEADER)
                if h not in allowed and not ("*" in allowed and h != TOKEN_HEADER)
            ]
            if missing:
                yield finding(
                    cluster,
                    vs,
                    f"{label} corsPolicy.allowHeaders",
                    f"does not allow {', '.join(missing)}: the browser's preflight fails for "
                    "every gRPC-web call",
                    f"add {', '.join(missing)} to allowHeaders",
                )
            exposed = {str(h).lower() for h in cors.get("exposeHeaders") or []}
            hidden = [h for h in GRPC_WEB_RESPONSE_HEADERS if h not in exposed]
            if hidden:
                yield finding(
                    cluster,
                    vs,
                    f"{label} corsPolicy.exposeHeaders",
                    f"does not expose {', '.join(hidden)}: the browser hides them, so the "
                    "client cannot tell an error from success",
                    f"add {', '.join(hidden)} to exposeHeaders",
                )
            methods = [str(m).upper() for m in cors.get("allowMethods") or []]
            if methods and "POST" not in methods and "*" not in methods:
                yield finding(
                    cluster,
                    vs,
                    f"{label} corsPolicy.allowMethods",
                    f"{methods} has no POST: every gRPC-web call is a POST",
                    "allow POST",
                )


# --- JWT: audiences set, and an issuer whose keys can be found -------------------------------


def _jwt_audiences(cluster: Cluster) -> Iterator[Finding]:
    for auth in cluster.of_kind("RequestAuthentication"):
        for number, rule in enumerate(spec_of(auth).get("jwtRules") or []):
            where = f"jwtRules[{number}]"
            if not rule.get("audiences"):
                yield finding(
                    cluster,
                    auth,
                    f"{where}.audiences",
                    "no audiences: any token of the issuer is accepted, whatever application "
                    "it was issued for",
                    "list the audience the services check (HIS_AUTH_AUDIENCE, here his)",
                )
            if rule.get("jwksUri") or rule.get("jwks"):
                continue
            # Without either, istiod reads <issuer>/.well-known/openid-configuration itself.
            issuer = urlsplit(str(rule.get("issuer", "")))
            if issuer.scheme != "https" and (
                issuer.scheme != "http"
                or cluster.resolve_dns(issuer.hostname or "", ISTIOD_NAMESPACE) is None
            ):
                yield finding(
                    cluster,
                    auth,
                    where,
                    f"no jwksUri, and issuer {rule.get('issuer')!r} is neither https nor a "
                    "Service of this overlay: istiod cannot discover the keys, so every token "
                    "is refused",
                    "set jwksUri to the Service serving the key set",
                )


# --- the Gateway's pods and hosts: the servers are taken by an Envoy and bound to routes ------


def _template(workload: Manifest, field: str) -> dict[str, str]:
    """The labels or annotations of a workload's pod template."""
    metadata = (spec_of(workload).get("template") or {}).get("metadata") or {}
    return {str(k): str(v) for k, v in (metadata.get(field) or {}).items()}


def _gateway_selects_pods(cluster: Cluster) -> Iterator[Finding]:
    # The repository deploys its gateway itself (gateway injection template): the Deployments
    # whose pods run one are what a Gateway's selector can name.
    gateways = [
        (workload, _template(workload, "labels"))
        for workload in cluster.of_kind("Deployment")
        if _template(workload, "annotations").get("inject.istio.io/templates") == "gateway"
    ]
    for gateway in cluster.of_kind("Gateway"):
        selector = {str(k): str(v) for k, v in (spec_of(gateway).get("selector") or {}).items()}
        if not selector or any(
            all(labels.get(k) == v for k, v in selector.items()) for _, labels in cluster.pods
        ):
            continue
        ours = [
            ", ".join(f"{k}: {labels[k]}" for k in selector if k in labels)
            + f" ({subject(workload)} in {cluster.locate(workload)})"
            for workload, labels in gateways
        ]
        wanted = ", ".join(f"{k}: {v}" for k, v in sorted(selector.items()))
        yield finding(
            cluster,
            gateway,
            "selector",
            f"{wanted} selects no pod of this overlay: no gateway Envoy takes the servers, so "
            f"nothing serves {', '.join(_server_names(gateway)) or 'its hosts'}",
            "select the gateway pods by their labels: " + "; ".join(ours)
            if ours
            else "deploy the gateway (components/istio/mobile-gateway) or select its pods",
            paths=[("spec", "selector")],
        )


def _server_names(gateway: Manifest) -> list[str]:
    return [str(h) for s in spec_of(gateway).get("servers") or [] for h in s.get("hosts") or []]


def _covers(pattern: str, host: str) -> bool:
    """Istio's host match: `*` covers all, `*.example.org` every name ending in .example.org
    (a narrower wildcard too), anything else only itself."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def hosts_intersect(first: str, second: str) -> bool:
    """Whether two hosts of Istio objects (wildcards included) name a common host."""
    a, b = first.lower(), second.lower()
    return _covers(a, b) or _covers(b, a)


def _server_host(host: str, gateway: Manifest) -> tuple[str, str]:
    """(namespace whose VirtualServices may bind, dnsName) of a Gateway server host written
    `ns/name`, `./name` (the Gateway's namespace), `*/name` or `name` (any namespace)."""
    namespace, slash, name = host.rpartition("/")
    if not slash:
        return "*", host
    return (namespace_of(gateway) if namespace == "." else namespace), name


def _serves(server: Mapping[str, Any], gateway: Manifest, host: str, namespace: str) -> bool:
    """Whether a Gateway server takes a host of a VirtualService of `namespace`."""
    for written in server.get("hosts") or []:
        allowed, name = _server_host(str(written), gateway)
        if allowed in ("*", namespace) and hosts_intersect(name, host):
            return True
    return False


def _binds(vs: Manifest, server: Mapping[str, Any], gateway: Manifest) -> bool:
    """Whether a host of the VirtualService matches a host of one Gateway server."""
    return any(
        _serves(server, gateway, istio_host(str(h), namespace_of(vs)), namespace_of(vs))
        for h in spec_of(vs).get("hosts") or []
    )


def _bound_to(cluster: Cluster, gateway: Manifest) -> list[Manifest]:
    """The VirtualServices naming this Gateway in gateways (`ns/name`, or `name` in its
    namespace), except mesh ones that lost `mesh` (reported on their own)."""
    wanted = (namespace_of(gateway), name_of(gateway))
    bound = []
    for vs in cluster.of_kind("VirtualService"):
        for written in spec_of(vs).get("gateways") or []:
            namespace, _, name = str(written).rpartition("/")
            if (namespace or namespace_of(vs), name) == wanted and not lost_mesh(cluster, vs):
                bound.append(vs)
                break
    return bound


def _gateway_hosts_bound(cluster: Cluster) -> Iterator[Finding]:
    """A Gateway server whose hosts no bound VirtualService routes answers 404 to everything;
    a VirtualService sharing no host with its Gateway's servers never applies. When the one
    routes file and the Gateway disagree, the finding is on the Gateway's server and names the
    VirtualService, so one finding covers the one mistake."""
    for gateway in cluster.of_kind("Gateway"):
        bound = _bound_to(cluster, gateway)
        servers = [s for s in spec_of(gateway).get("servers") or [] if isinstance(s, Mapping)]
        if not bound or not servers:
            continue
        orphaned = [
            (index, server)
            for index, server in enumerate(servers)
            if not any(_binds(vs, server, gateway) for vs in bound)
        ]
        routed = [str(h) for vs in bound for h in spec_of(vs).get("hosts") or []]
        listed = "; ".join(
            f"{subject(vs)} ({cluster.locate(vs)}): "
            + ", ".join(str(h) for h in spec_of(vs).get("hosts") or [])
            for vs in bound
        )
        for index, server in orphaned:
            hosts = [str(h) for h in server.get("hosts") or []]
            closest = suggest(_server_host(hosts[0], gateway)[1], routed) if hosts else ""
            yield finding(
                cluster,
                gateway,
                f"servers[{index}].hosts",
                f"{', '.join(hosts)} match no host of the VirtualServices bound to Gateway "
                f"{namespace_of(gateway)}/{name_of(gateway)} ({listed}): Istio binds no route "
                "to this server, so the gateway answers 404 to every call",
                f"serve the host the routes name here{closest}, or route this host in "
                + ", ".join(sorted({cluster.locate(vs) for vs in bound})),
            )
        if orphaned:
            continue
        for vs in bound:
            if not any(_binds(vs, server, gateway) for server in servers):
                yield finding(
                    cluster,
                    vs,
                    "hosts",
                    f"none of {[str(h) for h in spec_of(vs).get('hosts') or []]} is a host of "
                    f"Gateway {namespace_of(gateway)}/{name_of(gateway)}'s servers "
                    f"({', '.join(_server_names(gateway))}): its routes are bound to nothing",
                    "route a host the Gateway serves"
                    + suggest(str((spec_of(vs).get("hosts") or [""])[0]), _server_names(gateway)),
                )


EDGE_RULES = (
    _grpc_web_translated,
    _jwks_served,
    _gateway_servers_checked,
    _cors,
    _jwt_audiences,
    _gateway_selects_pods,
    _gateway_hosts_bound,
)
