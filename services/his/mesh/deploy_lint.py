"""Lint of the Kubernetes side of one rendered overlay: what the schemas cannot see.

The mesh policy only works when the pods under it are right: the ServiceAccount is the mesh
identity every AuthorizationPolicy names, the probes must speak gRPC on the serving port, the
pod must outlive the server's drain, secrets must come from Secrets, and every Service port must
reach a container port. Facts come from the rendered objects and from the runtime itself (the
drain defaults of his.runtime.config), never from numbers copied here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from his.base.catalog import implemented
from his.base.env import ConfigError
from his.mesh import quantity
from his.mesh.calls import CALLS
from his.mesh.cluster import Cluster, finding, name_of, namespace_of, spec_of, suggest
from his.mesh.findings import Finding
from his.mesh.scaling_lint import utilization_requests
from his.mesh.sources import Manifest
from his.runtime.config import LIVENESS, ServerConfig

NAMESPACE = "his"
# Kubernetes' default when a pod does not say (PodSpec.terminationGracePeriodSeconds).
KUBERNETES_DEFAULT_GRACE_S = 30
SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "CREDENTIAL")
# The schema types whenUnsatisfiable as a plain string; the API server rejects anything else.
WHEN_UNSATISFIABLE = ("DoNotSchedule", "ScheduleAnyway")
_RESOURCES = ("cpu", "memory")


def lint_deploy(cluster: Cluster) -> Iterator[Finding]:
    """Every finding of the deployment rules, in object order."""
    apps = {entry.name for entry in implemented()}
    config_maps = {
        (namespace_of(m), name_of(m)): m.get("data") or {} for m in cluster.of_kind("ConfigMap")
    }
    deployments = cluster.of_kind("Deployment")
    for deployment in deployments:
        if namespace_of(deployment) == NAMESPACE and _app(deployment) in apps:
            yield from _service_account(cluster, deployment)
            yield from _containers(cluster, deployment, config_maps)
        yield from _topology(cluster, deployment)
    for (namespace, name), service in sorted(cluster.services.items()):
        if namespace == NAMESPACE and name in apps:
            yield from _target_ports(cluster, service, deployments)
    yield from _injection(cluster, deployments)
    yield from _dialled_ports(cluster, deployments, config_maps)


def _template(deployment: Manifest) -> dict[str, Any]:
    template = spec_of(deployment).get("template")
    return template if isinstance(template, dict) else {}


def _pod(deployment: Manifest) -> dict[str, Any]:
    pod = _template(deployment).get("spec")
    return pod if isinstance(pod, dict) else {}


def _labels(deployment: Manifest) -> dict[str, str]:
    labels = (_template(deployment).get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _app(deployment: Manifest) -> str | None:
    return _labels(deployment).get("app")


def _containers_of(deployment: Manifest) -> list[dict[str, Any]]:
    return [c for c in _pod(deployment).get("containers") or [] if isinstance(c, dict)]


# --- one ServiceAccount per service: the mesh identity -------------------------------------


def _service_account(cluster: Cluster, deployment: Manifest) -> Iterator[Finding]:
    app = _app(deployment)
    account = _pod(deployment).get("serviceAccountName") or "default"
    if account != app:
        yield finding(
            cluster,
            deployment,
            "spec.template.spec.serviceAccountName",
            f"runs as ServiceAccount {account!r}, not {app!r}: its mTLS principal is "
            f"cluster.local/ns/{NAMESPACE}/sa/{account}, which no AuthorizationPolicy rule "
            f"for {app} names, so its calls are denied (and callers' rules never match it)",
            f"set serviceAccountName: {app} (one ServiceAccount per service)",
        )


# --- containers: probes, security context, drain, secrets, resources ----------------------


def _containers(
    cluster: Cluster, deployment: Manifest, config_maps: Mapping[tuple[str, str], Any]
) -> Iterator[Finding]:
    pod = _pod(deployment)
    pod_security = pod.get("securityContext") or {}
    for index, container in enumerate(_containers_of(deployment)):
        where = f"containers[{index}] {container.get('name', '')}".rstrip()
        yield from _probes(cluster, deployment, where, container)
        yield from _startup_time(cluster, deployment, index, container)
        yield from _security(cluster, deployment, where, container, pod_security)
        yield from _secrets(cluster, deployment, where, container)
        yield from _resources(cluster, deployment, index, container)
        if _grpc_port(container) is not None:  # the server container
            env = _env(container, config_maps)
            yield from _drain(cluster, deployment, where, env)
            yield from _wiring(cluster, deployment, where, env)


def _grpc_port(container: Mapping[str, Any]) -> int | None:
    for port in container.get("ports") or []:
        if isinstance(port, Mapping) and port.get("name") == "grpc":
            return int(port.get("containerPort") or 0)
    return None


def _probes(
    cluster: Cluster, deployment: Manifest, where: str, container: Mapping[str, Any]
) -> Iterator[Finding]:
    number = _grpc_port(container)
    if number is None:
        yield finding(
            cluster,
            deployment,
            f"{where} ports",
            "no containerPort named grpc: the Service's targetPort and the probes have "
            "nothing to point at",
            "name the serving port grpc",
        )
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if not isinstance(probe, Mapping):
            what = (
                "calls reach the pod before it serves and while it drains"
                if kind == "readinessProbe"
                else "a wedged server is never restarted"
            )
            yield finding(
                cluster,
                deployment,
                f"{where} {kind}",
                f"no {kind}: {what}",
                f"add a {kind} with grpc: {{port: {number or 50051}}}",
            )
            continue
        grpc = probe.get("grpc")
        if not isinstance(grpc, Mapping):
            other = next((k for k in ("httpGet", "tcpSocket", "exec") if k in probe), "no handler")
            yield finding(
                cluster,
                deployment,
                f"{where} {kind}",
                f"{kind} uses {other}, not grpc: it does not ask the server's gRPC health "
                "service, which turns NOT_SERVING while the server drains",
                f"use grpc: {{port: {number or 50051}}}",
            )
            continue
        port = grpc.get("port")
        if number is not None and port not in (number, "grpc"):
            yield finding(
                cluster,
                deployment,
                f"{where} {kind}.grpc.port",
                f"probes port {port!r}, not the grpc port {number}",
                f"set port: {number}",
            )
        yield from _probe_service(cluster, deployment, where, kind, str(grpc.get("service") or ""))
    startup = container.get("startupProbe")
    if isinstance(startup, Mapping) and isinstance(startup.get("grpc"), Mapping):
        service = str(startup["grpc"].get("service") or "")
        yield from _probe_service(cluster, deployment, where, "startupProbe", service)


# The server answers `liveness` about 1 s after the process starts on a developer's machine
# (`his up`); a pod on a busy node, behind its sidecar (holdApplicationUntilProxyStarts), with
# a cold page cache, takes several times that. Below this many seconds a start-up probe kills
# pods that were about to serve, and the Deployment crash-loops.
MIN_STARTUP_S = 10
# Kubernetes' defaults when a probe does not say (core/v1 Probe).
_PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "failureThreshold": 3}


def _startup_time(
    cluster: Cluster, deployment: Manifest, index: int, container: Mapping[str, Any]
) -> Iterator[Finding]:
    probe = container.get("startupProbe")
    if not isinstance(probe, Mapping):
        return
    where = f"containers[{index}] {container.get('name', '')}".rstrip()
    values = {name: probe.get(name, default) for name, default in _PROBE_DEFAULTS.items()}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
        return  # the schema's finding
    allowed = values["initialDelaySeconds"] + values["failureThreshold"] * values["periodSeconds"]
    if allowed < MIN_STARTUP_S:
        yield finding(
            cluster,
            deployment,
            f"{where} startupProbe",
            f"allows {allowed} s to start (initialDelaySeconds {values['initialDelaySeconds']} + "
            f"failureThreshold {values['failureThreshold']} x periodSeconds "
            f"{values['periodSeconds']}): the server needs about 1 s on an idle machine and "
            "several on a busy node behind its sidecar, so the kubelet kills pods that were "
            "about to serve and the Deployment crash-loops",
            f"allow at least {MIN_STARTUP_S} s (here periodSeconds: 1, failureThreshold: 30)",
            paths=[("spec", "template", "spec", "containers", index, "startupProbe")],
        )


def _probe_service(
    cluster: Cluster, deployment: Manifest, where: str, kind: str, service: str
) -> Iterator[Finding]:
    """Liveness (and start-up) ask the process; readiness asks the database and the schema.

    The runtime answers `liveness` SERVING while the process serves, and every other name only
    while its database is reachable and migrated (his.runtime.health).
    """
    if kind == "readinessProbe" and service == LIVENESS:
        yield finding(
            cluster,
            deployment,
            f"{where} {kind}.grpc.service",
            f"readiness asks {LIVENESS!r}, which stays SERVING while the database is down "
            "and while the pod drains: calls keep arriving at a pod that cannot serve them",
            'ask service: "" (or the gRPC service name)',
        )
    elif kind != "readinessProbe" and service != LIVENESS:
        yield finding(
            cluster,
            deployment,
            f"{where} {kind}.grpc.service",
            f"{kind} asks {service!r}, which follows the database: a database outage would "
            f"{'restart' if kind == 'livenessProbe' else 'keep restarting'} every pod of the "
            "hospital",
            f"ask service: {LIVENESS}",
        )


def _root_user(
    cluster: Cluster,
    deployment: Manifest,
    where: str,
    own: Mapping[str, Any],
    pod_security: Mapping[str, Any],
    *,
    non_root: object,
) -> Iterator[Finding]:
    """runAsNonRoot true with an effective runAsUser 0: the kubelet refuses to start the
    container (CreateContainerConfigError), on every pod of the Deployment."""
    in_container = "runAsUser" in own
    user = own.get("runAsUser") if in_container else pod_security.get("runAsUser")
    if non_root is not True or user is None or int(user) != 0:
        return
    place = f"{where} securityContext" if in_container else "spec.template.spec.securityContext"
    level = "the container's" if in_container else "the pod's (no container value overrides it)"
    yield finding(
        cluster,
        deployment,
        f"{place}.runAsUser",
        f"runAsUser is 0 (root), {level}, with runAsNonRoot true: the kubelet refuses to start "
        "the container (CreateContainerConfigError) and no pod ever runs",
        "set securityContext.runAsUser to a non-root uid (10001, the image's user)",
    )


def _security(
    cluster: Cluster,
    deployment: Manifest,
    where: str,
    container: Mapping[str, Any],
    pod_security: Mapping[str, Any],
) -> Iterator[Finding]:
    own = container.get("securityContext") or {}
    # A container's setting wins over the pod's (runAsNonRoot, runAsUser, runAsGroup, ...).
    non_root = own.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    yield from _root_user(cluster, deployment, where, own, pod_security, non_root=non_root)
    wanted: list[tuple[str, object, object, str]] = [
        ("runAsNonRoot", non_root, True, "the kubelet then refuses to start it as root"),
        (
            "readOnlyRootFilesystem",
            own.get("readOnlyRootFilesystem"),
            True,
            "a compromised process cannot change the image's code",
        ),
        (
            "allowPrivilegeEscalation",
            own.get("allowPrivilegeEscalation"),
            False,
            "no setuid binary can gain more than the process has",
        ),
    ]
    for name, value, good, why in wanted:
        if value is not good:
            yield finding(
                cluster,
                deployment,
                f"{where} securityContext.{name}",
                f"{name} is {value!r}, not {str(good).lower()}",
                f"set securityContext.{name}: {str(good).lower()} ({why})",
            )
    drop = [str(c) for c in (own.get("capabilities") or {}).get("drop") or []]
    if "ALL" not in drop:
        yield finding(
            cluster,
            deployment,
            f"{where} securityContext.capabilities",
            f"drops {drop or 'no capabilities'}, not ALL: the server needs none",
            'set securityContext.capabilities.drop: ["ALL"]',
        )


def _secrets(
    cluster: Cluster, deployment: Manifest, where: str, container: Mapping[str, Any]
) -> Iterator[Finding]:
    for entry in container.get("env") or []:
        if not isinstance(entry, Mapping) or "value" not in entry:
            continue
        name = str(entry.get("name", ""))
        word = next((w for w in SECRET_WORDS if w in name.upper()), None)
        if word is not None:
            yield finding(
                cluster,
                deployment,
                f"{where} env {name}",
                f"{name} looks secret ({word}) but its value is written inline: it is in the "
                "repository and readable by anyone who can read the Deployment",
                "take it from a Secret: valueFrom.secretKeyRef (the platform creates the Secret)",
            )


def _resources(
    cluster: Cluster, deployment: Manifest, index: int, container: Mapping[str, Any]
) -> Iterator[Finding]:
    where = f"containers[{index}] {container.get('name', '')}".rstrip()
    resources = container.get("resources") or {}
    # A request an HPA's Utilization target needs is the HPA rule's finding (it names the HPA).
    scaled = {
        resource
        for resource, only in utilization_requests(cluster, deployment)
        if only in (None, container.get("name"))
    }
    for part in ("requests", "limits"):
        given = resources.get(part) or {}
        missing = [
            r for r in _RESOURCES if r not in given and not (part == "requests" and r in scaled)
        ]
        if missing:
            why = (
                "the scheduler places the pod by its requests"
                if part == "requests"
                else "one runaway pod can starve the node"
            )
            container_path = ("spec", "template", "spec", "containers", index, "resources")
            yield finding(
                cluster,
                deployment,
                f"{where} resources.{part}",
                f"no {' or '.join(missing)} {part}: {why}",
                f"set resources.{part}.{'/'.join(missing)}",
                paths=[(*container_path, part), container_path],
            )
    yield from _request_above_limit(cluster, deployment, index, container)


def _request_above_limit(
    cluster: Cluster, deployment: Manifest, index: int, container: Mapping[str, Any]
) -> Iterator[Finding]:
    """The API server rejects a pod template whose request is above its limit (Invalid
    value: must be less than or equal to the limit): the Deployment is never applied."""
    where = f"containers[{index}] {container.get('name', '')}".rstrip()
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for name in (*_RESOURCES, "ephemeral-storage"):
        asked, bound = quantity.parse(requests.get(name)), quantity.parse(limits.get(name))
        if asked is not None and bound is not None and asked > bound:
            path = ("spec", "template", "spec", "containers", index, "resources")
            yield finding(
                cluster,
                deployment,
                f"{where} resources.limits.{name}",
                f"the limit {limits.get(name)} is below the request {requests.get(name)}: the "
                "API server rejects the Deployment (requests must not exceed limits)",
                f"raise limits.{name} to at least {requests.get(name)}, or lower the request",
                paths=[(*path, "limits", name), (*path, "limits"), path],
            )


def _env(
    container: Mapping[str, Any], config_maps: Mapping[tuple[str, str], Any]
) -> dict[str, str]:
    """The container's plain settings: its ConfigMaps (envFrom), then inline values on top."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        reference = (source or {}).get("configMapRef") or {}
        data = config_maps.get((NAMESPACE, str(reference.get("name", "")))) or {}
        prefix = str((source or {}).get("prefix") or "")
        env.update({prefix + str(k): str(v) for k, v in data.items()})
    for entry in container.get("env") or []:
        if isinstance(entry, Mapping) and "value" in entry:
            env[str(entry.get("name"))] = str(entry["value"])
    return env


def _drain(
    cluster: Cluster, deployment: Manifest, where: str, env: Mapping[str, str]
) -> Iterator[Finding]:
    try:
        # The runtime's own parsing and defaults: HIS_DRAIN_DELAY_S, then HIS_GRACE_S.
        server = ServerConfig.from_env(
            env,
            port=ServerConfig.port,
            metrics_port=ServerConfig.metrics_port,
        )
    except ConfigError as error:
        yield finding(cluster, deployment, where, f"server settings invalid: {error}", "fix it")
        return
    drain = server.drain_delay_s + server.grace_s
    grace = _pod(deployment).get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE_S)
    if not isinstance(grace, int | float) or grace <= drain:
        yield finding(
            cluster,
            deployment,
            "spec.template.spec.terminationGracePeriodSeconds",
            f"{grace!r} s is not more than the server's drain of {drain:g} s "
            f"(HIS_DRAIN_DELAY_S {server.drain_delay_s:g} + HIS_GRACE_S {server.grace_s:g}): "
            "the kubelet kills it while calls are still finishing",
            f"raise it above {drain:g} (with room for the proxy to stop), or shorten the drain",
        )


# --- the server listens where the sidecar forwards, and finds the services it calls ----------

MESH_MODE = "istio"
_INJECT = "sidecar.istio.io/inject"


def _injection(cluster: Cluster, deployments: list[Manifest]) -> Iterator[Finding]:
    """Every service pod gets a sidecar: the namespace asks for injection, no pod opts out."""
    namespaces = [n for n in cluster.of_kind("Namespace") if name_of(n) == NAMESPACE]
    if cluster.of_kind("AuthorizationPolicy") and namespaces:
        labels = (namespaces[0].get("metadata") or {}).get("labels") or {}
        if labels.get("istio-injection") != "enabled" and "istio.io/rev" not in labels:
            yield finding(
                cluster,
                namespaces[0],
                "metadata.labels",
                "neither istio-injection: enabled nor istio.io/rev: no pod of the namespace "
                "gets a sidecar, so every call is plaintext and STRICT mTLS refuses them all",
                "add the label istio-injection: enabled (components/istio patches it in)",
            )
    apps = {entry.name for entry in implemented()}
    for deployment in deployments:
        if namespace_of(deployment) != NAMESPACE or _app(deployment) not in apps:
            continue
        metadata = _template(deployment).get("metadata") or {}
        for place in ("labels", "annotations"):
            value = (metadata.get(place) or {}).get(_INJECT)
            if value is not None and str(value).lower() == "false":
                yield finding(
                    cluster,
                    deployment,
                    f"spec.template.metadata.{place}[{_INJECT}]",
                    f"'false': {_app(deployment)}'s pods run without a sidecar, so they have no "
                    "mesh identity; STRICT mTLS refuses their calls and they skip every route",
                    f"remove {_INJECT} (only the database opts out)",
                )


# The sidecar forwards inbound calls to the pod IP, so a loopback-only server never gets them.
_ALL_ADDRESSES = ("[::]", "::", "0.0.0.0")


def _wiring(
    cluster: Cluster, deployment: Manifest, where: str, env: Mapping[str, str]
) -> Iterator[Finding]:
    mesh = env.get("HIS_MESH", "")
    if mesh != MESH_MODE:
        yield finding(
            cluster,
            deployment,
            f"{where} HIS_MESH",
            f"is {mesh or 'unset'}, not {MESH_MODE}: the SDK then retries its calls under the "
            "mesh's retries (every retry multiplied), and the runtime lets a missing key "
            "(HIS_PAGE_TOKEN_KEY, HIS_CRYPTO_*) fall back to a local one instead of refusing "
            "to start",
            f"set HIS_MESH: {MESH_MODE} in the service's ConfigMap",
        )
    host = env.get("HIS_HOST", _ALL_ADDRESSES[0])
    if host not in _ALL_ADDRESSES:
        yield finding(
            cluster,
            deployment,
            f"{where} HIS_HOST",
            f"the server binds {host}: the sidecar forwards calls to the pod IP, so none arrive",
            "bind [::] (leave HIS_HOST unset)",
        )
    for callee in sorted(CALLS.get(str(_app(deployment)), {})):
        variable = f"HIS_{callee.upper()}_ADDR"
        address = env.get(variable, "")
        # The process dials by DNS, where `patient.his` works (unlike an Istio host).
        target = cluster.resolve_dns(address.rpartition(":")[0], NAMESPACE) if address else None
        if target != (NAMESPACE, callee):
            yield finding(
                cluster,
                deployment,
                f"{where} {variable}",
                f"is {address or 'unset'}"
                f": {_app(deployment)} calls {callee} (his.mesh.calls) and would dial "
                "elsewhere (unset: localhost)",
                f"set {variable}: {callee}.{NAMESPACE}.svc.cluster.local:50051",
            )


def _dialled_ports(
    cluster: Cluster, deployments: list[Manifest], config_maps: Mapping[tuple[str, str], Any]
) -> Iterator[Finding]:
    """Every caller's HIS_<CALLEE>_ADDR port must be a port of the callee's Service: a port
    the Service does not list is refused (connection refused → UNAVAILABLE). When every
    caller dials the same port, the Service is what changed; else the odd caller's ConfigMap."""
    apps = {entry.name for entry in implemented()}
    dialled: dict[str, dict[str, set[str]]] = {}  # callee -> port -> callers
    for deployment in deployments:
        caller = _app(deployment)
        if namespace_of(deployment) != NAMESPACE or caller not in apps:
            continue
        for container in _containers_of(deployment):
            if _grpc_port(container) is None:
                continue
            env = _env(container, config_maps)
            for callee in CALLS.get(str(caller), {}):
                host, _, port = env.get(f"HIS_{callee.upper()}_ADDR", "").rpartition(":")
                if port.isdigit() and cluster.resolve_dns(host, NAMESPACE) == (NAMESPACE, callee):
                    dialled.setdefault(callee, {}).setdefault(port, set()).add(str(caller))
    for callee, ports in sorted(dialled.items()):
        service = cluster.services.get((NAMESPACE, callee))
        if service is None:
            continue
        served = [str((p or {}).get("port")) for p in spec_of(service).get("ports") or []]
        unserved = {port: callers for port, callers in ports.items() if port not in served}
        variable = f"HIS_{callee.upper()}_ADDR"
        if len(ports) == 1 and unserved:
            ((port, callers),) = unserved.items()
            yield finding(
                cluster,
                service,
                "spec.ports",
                f"serves {', '.join(served) or 'no port'}, but {', '.join(sorted(callers))} "
                f"dial {callee}.{NAMESPACE}.svc.cluster.local:{port} ({variable} in their "
                "ConfigMaps): their calls are refused (UNAVAILABLE)",
                f"serve port {port} again, or change {variable} of every caller",
            )
            continue
        for port, callers in sorted(unserved.items()):
            for caller in sorted(callers):
                holder = _config_map_setting(cluster, caller, variable)
                yield finding(
                    cluster,
                    holder if holder is not None else service,
                    variable,
                    f"{caller} dials {callee}.{NAMESPACE}.svc.cluster.local:{port}, a port "
                    f"Service {NAMESPACE}/{callee} does not serve ({', '.join(served)}): its "
                    "calls are refused (UNAVAILABLE)",
                    f"set {variable}: {callee}.{NAMESPACE}.svc.cluster.local:"
                    f"{served[0] if served else port}",
                )


def _config_map_setting(cluster: Cluster, app: str, variable: str) -> Manifest | None:
    """The ConfigMap of `app` that sets `variable` (the file to edit)."""
    for config_map in cluster.of_kind("ConfigMap"):
        labels = (config_map.get("metadata") or {}).get("labels") or {}
        data = config_map.get("data") or {}
        owner = (labels.get("app"), labels.get("app.kubernetes.io/name"))
        if namespace_of(config_map) == NAMESPACE and variable in data and app in owner:
            return config_map
    return None


# --- topology spread: a value the API server accepts -------------------------------------------


def _topology(cluster: Cluster, deployment: Manifest) -> Iterator[Finding]:
    for index, constraint in enumerate(_pod(deployment).get("topologySpreadConstraints") or []):
        value = (constraint or {}).get("whenUnsatisfiable")
        if value not in WHEN_UNSATISFIABLE:
            yield finding(
                cluster,
                deployment,
                f"spec.template.spec.topologySpreadConstraints[{index}]",
                f"whenUnsatisfiable {value!r} is neither {' nor '.join(WHEN_UNSATISFIABLE)}: "
                "the API server rejects the Deployment",
                "write DoNotSchedule or ScheduleAnyway where the constraint is set (the "
                "Deployment or an overlay's patch)" + suggest(str(value), list(WHEN_UNSATISFIABLE)),
            )


# --- Services: every targetPort reaches a container port ------------------------------------


def _target_ports(
    cluster: Cluster, service: Manifest, deployments: list[Manifest]
) -> Iterator[Finding]:
    selector = {str(k): str(v) for k, v in (spec_of(service).get("selector") or {}).items()}
    if not selector:
        return
    selected = [
        d
        for d in deployments
        if namespace_of(d) == namespace_of(service)
        and all(_labels(d).get(k) == v for k, v in selector.items())
    ]
    for index, port in enumerate(spec_of(service).get("ports") or []):
        target = port.get("targetPort", port.get("port"))
        for deployment in selected:
            ports = [p for c in _containers_of(deployment) for p in c.get("ports") or [] if p]
            names = [str(p.get("name")) for p in ports if p.get("name")]
            numbers = [p.get("containerPort") for p in ports]
            if (isinstance(target, str) and target in names) or target in numbers:
                continue
            yield finding(
                cluster,
                service,
                f"ports[{index}] {port.get('name', '')}".rstrip(),
                f"targetPort {target!r} is no containerPort of Deployment "
                f"{namespace_of(deployment)}/{name_of(deployment)}, which it selects: "
                "calls to this port are refused",
                "use a port name or number the pods declare"
                + (suggest(target, names) if isinstance(target, str) else ""),
            )
