"""Lint of a CloudNativePG Cluster's max_connections against the pods that connect to it.

Every process of ours opens at most `DatabaseConfig.connections` connections (his.runtime.config:
HIS_DB_POOL_SIZE + HIS_DB_MAX_OVERFLOW + HIS_DB_DRIVER_POOL_SIZE, read from the pod's ConfigMap
as the runtime reads them), and a workload runs at most its HPA's maxReplicas pods (else its
replicas). When every HPA peaks at once, PostgreSQL must accept the sum of those plus the slots
it keeps for superusers; past max_connections it refuses new connections ("sorry, too many
clients already") and the calls that needed one fail. Rollout surge comes on top: the check asks
for the peak, the fix says to leave room for surge.

A pod connects to a Cluster when a container reads one of the Secrets the operator generates
for it (`<cluster>-app`, `<cluster>-superuser`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from his.base.env import ConfigError
from his.mesh.cluster import Cluster, finding, name_of, namespace_of, spec_of
from his.mesh.deploy_lint import _env as container_env
from his.mesh.findings import Finding
from his.mesh.scaling_lint import cnpg_clusters, hpas_of
from his.mesh.sources import Manifest
from his.runtime.config import DatabaseConfig

# PostgreSQL's defaults when the Cluster does not set them (postgresql.conf).
_DEFAULT_MAX_CONNECTIONS = 100
_RESERVED_DEFAULTS = {"superuser_reserved_connections": 3, "reserved_connections": 0}
_WORKLOADS = ("Deployment", "StatefulSet")


def connection_budget(cluster: Cluster) -> Iterator[Finding]:
    """Every Cluster whose max_connections is below its clients' peak."""
    config_maps = {
        (namespace_of(m), name_of(m)): m.get("data") or {} for m in cluster.of_kind("ConfigMap")
    }
    for db in cnpg_clusters(cluster):
        parameters = (spec_of(db).get("postgresql") or {}).get("parameters") or {}
        written = parameters.get("max_connections")
        limit = _integer(written, _DEFAULT_MAX_CONNECTIONS)
        reserved = {n: _integer(parameters.get(n), d) for n, d in _RESERVED_DEFAULTS.items()}
        if limit is None or None in reserved.values():
            continue  # not a number: PostgreSQL refuses to start, a finding of its own
        clients = list(_clients(cluster, db, config_maps))
        peak = sum(pods * each for _, pods, each in clients)
        kept = sum(v for v in reserved.values() if v is not None)
        if not clients or peak + kept <= limit:
            continue
        terms = " + ".join(f"{name} {pods}x{each}" for name, pods, each in clients)
        # The Cluster is often shared by overlays of different scale: say whose peak this is.
        where = f" in {cluster.tree}" if cluster.tree else ""
        whose = f" for {cluster.tree}" if cluster.tree else ""
        slots = " + ".join(f"{n} {v}" for n, v in reserved.items() if v)
        yield finding(
            cluster,
            db,
            "postgresql.parameters.max_connections",
            f"{written if written is not None else 'unset (PostgreSQL: 100)'} is below what its "
            f"clients{where} may open when every HPA peaks: {terms} (pods at maxReplicas x "
            f"connections per pod, HIS_DB_POOL_SIZE + HIS_DB_MAX_OVERFLOW + "
            f"HIS_DB_DRIVER_POOL_SIZE) = {peak}"
            + (f", plus {slots} = {peak + kept}" if slots else "")
            + "; past max_connections PostgreSQL refuses new connections and those calls fail",
            f"raise max_connections to at least {peak + kept}{whose}"
            " (the largest any overlay using this file needs) with room for rollout surge, or "
            "lower HPA maxReplicas or the HIS_DB_* pool sizes, or put a CloudNativePG Pooler "
            "in front",
            paths=[("spec", "postgresql", "parameters", "max_connections")],
        )


def _integer(value: Any, default: int) -> int | None:
    if value is None:
        return default
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def _clients(
    cluster: Cluster, db: Manifest, config_maps: Mapping[tuple[str, str], Any]
) -> Iterator[tuple[str, int, int]]:
    """(workload, most pods, connections per pod) of every workload connecting to `db`."""
    secrets = {f"{name_of(db)}-app", f"{name_of(db)}-superuser"}
    for kind in _WORKLOADS:
        for workload in cluster.of_kind(kind):
            if namespace_of(workload) != namespace_of(db):
                continue
            pod = (spec_of(workload).get("template") or {}).get("spec") or {}
            each = 0
            for container in pod.get("containers") or []:
                if not isinstance(container, Mapping) or not _reads(container, secrets):
                    continue
                try:
                    each += DatabaseConfig.from_env(
                        container_env(container, config_maps)
                    ).connections
                except ConfigError:
                    continue  # the deployment rules name the bad setting
            if each:
                yield name_of(workload), _most_pods(cluster, workload), each


def _reads(container: Mapping[str, Any], secrets: set[str]) -> bool:
    for entry in container.get("env") or []:
        ref = (((entry or {}).get("valueFrom") or {}).get("secretKeyRef")) or {}
        if ref.get("name") in secrets:
            return True
    return any(
        (((source or {}).get("secretRef")) or {}).get("name") in secrets
        for source in container.get("envFrom") or []
    )


def _most_pods(cluster: Cluster, workload: Manifest) -> int:
    """The most pods a workload runs: its HPA's maxReplicas, else its replicas (default 1)."""
    for hpa in hpas_of(cluster, workload):
        high = spec_of(hpa).get("maxReplicas")
        return high if isinstance(high, int) else 1
    replicas = spec_of(workload).get("replicas", 1)
    return replicas if isinstance(replicas, int) else 1
