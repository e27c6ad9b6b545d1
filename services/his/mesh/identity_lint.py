"""Lint of service identity: one credential, one ServiceAccount and one token subject per service.

A service proves who it is twice: to iam with its own credential (which yields the token
`services/<name>`), and to every peer with its mTLS certificate (principal
`cluster.local/ns/his/sa/<serviceAccountName>`). The runtime accepts a service token only from
the principal named like the service (his.runtime.peer_identity), and the AuthorizationPolicies
name those principals; so for each service's Deployments the `app` label, the ServiceAccount, the
`his serve <name>` argument and the principal the runtime expects must all name the same service,
and its credential Secret must be read by it alone (docs/adr/0007-one-identity-per-service.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from his.base.catalog import implemented
from his.base.env import ConfigError
from his.mesh.cluster import Cluster, finding, name_of, namespace_of, spec_of

# The deploy lint's reading of a container's plain settings (ConfigMaps, then inline values).
from his.mesh.deploy_lint import _env as container_env
from his.mesh.findings import Finding
from his.mesh.sources import Manifest
from his.runtime.config import CREDENTIAL_ISSUER, AuthConfig

NAMESPACE = "his"
CREDENTIAL = "HIS_SERVICE_CREDENTIAL"
CREDENTIAL_KEY = "HIS_SERVICE_CREDENTIAL_KEY"
TOKEN_FILE = "HIS_SERVICE_TOKEN_FILE"  # noqa: S105 (a variable name)


def own_secret(service: str) -> str:
    """The Secret only `service`'s pods read (its credential, page-token and crypto keys)."""
    return f"{service}-secrets"


def lint_identity(cluster: Cluster) -> Iterator[Finding]:
    """Every finding of the identity rules, in object order."""
    services = {entry.name for entry in implemented()}
    config_maps = {
        (namespace_of(m), name_of(m)): m.get("data") or {} for m in cluster.of_kind("ConfigMap")
    }
    for deployment in cluster.of_kind("Deployment"):
        if namespace_of(deployment) != NAMESPACE:
            continue
        pod = _pod(deployment)
        app = _app(deployment)
        yield from _foreign_secrets(cluster, deployment, app, services)
        if app not in services:
            continue
        for index, container in enumerate(pod.get("containers") or []):
            if not isinstance(container, Mapping) or not _serves(container):
                continue
            where = f"containers[{index}] {container.get('name', '')}".rstrip()
            yield from _serves_itself(cluster, deployment, where, app, container)
            yield from _credential(cluster, deployment, where, app, container)
            env = container_env(container, config_maps)
            yield from _principal(cluster, deployment, where, app, env)


def _app(deployment: Manifest) -> str:
    labels = ((spec_of(deployment).get("template") or {}).get("metadata") or {}).get("labels")
    return str((labels or {}).get("app", ""))


def _pod(deployment: Manifest) -> dict[str, Any]:
    pod = (spec_of(deployment).get("template") or {}).get("spec")
    return pod if isinstance(pod, dict) else {}


def _serves(container: Mapping[str, Any]) -> bool:
    args = [str(a) for a in container.get("args") or []]
    return len(args) >= 2 and args[0] == "serve"


def _secret_names(pod: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, Secret name) of every way the pod reads a Secret: env, envFrom, volumes."""
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(pod.get(kind) or []):
            if not isinstance(container, Mapping):
                continue
            where = f"{kind}[{index}] {container.get('name', '')}".rstrip()
            for entry in container.get("env") or []:
                reference = ((entry or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                if reference.get("name"):
                    yield f"{where} env {entry.get('name')}", str(reference["name"])
            for source in container.get("envFrom") or []:
                reference = (source or {}).get("secretRef") or {}
                if reference.get("name"):
                    yield f"{where} envFrom", str(reference["name"])
    for volume in pod.get("volumes") or []:
        where = f"volumes {(volume or {}).get('name', '')}"
        secret = (volume or {}).get("secret") or {}
        if secret.get("secretName"):
            yield where, str(secret["secretName"])
        for source in ((volume or {}).get("projected") or {}).get("sources") or []:
            projected = (source or {}).get("secret") or {}
            if projected.get("name"):
                yield where, str(projected["name"])


def _foreign_secrets(
    cluster: Cluster, deployment: Manifest, app: str, services: set[str]
) -> Iterator[Finding]:
    owners = {own_secret(service): service for service in services}
    for where, secret in _secret_names(_pod(deployment)):
        owner = owners.get(secret)
        if owner is not None and owner != app:
            yield finding(
                cluster,
                deployment,
                where,
                f"reads Secret {secret}, {owner}'s own: with {owner}'s credential this pod "
                f"could log in as {owner}",
                f"read {own_secret(app) if app in services else 'a Secret of its own'} instead",
            )


def _serves_itself(
    cluster: Cluster, deployment: Manifest, where: str, app: str, container: Mapping[str, Any]
) -> Iterator[Finding]:
    served = str((container.get("args") or [])[1])
    if served != app:
        yield finding(
            cluster,
            deployment,
            f"{where} args",
            f"runs `his serve {served}` in pods labelled app: {app}: it logs in as "
            f"services/{served} under {app}'s ServiceAccount, so the runtime refuses its token "
            "and the AuthorizationPolicies meant for one are applied to the other",
            f"serve {app} here (one Deployment, ServiceAccount and token subject per service)",
        )


def _credential(
    cluster: Cluster, deployment: Manifest, where: str, app: str, container: Mapping[str, Any]
) -> Iterator[Finding]:
    variables: dict[str, Mapping[str, Any]] = {
        str(entry.get("name")): entry
        for entry in container.get("env") or []
        if isinstance(entry, Mapping)
    }
    if CREDENTIAL_KEY in variables and app != CREDENTIAL_ISSUER:
        yield finding(
            cluster,
            deployment,
            f"{where} env {CREDENTIAL_KEY}",
            f"{app} is given the key of every service credential: it could log in as any "
            "service, audit and iam included (and the runtime refuses to start with it)",
            f"remove it; give {app} its own {CREDENTIAL} from {own_secret(app)}",
        )
    if TOKEN_FILE in variables:
        return  # the platform hands this service its token; no credential needed
    entry = variables.get(CREDENTIAL)
    reference = ((entry or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    if entry is None:
        yield finding(
            cluster,
            deployment,
            f"{where} env",
            f"no {CREDENTIAL}: {app} cannot log in at iam, so every call it makes on its own "
            "(audit trail, events, background work) is refused",
            f"add {CREDENTIAL} from secretKeyRef {own_secret(app)}/{CREDENTIAL}",
        )
    elif reference.get("name") != own_secret(app):
        yield finding(
            cluster,
            deployment,
            f"{where} env {CREDENTIAL}",
            f"comes from {reference.get('name') or 'no Secret'}, not {own_secret(app)}: a "
            "service's credential must live in a Secret that only its own pods read",
            f"take it from secretKeyRef {own_secret(app)}/{CREDENTIAL}",
        )


def _principal(
    cluster: Cluster, deployment: Manifest, where: str, app: str, env: Mapping[str, str]
) -> Iterator[Finding]:
    """The principal the runtime accepts the service's token from must be the one Istio gives
    its pods: spiffe://cluster.local/ns/<namespace>/sa/<serviceAccountName>."""
    try:
        # The runtime's own parsing and defaults (HIS_MESH, HIS_AUTH_SERVICE_PEERS).
        auth = AuthConfig.from_env(env)
    except ConfigError as error:
        yield finding(cluster, deployment, where, f"auth settings invalid: {error}", "fix it")
        return
    if env.get("HIS_MESH") != "istio":
        return  # not in the mesh: the deploy lint says what that breaks
    account = _pod(deployment).get("serviceAccountName") or "default"
    given = f"spiffe://cluster.local/ns/{namespace_of(deployment, 'default')}/sa/{account}"
    expected = f"{auth.service_peer_prefix}{app}"
    if given != expected:
        yield finding(
            cluster,
            deployment,
            f"{where} HIS_AUTH_SERVICE_PEERS",
            f"the runtime accepts services/{app} tokens only from {expected}, but these pods' "
            f"mTLS principal is {given}: every call {app} makes on its own is refused",
            f"run as ServiceAccount {app} in namespace {NAMESPACE} and leave "
            "HIS_AUTH_SERVICE_PEERS unset (spiffe://cluster.local/ns/his/sa/)",
        )
