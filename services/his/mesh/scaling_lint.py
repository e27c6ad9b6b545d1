"""Lint of the objects that decide how many pods run and how many may go: HPAs and PDBs.

An HPA whose minReplicas exceeds maxReplicas is refused by nothing and scales erratically; one
whose target does not exist (or not at the apiVersion it names) scales nothing; one whose
Utilization metric divides by a request a container lacks never computes; scaleUp Disabled never
adds a pod; two on one Deployment fight. A PodDisruptionBudget
must select pods and leave at least one of them evictable at the lowest scale, or every node
drain (cluster upgrades included) blocks on it; two budgets on one pod make the eviction API
refuse every eviction of it. A CloudNativePG Cluster's pods count as pods (labelled
cnpg.io/cluster=<name>, one primary and instances - 1 replicas), and the operator keeps its own
budgets on them (enablePDB): a one-instance Cluster keeping its operator's budget blocks drains,
and a budget of ours on pods the operator's covers is a second budget on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from his.mesh.cluster import Cluster, finding, kind_of, name_of, namespace_of, spec_of
from his.mesh.findings import Finding
from his.mesh.network_lint import selects
from his.mesh.sources import Manifest

_WORKLOADS = ("Deployment", "StatefulSet")


def _workloads(cluster: Cluster) -> list[Manifest]:
    return [m for kind in _WORKLOADS for m in cluster.of_kind(kind)]


def _pod_labels(workload: Manifest) -> dict[str, str]:
    template = spec_of(workload).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _hpas(cluster: Cluster) -> Iterator[Finding]:
    workloads = {(kind_of(w), namespace_of(w), name_of(w)): w for w in _workloads(cluster)}
    scaled: dict[tuple[str, str, str], Manifest] = {}
    for hpa in cluster.of_kind("HorizontalPodAutoscaler"):
        spec = spec_of(hpa)
        low, high = spec.get("minReplicas", 1), spec.get("maxReplicas")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            yield finding(
                cluster,
                hpa,
                "minReplicas",
                f"minReplicas {low} > maxReplicas {high}: the API server rejects the "
                "HorizontalPodAutoscaler (validation: minReplicas must be less than or equal to "
                "maxReplicas), so the apply fails and the workload keeps its old scaling",
                "make minReplicas at most maxReplicas",
                paths=[("spec", "minReplicas"), ("spec", "maxReplicas")],
            )
        target = spec.get("scaleTargetRef") or {}
        ref = (str(target.get("kind", "")), namespace_of(hpa), str(target.get("name", "")))
        if ref not in workloads:
            known = sorted(n for k, ns, n in workloads if k == ref[0] and ns == ref[1])
            yield finding(
                cluster,
                hpa,
                "scaleTargetRef",
                f"{ref[0]} {ref[1]}/{ref[2]} does not exist in this overlay: the HPA scales "
                "nothing and the workload it was meant for keeps its replica count",
                "name the Deployment it scales"
                + (f" (one of {', '.join(known)})" if known else ""),
            )
            continue
        yield from _target_version(cluster, hpa, target, workloads[ref])
        yield from _utilization_requests(cluster, hpa, workloads[ref])
        yield from _scale_up_disabled(cluster, hpa)
        if ref in scaled:
            yield finding(
                cluster,
                hpa,
                "scaleTargetRef",
                f"{ref[0]} {ref[1]}/{ref[2]} is scaled by HorizontalPodAutoscaler "
                f"{namespace_of(scaled[ref])}/{name_of(scaled[ref])} too: the two fight over "
                "its replica count",
                "keep one HPA per workload",
            )
        scaled.setdefault(ref, hpa)


def _target_version(
    cluster: Cluster, hpa: Manifest, target: Mapping[str, Any], workload: Manifest
) -> Iterator[Finding]:
    """scaleTargetRef names a group/version as well as a kind and name: the controller asks the
    API server for the scale subresource of exactly that, and a version the server does not
    serve (apps/v1beta1, gone since Kubernetes 1.16) resolves to nothing."""
    written, rendered = str(target.get("apiVersion") or ""), str(workload.get("apiVersion", ""))
    if written != rendered:
        yield finding(
            cluster,
            hpa,
            "scaleTargetRef.apiVersion",
            f"{written or 'unset'} does not resolve {kind_of(workload)} "
            f"{namespace_of(workload)}/{name_of(workload)}, which is {rendered}: the "
            "autoscaler cannot get its scale (FailedGetScale) and never scales it",
            f"set scaleTargetRef.apiVersion: {rendered}",
            paths=[("spec", "scaleTargetRef", "apiVersion")],
        )


def _utilization_requests(cluster: Cluster, hpa: Manifest, workload: Manifest) -> Iterator[Finding]:
    """A Utilization target is a percentage of the pods' request: the autoscaler computes it only
    when every container of the pod requests that resource (else FailedGetResourceMetric, and
    it never scales). A ContainerResource metric needs it of its one container only."""
    pod = (spec_of(workload).get("template") or {}).get("spec") or {}
    containers = [c for c in pod.get("containers") or [] if isinstance(c, Mapping)]
    for index, resource, only in _utilization_metrics(hpa):
        for number, container in enumerate(containers):
            if only is not None and container.get("name") != only:
                continue
            requests = (container.get("resources") or {}).get("requests") or {}
            if resource in requests:
                continue
            where = f"containers[{number}] {container.get('name', '')}".rstrip()
            yield finding(
                cluster,
                workload,
                f"{where} resources.requests.{resource}",
                f"no {resource} request, but HorizontalPodAutoscaler "
                f"{namespace_of(hpa)}/{name_of(hpa)} metrics[{index}] targets {resource} "
                "Utilization, a percentage of that request: the autoscaler cannot compute it "
                "(FailedGetResourceMetric) and never scales",
                f"set resources.requests.{resource} on this container",
                paths=[
                    ("spec", "template", "spec", "containers", number, "resources", "requests"),
                    ("spec", "template", "spec", "containers", number, "resources"),
                ],
            )


def _utilization_metrics(hpa: Manifest) -> Iterator[tuple[int, str, str | None]]:
    """(index, resource, container or None for all) of each Utilization metric of an HPA."""
    for index, metric in enumerate(spec_of(hpa).get("metrics") or []):
        kind = (metric or {}).get("type")
        if kind not in ("Resource", "ContainerResource"):
            continue
        source = metric.get("resource" if kind == "Resource" else "containerResource") or {}
        if (source.get("target") or {}).get("type") == "Utilization":
            only = source.get("container") if kind == "ContainerResource" else None
            yield index, str(source.get("name", "")), None if only is None else str(only)


def utilization_requests(cluster: Cluster, workload: Manifest) -> set[tuple[str, str | None]]:
    """(resource, container or None for all) whose request an HPA of the workload needs: the
    HPA rule reports a missing one, naming the HPA, so the container rules need not."""
    return {
        (resource, only)
        for hpa in hpas_of(cluster, workload)
        for _, resource, only in _utilization_metrics(hpa)
    }


def hpas_of(cluster: Cluster, workload: Manifest) -> list[Manifest]:
    """The HorizontalPodAutoscalers whose scaleTargetRef names `workload`."""
    found = []
    for hpa in cluster.of_kind("HorizontalPodAutoscaler"):
        target = spec_of(hpa).get("scaleTargetRef") or {}
        if (
            namespace_of(hpa) == namespace_of(workload)
            and target.get("kind") == kind_of(workload)
            and target.get("name") == name_of(workload)
        ):
            found.append(hpa)
    return found


def _scale_up_disabled(cluster: Cluster, hpa: Manifest) -> Iterator[Finding]:
    """selectPolicy Disabled turns a direction off. Scaling down never may be meant (a service
    that must keep its pods); scaling up never is the opposite of an autoscaler."""
    up = ((spec_of(hpa).get("behavior") or {}).get("scaleUp")) or {}
    if up.get("selectPolicy") == "Disabled":
        yield finding(
            cluster,
            hpa,
            "behavior.scaleUp.selectPolicy",
            "Disabled: the autoscaler never adds a pod, so a peak is served by minReplicas "
            "pods whatever maxReplicas says",
            "remove selectPolicy (Max is the default), or tune scaleUp.policies instead",
            paths=[("spec", "behavior", "scaleUp", "selectPolicy")],
        )


def lowest_scale(cluster: Cluster, workload: Manifest) -> int:
    """The fewest pods a workload runs: its HPA's minReplicas, else its replicas (default 1)."""
    for hpa in hpas_of(cluster, workload):
        return int(spec_of(hpa).get("minReplicas", 1))
    return int(spec_of(workload).get("replicas", 1))


def fewest_pods(cluster: Cluster, namespace: str, selector: Mapping[str, Any]) -> int:
    """The fewest pods of the workloads whose pods a Service selector selects."""
    wanted = {str(k): str(v) for k, v in selector.items()}
    return sum(
        lowest_scale(cluster, w)
        for w in _workloads(cluster)
        if namespace_of(w) == namespace
        and wanted
        and selects({"matchLabels": wanted}, _pod_labels(w))
    )


def _count(value: Any, total: int) -> int | None:
    """An IntOrString of a PDB as a pod count of `total` (percentages round up, as Kubernetes
    does for minAvailable; None when it is neither)."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%") and text[:-1].isdigit():
        return -(-int(text[:-1]) * total // 100)
    return None


@dataclass(frozen=True)
class _Pods:
    """Pods a budget may select: a workload's, or one role of a CloudNativePG Cluster's."""

    name: str  # `Deployment his/patient`, `Cluster his/his-db primary`
    short: str  # `patient`, `his-db primary`
    namespace: str
    labels: dict[str, str]
    lowest: int  # the fewest of them running
    operator_budget: bool = False  # the CloudNativePG operator keeps its own budget on them


def _pod_sets(cluster: Cluster) -> list[_Pods]:
    found = [
        _Pods(
            f"{kind_of(w)} {namespace_of(w)}/{name_of(w)}",
            name_of(w),
            namespace_of(w),
            _pod_labels(w),
            lowest_scale(cluster, w),
        )
        for w in _workloads(cluster)
    ]
    for db in cnpg_clusters(cluster):
        found.extend(_instances(db))
    return found


def cnpg_clusters(cluster: Cluster) -> list[Manifest]:
    return [
        db
        for db in cluster.of_kind("Cluster")
        if str(db.get("apiVersion", "")).startswith("postgresql.cnpg.io/")
    ]


def _instances(db: Manifest) -> list[_Pods]:
    """The pods the operator runs for a Cluster, labelled as it labels them
    (cnpg.io/cluster, cnpg.io/instanceRole and the older `role`, inheritedMetadata's labels):
    one primary and instances - 1 replicas. With enablePDB (the default) it keeps a budget on
    the primary, and one on the replicas from three instances on (pkg/specs/
    poddisruptionbudget.go)."""
    spec = spec_of(db)
    instances = spec.get("instances", 1)
    instances = instances if isinstance(instances, int) else 1
    inherited = ((spec.get("inheritedMetadata") or {}).get("labels")) or {}
    common = {str(k): str(v) for k, v in inherited.items()}
    common |= {"cnpg.io/cluster": name_of(db), "cnpg.io/podRole": "instance"}
    budgets = spec.get("enablePDB", True) is not False
    name = f"Cluster {namespace_of(db)}/{name_of(db)}"
    roles = [("primary", 1, budgets), ("replica", instances - 1, budgets and instances >= 3)]
    return [
        _Pods(
            f"{name} {role}",
            f"{name_of(db)} {role}",
            namespace_of(db),
            common | {"cnpg.io/instanceRole": role, "role": role},
            count,
            operator,
        )
        for role, count, operator in roles
        if count > 0
    ]


def _pdbs(cluster: Cluster) -> Iterator[Finding]:
    budgets: dict[str, Manifest] = {}
    pod_sets = _pod_sets(cluster)
    for pdb in cluster.of_kind("PodDisruptionBudget"):
        spec = spec_of(pdb)
        selector = spec.get("selector") or {}
        selected = [
            p for p in pod_sets if p.namespace == namespace_of(pdb) and selects(selector, p.labels)
        ]
        if not selected:
            yield finding(
                cluster,
                pdb,
                "selector",
                "selects no pods of this overlay: it protects nothing during drains",
                "select the pods it is for (their template labels)",
            )
            continue
        covered = [p.name for p in selected if p.operator_budget]
        if covered:
            yield finding(
                cluster,
                pdb,
                "selector",
                f"selects the pods of {', '.join(covered)}, which CloudNativePG's own "
                "PodDisruptionBudget (enablePDB) covers too: the eviction API refuses to "
                "evict a pod with two budgets, so drains block",
                "remove this budget (the operator's keeps the database available), or set "
                "enablePDB: false on the Cluster",
            )
        for pods in selected:
            other = budgets.setdefault(pods.name, pdb)
            if other is not pdb:
                yield finding(
                    cluster,
                    pdb,
                    "selector",
                    f"selects the pods of {pods.name}, which "
                    f"PodDisruptionBudget {namespace_of(other)}/{name_of(other)} selects too: "
                    "the eviction API refuses to evict a pod with two budgets, so drains block",
                    "keep one budget per set of pods",
                )
        yield from _room(cluster, pdb, spec, selected)


def _room(
    cluster: Cluster, pdb: Manifest, spec: Mapping[str, Any], selected: list[_Pods]
) -> Iterator[Finding]:
    lowest = sum(p.lowest for p in selected)
    names = ", ".join(p.short for p in selected)
    if "maxUnavailable" in spec:
        allowed = _count(spec["maxUnavailable"], lowest)
        if allowed == 0:
            yield finding(
                cluster,
                pdb,
                "maxUnavailable",
                f"{spec['maxUnavailable']!r} lets no pod of {names} be evicted: every node "
                "drain (and cluster upgrade) waits on it forever",
                "set maxUnavailable: 1",
                paths=[("spec", "maxUnavailable")],
            )
    elif "minAvailable" in spec:
        needed = _count(spec["minAvailable"], lowest)
        if needed is not None and needed >= lowest:
            yield finding(
                cluster,
                pdb,
                "minAvailable",
                f"{spec['minAvailable']!r} keeps all {lowest} pod(s) of {names} at its lowest "
                "scale: no pod may be evicted, so node drains block",
                "use maxUnavailable: 1 (works at every scale, one replica included)",
                paths=[("spec", "minAvailable")],
            )


def _cnpg_single_instance_pdb(cluster: Cluster) -> Iterator[Finding]:
    """CloudNativePG gives every Cluster a PodDisruptionBudget on its primary (enablePDB, default
    true); with one instance there is no replica to switch over to, so that budget blocks every
    drain of the node (CloudNativePG docs, kubernetes_upgrade.md)."""
    for db in cnpg_clusters(cluster):
        spec = spec_of(db)
        if spec.get("instances", 1) == 1 and spec.get("enablePDB", True) is not False:
            yield finding(
                cluster,
                db,
                "enablePDB",
                "one instance with CloudNativePG's PodDisruptionBudget (enablePDB defaults to "
                "true): the primary may never be evicted, so draining its node (and every "
                "cluster upgrade) blocks",
                "set enablePDB: false where one instance is meant (dev), or run instances: 3",
                paths=[("spec", "instances")],
            )


SCALING_RULES = (_hpas, _pdbs, _cnpg_single_instance_pdb)
