"""Lint of who may call what: AuthorizationPolicies, PeerAuthentication, the gateway's JWT.

The model this repository follows, and these rules hold every change to: STRICT mTLS mesh-wide;
a namespace-wide default deny; per service one ALLOW policy whose every rule names callers by
ServiceAccount principal and rpcs by exact path; at the mobile gateway only CORS preflight and
login pass without a JWT from the issuer the services trust.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from his.base.catalog import DISCOVERY_PATH, JWKS_PATH, implemented
from his.mesh.calls import calls_to
from his.mesh.cluster import Cluster, finding, namespace_of, spec_of, suggest
from his.mesh.contracts import Rpc, all_paths
from his.mesh.findings import Finding
from his.mesh.sources import Manifest

# --- AuthorizationPolicies: real rpcs, real callers ------------------------------------------


# gRPC services every server of the repository registers beside its own (his.runtime.server):
# a policy may name them (a mesh-wide DENY of reflection); they belong to no one service.
SERVED_BY_EVERY_SERVER = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def _authorization(cluster: Cluster) -> Iterator[Finding]:
    paths = all_paths()
    services = {rpc.grpc_service: rpc.service for rpc in paths.values()}
    services.update(dict.fromkeys(SERVED_BY_EVERY_SERVER, ""))
    for policy in cluster.of_kind("AuthorizationPolicy"):
        app = ((spec_of(policy).get("selector") or {}).get("matchLabels") or {}).get("app")
        for number, rule in enumerate(spec_of(policy).get("rules") or []):
            if app == KEYS_APP and key_documents(rule):
                continue
            for index, source in enumerate(rule.get("from") or []):
                for principal in (source.get("source") or {}).get("principals") or []:
                    yield from _principal(
                        cluster, policy, f"rules[{number}].from[{index}]", str(principal)
                    )
            for index, target in enumerate(rule.get("to") or []):
                operation = target.get("operation") or {}
                for field_name in ("paths", "notPaths"):
                    for path in operation.get(field_name) or []:
                        yield from _path(
                            cluster,
                            policy,
                            f"rules[{number}].to[{index}]",
                            str(path),
                            paths=paths,
                            services=services,
                            app=app,
                        )


def _principal(cluster: Cluster, policy: Manifest, where: str, principal: str) -> Iterator[Finding]:
    parts = principal.split("/")
    shaped = len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa"
    if not shaped:
        if principal != "*":
            yield finding(
                cluster,
                policy,
                where,
                f"principal {principal!r} is not cluster.local/ns/<namespace>/sa/<serviceaccount>",
                "name the caller's ServiceAccount",
            )
        return
    if parts[0] != "cluster.local":
        yield finding(
            cluster,
            policy,
            where,
            f"trust domain {parts[0]!r} is not cluster.local",
            "use cluster.local/ns/<namespace>/sa/<serviceaccount>",
        )
    if (parts[2], parts[4]) not in cluster.accounts:
        known = sorted(f"cluster.local/ns/{ns}/sa/{name}" for ns, name in cluster.accounts)
        yield finding(
            cluster,
            policy,
            where,
            f"principal {principal!r} names no ServiceAccount of this overlay, so the "
            "rule never matches",
            "name a real ServiceAccount" + suggest(principal, known),
        )


def _path(
    cluster: Cluster,
    policy: Manifest,
    where: str,
    path: str,
    *,
    paths: Mapping[str, Rpc],
    services: Mapping[str, str],
    app: object,
) -> Iterator[Finding]:
    if path.endswith("/*"):
        grpc_service = path[1:-2]
        if not path.startswith("/") or grpc_service not in services:
            yield finding(
                cluster,
                policy,
                where,
                f"path {path!r} names no gRPC service",
                "use /<package>.<Service>/* of a real service"
                + suggest(grpc_service, sorted(services)),
            )
            return
        owner = services[grpc_service]
    elif path in paths:
        owner = paths[path].service
    else:
        grpc_service, _, method = path.lstrip("/").partition("/")
        if grpc_service in services:
            methods = [rpc.method for rpc in paths.values() if rpc.grpc_service == grpc_service]
            fix = "use a real rpc" + suggest(method, methods)
        else:
            fix = "use /<package>.<Service>/<Method> of a real rpc" + suggest(path, sorted(paths))
        yield finding(cluster, policy, where, f"path {path!r} is not an rpc of any service", fix)
        return
    if owner and isinstance(app, str) and app in {e.name for e in implemented()} and owner != app:
        yield finding(
            cluster,
            policy,
            where,
            f"path {path!r} is an rpc of {owner}, but this policy guards {app}",
            f"move the rule to mesh/istio/authorization/{owner}.yaml",
        )


# --- the shape of every policy: default deny, ALLOW only, principals and exact paths ----------

GATEWAY_SELECTOR = {"istio": "mobile-gateway"}
GATEWAY_PRINCIPAL = "cluster.local/ns/his/sa/mobile-gateway"
# The only rpcs a caller without a token may reach through the gateway: the sign-in rpcs (staff
# enrol with a one-time code and log in with IssueToken; patients ask for a one-time code, then
# trade it for a token).
LOGIN = "/his.iam.v1.IamService/IssueToken"
SIGN_IN = frozenset(
    {
        LOGIN,
        "/his.iam.v1.IamService/CompleteStaffEnrolment",
        "/his.iam.v1.IamService/StartPatientSignIn",
        "/his.iam.v1.IamService/CompletePatientSignIn",
    }
)
# iam's public key documents (services/his/iam/jwks_http.py) on its http-keys port: istiod fetches
# the gateway's jwksUri there from outside the mesh, so that one rule names no caller and that
# one port takes plaintext. Nothing else may.
KEYS_APP = "iam"
KEYS_PORT = "8080"
KEY_DOCUMENTS = frozenset({JWKS_PATH, DISCOVERY_PATH})
_SOURCE_FIELDS = {"principals"}
_GATEWAY_SOURCE_FIELDS = {"requestPrincipals"}


def _selector(policy: Manifest) -> dict[str, Any]:
    return dict((spec_of(policy).get("selector") or {}).get("matchLabels") or {})


def _default_deny(cluster: Cluster) -> Iterator[Finding]:
    policies = [p for p in cluster.of_kind("AuthorizationPolicy") if namespace_of(p) == "his"]
    # An ALLOW policy with no selector and no rules denies everything in its namespace (in the
    # root namespace istio-system: in the whole mesh); `action: ALLOW` may be written or not.
    denies_all = [
        p
        for p in cluster.of_kind("AuthorizationPolicy")
        if namespace_of(p) in ("his", "istio-system")
        and set(spec_of(p)) <= {"action"}
        and spec_of(p).get("action", "ALLOW") == "ALLOW"
    ]
    if not denies_all:
        yield Finding(
            "mesh/istio/authorization/default-deny.yaml",
            "AuthorizationPolicy his/default-deny",
            "no namespace-wide default deny (an AuthorizationPolicy with `spec: {}`): a workload "
            "no ALLOW policy selects accepts every caller",
            "restore mesh/istio/authorization/default-deny.yaml and list it in kustomization.yaml",
        )
    for policy in policies:
        spec = spec_of(policy)
        if spec and not _selector(policy) and spec.get("rules"):
            yield finding(
                cluster,
                policy,
                "",
                "a namespace-wide policy with rules applies to "
                "every workload in his, the database included",
                "select the workload it is for (selector.matchLabels)",
            )


def _shape(cluster: Cluster) -> Iterator[Finding]:
    services = {entry.name for entry in implemented()}
    for policy in cluster.of_kind("AuthorizationPolicy"):
        spec = spec_of(policy)
        action = spec.get("action", "ALLOW")
        if action == "DENY" and namespace_of(policy) == ROOT_NAMESPACE:
            # Mesh-wide hardening (refuse reflection, a namespace, a port): a DENY can only
            # refuse what the ALLOW lists admit, never admit more. Unless a rule of it names
            # nothing positive: then it refuses nearly every call in the mesh.
            for number, rule in enumerate(spec.get("rules") or []):
                if _names_nothing_positive(rule or {}):
                    yield finding(
                        cluster,
                        policy,
                        f"rules[{number}]",
                        f"a DENY in the root namespace {ROOT_NAMESPACE} whose rule names nothing "
                        "positive (empty, or only not* matchers) refuses nearly every call in the "
                        "mesh: health checks, istiod, the gateway",
                        "name positively what it refuses (paths, ports, principals, namespaces)",
                    )
            continue
        if action == "CUSTOM":
            provider = (spec.get("provider") or {}).get("name")
            yield finding(
                cluster,
                policy,
                "action",
                (
                    f"CUSTOM hands the decision to an external authorizer ({provider}) that this "
                    "repository does not define: istiod refuses a CUSTOM policy whose provider "
                    "is not in meshConfig.extensionProviders, and the calls it selects are "
                    "decided outside the policy the check reads"
                    if provider
                    else "CUSTOM names no provider: istiod refuses a CUSTOM policy whose "
                    "provider is not in meshConfig.extensionProviders"
                ),
                "express it as ALLOW rules per service (or a DENY in istio-system for "
                "mesh-wide hardening)",
            )
            continue
        if action != "ALLOW":
            yield finding(
                cluster,
                policy,
                "action",
                f"{action} in namespace {namespace_of(policy)}: this repository's model "
                "for a namespace is default deny plus ALLOW lists, and a DENY there is easy to "
                "get backwards (notPrincipals, notPaths)",
                "express it as a narrower ALLOW policy, or move mesh-wide hardening to a DENY "
                f"policy in {ROOT_NAMESPACE}",
            )
            continue
        selector = _selector(policy)
        gateway = selector == GATEWAY_SELECTOR
        if not gateway and selector.get("app") not in services:
            continue
        for number, rule in enumerate(spec.get("rules") or []):
            yield from _rule_shape(cluster, policy, f"rules[{number}]", rule, gateway=gateway)


# The matchers that name what a rule matches; every other one (notPrincipals, notPaths, ...)
# names only what it does not, so a rule of them alone matches nearly every request.
_POSITIVE_SOURCE = {"principals", "requestPrincipals", "namespaces", "ipBlocks", "remoteIpBlocks"}
_POSITIVE_OPERATION = {"hosts", "ports", "methods", "paths"}


def _names_nothing_positive(rule: Mapping[str, Any]) -> bool:
    """A rule matching nearly every request. Its from, to and when must all hold (AND); the
    entries of from and of to are alternatives (OR), so one entry without a positive matcher
    leaves that part open, and an absent part is open."""
    sources = [s.get("source") or {} for s in rule.get("from") or []]
    operations = [t.get("operation") or {} for t in rule.get("to") or []]
    conditions = rule.get("when") or []
    from_open = not sources or any(not _POSITIVE_SOURCE & set(s) for s in sources)
    to_open = not operations or any(not _POSITIVE_OPERATION & set(op) for op in operations)
    when_open = not any((c or {}).get("values") for c in conditions)
    return from_open and to_open and when_open


def _rule_shape(
    cluster: Cluster, policy: Manifest, where: str, rule: Mapping[str, Any], *, gateway: bool
) -> Iterator[Finding]:
    operations = [t.get("operation") or {} for t in rule.get("to") or []]
    if gateway and _preflight_or_login(rule, operations):
        return
    if _selector(policy).get("app") == KEYS_APP and key_documents(rule):
        return
    allowed = _GATEWAY_SOURCE_FIELDS if gateway else _SOURCE_FIELDS
    sources = [s.get("source") or {} for s in rule.get("from") or []]
    who = "requestPrincipals (a valid JWT)" if gateway else "principals (ServiceAccounts)"
    if not sources or any(not set(s) & allowed for s in sources):
        yield finding(
            cluster,
            policy,
            where,
            "a rule without " + who + ": any caller matches it",
            f"name the callers in from[].source.{sorted(allowed)[0]}",
        )
    for source in sources:
        for principal in source.get("principals") or []:
            if "*" in str(principal):
                yield finding(
                    cluster,
                    policy,
                    where,
                    f"principal {principal!r} matches many workloads, not one caller",
                    "name each caller's ServiceAccount",
                )
        for name in sorted(set(source) - allowed):
            yield finding(
                cluster,
                policy,
                where,
                f"source.{name}: callers must be named by " + who,
                f"replace {name} with {sorted(allowed)[0]}",
            )
    if not operations or any(not op.get("paths") for op in operations):
        yield finding(
            cluster,
            policy,
            where,
            "a rule without to[].operation.paths allows every rpc, including ones added later",
            "list the rpcs it allows",
        )
    for op in operations:
        for path in op.get("paths") or []:
            if "*" in str(path):
                yield finding(
                    cluster,
                    policy,
                    where,
                    f"wildcard path {path!r} allows every rpc "
                    "of the service, including ones added later",
                    "list the rpcs the caller makes",
                )


def key_documents(rule: Mapping[str, Any]) -> bool:
    """The rule letting anyone GET iam's public key documents on its http-keys port only."""
    operations = [t.get("operation") or {} for t in rule.get("to") or []]
    return (
        not rule.get("from")
        and bool(operations)
        and all(
            [str(p) for p in op.get("ports") or []] == [KEYS_PORT]
            and set(op.get("methods") or ()) <= {"GET", "HEAD"}
            and op.get("methods")
            and op.get("paths")
            and set(op["paths"]) <= KEY_DOCUMENTS
            and set(op) == {"ports", "methods", "paths"}
            for op in operations
        )
    )


def _preflight_or_login(rule: Mapping[str, Any], operations: list[dict[str, Any]]) -> bool:
    """The gateway's unauthenticated rules: CORS preflight and the sign-in rpcs."""
    if rule.get("from") or not operations:
        return False
    return all(
        (op.get("methods") == ["OPTIONS"] and not op.get("paths"))
        or (
            op.get("paths")
            and set(op["paths"]) <= SIGN_IN
            and op.get("methods") in (None, ["POST"])
        )
        for op in operations
    )


# --- the mobile gateway: its JWT issuer, CORS preflight, and rpcs the services let through -----


def _gateway(cluster: Cluster) -> Iterator[Finding]:
    policies = [
        p for p in cluster.of_kind("AuthorizationPolicy") if _selector(p) == GATEWAY_SELECTOR
    ]
    authentications = [
        auth
        for auth in cluster.of_kind("RequestAuthentication")
        if (((spec_of(auth).get("selector") or {}).get("matchLabels")) or {}) == GATEWAY_SELECTOR
    ]
    issuers = [
        str(rule.get("issuer"))
        for auth in authentications
        for rule in spec_of(auth).get("jwtRules") or []
    ]
    # The services agree on one issuer and the gateway's RequestAuthentication names another:
    # the RequestAuthentication is the odd one out, blamed once there; rules naming the
    # services' issuer are right.
    verified = {
        str(value)
        for config in cluster.of_kind("ConfigMap")
        if (value := (config.get("data") or {}).get("HIS_AUTH_ISSUER")) is not None
    }
    odd_gateway = len(verified) == 1 and bool(issuers) and not verified & set(issuers)
    for policy in policies:
        for number, rule in enumerate(spec_of(policy).get("rules") or []):
            for source in rule.get("from") or []:
                for principal in (source.get("source") or {}).get("requestPrincipals") or []:
                    issuer = str(principal).rsplit("/", 1)[0]
                    if odd_gateway and issuer in verified:
                        continue
                    # "*": any token RequestAuthentication accepted (it names the issuers).
                    if principal != "*" and issuer not in issuers:
                        yield finding(
                            cluster,
                            policy,
                            f"rules[{number}]",
                            f"requestPrincipal {principal!r} is not from the issuer "
                            f"of RequestAuthentication ({', '.join(issuers) or 'none'}):"
                            " no token ever matches",
                            "use <issuer>/*" + suggest(issuer + "/*", [i + "/*" for i in issuers]),
                        )
            for path in _paths(rule):
                yield from _gateway_path(cluster, policy, f"rules[{number}]", path)
    if odd_gateway:
        yield from _issuer_differs_from_services(cluster, authentications, verified.pop())
    else:
        yield from _issuer_matches_services(cluster, issuers)
    yield from _jwt_rules(cluster)
    for policy in policies:
        for number, rule in enumerate(spec_of(policy).get("rules") or []):
            for target in rule.get("to") or []:
                methods = (target.get("operation") or {}).get("methods")
                if rule.get("from") and methods and set(methods) != {"POST"}:
                    yield finding(
                        cluster,
                        policy,
                        f"rules[{number}]",
                        f"methods {methods}: "
                        "gRPC-web calls are POST, so this rule never admits one",
                        "use methods: [POST]",
                    )
    yield from _preflight_allowed(cluster, policies)


def _paths(rule: Mapping[str, Any]) -> list[str]:
    return [
        str(p) for t in rule.get("to") or [] for p in (t.get("operation") or {}).get("paths") or []
    ]


def _allows(policy: Manifest, principal: str, path: str) -> bool:
    return any(
        principal in ((s.get("source") or {}).get("principals") or []) and path in _paths(rule)
        for rule in spec_of(policy).get("rules") or []
        for s in rule.get("from") or []
    )


def _gateway_path(cluster: Cluster, gateway: Manifest, where: str, path: str) -> Iterator[Finding]:
    rpc = all_paths().get(path)
    if rpc is None:
        return  # reported by the path rule
    guards = [
        p
        for p in cluster.of_kind("AuthorizationPolicy")
        if namespace_of(p) == "his" and _selector(p).get("app") == rpc.service
    ]
    if guards and not any(_allows(p, GATEWAY_PRINCIPAL, path) for p in guards):
        yield finding(
            cluster,
            gateway,
            where,
            f"lets {path} in, but AuthorizationPolicy his/{rpc.service} does not allow "
            "the gateway to call it: an internal rpc exposed here, or a rule missing there",
            f"remove it here if internal, else allow {GATEWAY_PRINCIPAL} in "
            f"mesh/istio/authorization/{rpc.service}.yaml",
        )


def _jwt_rules(cluster: Cluster) -> Iterator[Finding]:
    """The gateway's JWT rules agree with what the services verify, and pass the token on."""
    audiences = {
        str(value)
        for config in cluster.of_kind("ConfigMap")
        if (value := (config.get("data") or {}).get("HIS_AUTH_AUDIENCE")) is not None
    }
    for auth in cluster.of_kind("RequestAuthentication"):
        for number, rule in enumerate(spec_of(auth).get("jwtRules") or []):
            where = f"jwtRules[{number}]"
            forward = rule.get("forwardOriginalToken")
            if forward is not True:
                said = "unset (Istio's default is false)" if forward is None else repr(forward)
                yield finding(
                    cluster,
                    auth,
                    f"{where}.forwardOriginalToken",
                    f"is {said}: after validating the JWT the gateway removes the "
                    "Authorization header, so the services, which verify the token again and "
                    "read the user from it, refuse every call it admits (UNAUTHENTICATED)",
                    "set forwardOriginalToken: true in this jwtRule so the gateway passes the "
                    "token on",
                )
            given = {str(a) for a in rule.get("audiences") or []}
            if audiences and given and not given & audiences:
                yield finding(
                    cluster,
                    auth,
                    f"{where}.audiences",
                    f"{sorted(given)} is not the "
                    f"services' HIS_AUTH_AUDIENCE {sorted(audiences)}: tokens one "
                    "accepts the other refuses",
                    "use the same audience",
                )


def _issuer_matches_services(cluster: Cluster, issuers: list[str]) -> Iterator[Finding]:
    for config in cluster.of_kind("ConfigMap"):
        issuer = (config.get("data") or {}).get("HIS_AUTH_ISSUER")
        if issuer is not None and issuers and issuer not in issuers:
            yield finding(
                cluster,
                config,
                "data.HIS_AUTH_ISSUER",
                f"{issuer!r} differs from the gateway's RequestAuthentication issuer "
                f"{', '.join(issuers)}: tokens one accepts the other refuses",
                "use the same issuer in both",
            )


def _issuer_differs_from_services(
    cluster: Cluster, authentications: list[Manifest], verified: str
) -> Iterator[Finding]:
    for auth in authentications:
        for number, rule in enumerate(spec_of(auth).get("jwtRules") or []):
            if str(rule.get("issuer")) == verified:
                continue
            yield finding(
                cluster,
                auth,
                f"jwtRules[{number}].issuer",
                f"{rule.get('issuer')!r} is not the issuer every service verifies "
                f"(HIS_AUTH_ISSUER {verified!r} in each ConfigMap): JWT issuers are compared "
                "exactly, so tokens one accepts the other refuses",
                f"set issuer: {verified}",
            )


def _preflight_allowed(cluster: Cluster, policies: list[Manifest]) -> Iterator[Finding]:
    cors = any(
        route.get("corsPolicy")
        for vs in cluster.of_kind("VirtualService")
        for route in spec_of(vs).get("http") or []
    )
    preflight = any(
        not rule.get("from")
        and any(
            (t.get("operation") or {}).get("methods") == ["OPTIONS"] for t in rule.get("to") or []
        )
        for policy in policies
        for rule in spec_of(policy).get("rules") or []
    )
    if cors and policies and not preflight:
        yield finding(
            cluster,
            policies[0],
            "rules",
            "no rule lets OPTIONS through without a "
            "token: browsers' CORS preflight is refused, so web apps cannot call",
            "add a rule allowing methods [OPTIONS] with no from",
        )


def _peer_authentication(cluster: Cluster) -> Iterator[Finding]:
    policies = cluster.of_kind("PeerAuthentication")
    mesh_wide = [
        p for p in policies if namespace_of(p) == "istio-system" and not spec_of(p).get("selector")
    ]
    if not any(((spec_of(p).get("mtls") or {}).get("mode")) == "STRICT" for p in mesh_wide):
        yield Finding(
            "mesh/istio/peer-authentication.yaml",
            "PeerAuthentication istio-system/default",
            "no mesh-wide STRICT mTLS: plaintext calls are accepted",
            "set spec.mtls.mode: STRICT in istio-system with no selector",
        )
    for policy in policies:
        spec = spec_of(policy)
        keys_only = ((spec.get("selector") or {}).get("matchLabels") or {}) == {"app": KEYS_APP}
        modes = [("mtls", (spec.get("mtls") or {}).get("mode"))] + [
            (f"portLevelMtls {port}", (v or {}).get("mode"))
            for port, v in (spec.get("portLevelMtls") or {}).items()
            # iam's key documents port: for istiod, outside the mesh (see KEYS_PORT).
            if not (keys_only and str(port) == KEYS_PORT and (v or {}).get("mode") == "PERMISSIVE")
        ]
        for place, mode in modes:
            if mode in (None, "STRICT", "UNSET"):
                continue
            if keys_only and place != "mtls" and not _keys_port_open(spec):
                # The opening for istiod moved off the key documents' port: keeping STRICT
                # there is the failure, not the plaintext on the other port.
                yield finding(
                    cluster,
                    policy,
                    place,
                    f"mode {mode} on port {place.split()[-1]} accepts plaintext calls, which "
                    "carry no caller identity, and iam serves its key documents on "
                    f"{KEYS_PORT} (http-keys), which is now STRICT: istiod (outside the mesh) "
                    "cannot fetch the JWKS, so the gateway refuses every token",
                    f'the port must be {KEYS_PORT} (http-keys): portLevelMtls "{KEYS_PORT}": '
                    "{mode: PERMISSIVE}",
                )
                continue
            yield finding(
                cluster,
                policy,
                place,
                f"mode {mode}: accepts plaintext calls, "
                "which carry no caller identity for the AuthorizationPolicies",
                "set STRICT",
            )


def _keys_port_open(spec: Mapping[str, Any]) -> bool:
    port = (spec.get("portLevelMtls") or {}).get(KEYS_PORT) or {}
    return bool(port.get("mode") == "PERMISSIVE")


# --- the declared calls (his.mesh.calls): exactly these are allowed, by Istio and Kubernetes ---


def _principal_account(principal: str) -> str | None:
    parts = principal.split("/")
    shaped = len(parts) == 5 and parts[:2] == ["cluster.local", "ns"] and parts[2] == "his"
    return parts[4] if shaped and parts[3] == "sa" else None


def _declared_calls(cluster: Cluster) -> Iterator[Finding]:
    for entry in implemented():
        guards = [
            p
            for p in cluster.of_kind("AuthorizationPolicy")
            if namespace_of(p) == "his" and _selector(p).get("app") == entry.name
        ]
        if not guards:
            continue  # reported by the presence rule
        allowed = {
            (account, path)
            for policy in guards
            for rule in spec_of(policy).get("rules") or []
            for source in rule.get("from") or []
            for principal in (source.get("source") or {}).get("principals") or []
            if (account := _principal_account(str(principal))) and account != "mobile-gateway"
            for path in _paths(rule)
        }
        # A source without principals (namespaces, ipBlocks, nothing) admits every caller: the
        # call is not refused, the rule is too open (the principals rule says so).
        open_paths = {
            path
            for policy in guards
            for rule in spec_of(policy).get("rules") or []
            if any(not (s.get("source") or {}).get("principals") for s in rule.get("from") or [])
            for path in _paths(rule)
        }
        declared = {(caller, rpc.path) for caller, rpc in calls_to(entry.name)}
        for caller, path in sorted(declared - allowed):
            if path in open_paths:
                continue
            yield finding(
                cluster,
                guards[0],
                "rules",
                f"the code calls {path} as {caller} "
                "(his.mesh.calls) but no rule allows it: the call is refused with "
                "PERMISSION_DENIED (RBAC: access denied)",
                f"allow cluster.local/ns/his/sa/{caller} that path",
            )
        for caller, path in sorted(allowed - declared):
            yield finding(
                cluster,
                guards[0],
                "rules",
                f"allows {caller} to call {path}, which the code never does (least privilege)",
                "remove it, or declare the call in services/his/mesh/calls.py if new code makes it",
            )


def _gateway_grants(cluster: Cluster) -> Iterator[Finding]:
    """A service allows the gateway only what the gateway itself lets in."""
    admitted = {
        path
        for policy in cluster.of_kind("AuthorizationPolicy")
        if _selector(policy) == GATEWAY_SELECTOR
        for rule in spec_of(policy).get("rules") or []
        for path in _paths(rule)
    }
    for policy in cluster.of_kind("AuthorizationPolicy"):
        if namespace_of(policy) != "his" or not _selector(policy).get("app"):
            continue
        for number, rule in enumerate(spec_of(policy).get("rules") or []):
            principals = [
                str(p)
                for s in rule.get("from") or []
                for p in (s.get("source") or {}).get("principals") or []
            ]
            if GATEWAY_PRINCIPAL not in principals:
                continue
            for path in _paths(rule):
                if path not in admitted:
                    yield finding(
                        cluster,
                        policy,
                        f"rules[{number}]",
                        f"allows the mobile "
                        f"gateway {path}, which gateway/authorization.yaml never lets "
                        "in",
                        "remove it here, or admit it at the gateway",
                    )


# --- policies that allow everything: an empty rule, or any ALLOW rule in the root namespace ---

ROOT_NAMESPACE = "istio-system"  # Istio's default meshConfig.rootNamespace


def _allow_everything(cluster: Cluster) -> Iterator[Finding]:
    services = {entry.name for entry in implemented()}
    for policy in cluster.of_kind("AuthorizationPolicy"):
        spec = spec_of(policy)
        if spec.get("action", "ALLOW") != "ALLOW" or not spec.get("rules"):
            continue
        selector = _selector(policy)
        if namespace_of(policy) == ROOT_NAMESPACE:
            reach = f"workloads {selector} of every namespace" if selector else "every workload"
            yield finding(
                cluster,
                policy,
                "rules",
                f"an ALLOW policy in the root namespace {ROOT_NAMESPACE} applies to {reach} "
                "of the mesh: it opens what each namespace's default deny closes",
                "delete it; allow callers per service in mesh/istio/authorization/<service>.yaml",
            )
            continue
        if selector == GATEWAY_SELECTOR or selector.get("app") in services:
            continue  # _shape judges their rules one by one
        for number, rule in enumerate(spec.get("rules") or []):
            if not any((rule or {}).get(part) for part in ("from", "to", "when")):
                scope = str(selector) if selector else f"every workload of {namespace_of(policy)}"
                yield finding(
                    cluster,
                    policy,
                    f"rules[{number}]",
                    "an empty rule matches every request: the policy allows any caller any "
                    f"call to {scope}",
                    "name the callers (from) and the calls (to), or delete the rule",
                )


AUTHORIZATION_RULES: tuple[Callable[[Cluster], Iterator[Finding]], ...] = (
    _allow_everything,
    _authorization,
    _default_deny,
    _shape,
    _gateway,
    _peer_authentication,
    _declared_calls,
    _gateway_grants,
)
