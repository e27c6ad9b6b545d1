"""CloudNativePG's admission webhook rules (his.mesh.cnpg_webhook): each seeded mistake is one
finding naming the field, the real Cluster of every overlay passes, and a mistake an overlay
patch writes names the patch."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from his.mesh import quantity
from his.mesh.check import run_check
from his.mesh.cnpg_webhook import check
from tests.mesh.conftest import REPOSITORY, edit, needs_kubectl
from tests.mesh.test_schema import CLUSTER_FILE, check_cluster, cluster

PROD = "deploy/kustomize/overlays/prod"


def _parameters(**parameters: str) -> dict[str, Any]:
    return {"parameters": {"max_connections": "600", **parameters}}


@pytest.mark.parametrize(
    ("spec", "where", "problem", "fix"),
    [
        (
            {"storage": {"size": "20GB"}},
            "spec.storage.size",
            "'20GB' is not a Kubernetes quantity such as 10Gi",
            "write 20Gi",
        ),
        (
            {"walStorage": {"size": "ten"}},
            "spec.walStorage.size",
            "'ten' is not a Kubernetes quantity",
            "binary Ki, Mi, Gi",
        ),
        ({"storage": {"storageClass": "ssd"}}, "spec.storage.size", "no size", "set size"),
        (
            {"maxSyncReplicas": 3},
            "spec.maxSyncReplicas",
            "3 is not lower than instances (3)",
            "use at most 2",
        ),
        (
            {"minSyncReplicas": 2, "maxSyncReplicas": 1},
            "spec.minSyncReplicas",
            "2 is greater than maxSyncReplicas (1)",
            "at most maxSyncReplicas",
        ),
        (
            {
                "affinity": {
                    "enablePodAntiAffinity": True,
                    "podAntiAffinityType": "requried",
                    "topologyKey": "kubernetes.io/hostname",
                }
            },
            "spec.affinity.podAntiAffinityType",
            "'requried' is not a pod anti-affinity type",
            "preferred (the default) or required",
        ),
        (
            {"instances": 1, "primaryUpdateStrategy": "supervised"},
            "spec.primaryUpdateStrategy",
            "supervised with one instance",
            "use unsupervised",
        ),
        (
            {"imageName": "ghcr.io/cloudnative-pg/postgresql:latest"},
            "spec.imageName",
            "is tagged latest",
            "postgresql:16.6",
        ),
        (
            {"resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "1"}}},
            "spec.resources.requests.cpu",
            "2 is above the limit 1",
            "raise limits.cpu",
        ),
        (
            {"postgresql": _parameters(shared_buffers="4GB")},
            "spec.resources.requests.memory",
            "2Gi is less than shared_buffers (4GB)",
            "raise the memory request",
        ),
        (
            {"postgresql": _parameters(port="5433")},
            "spec.postgresql.parameters.port",
            "the operator sets port itself",
            "remove it",
        ),
        (
            {"postgresql": _parameters(min_wal_size="2GB")},
            "spec.postgresql.parameters.min_wal_size",
            "min_wal_size is not below max_wal_size",
            "keep min_wal_size below max_wal_size",
        ),
    ],
    ids=[
        "size-in-GB",
        "wal-size-a-word",
        "no-size",
        "max-sync-not-below-instances",
        "min-above-max-sync",
        "anti-affinity-typo",
        "supervised-single",
        "latest-image",
        "request-above-limit",
        "shared-buffers-above-memory",
        "operator-owned-parameter",
        "wal-sizes-reversed",
    ],
)
def test_a_mistake_the_webhook_refuses_is_a_finding(
    spec: dict[str, Any], where: str, problem: str, fix: str
) -> None:
    found = check_cluster(cluster(**spec)).findings
    assert len(found) == 1, found
    (finding,) = found
    assert finding.file == CLUSTER_FILE
    assert finding.subject == f"Cluster his/his-db {where}"
    assert problem in finding.problem and "admission webhook refuses" in finding.problem, finding
    assert fix in finding.fix, finding


def test_correct_variants_pass() -> None:
    manifest = cluster(
        minSyncReplicas=1,
        maxSyncReplicas=2,
        walStorage={"size": "10Gi"},
        postgresql=_parameters(shared_buffers="512MB", min_wal_size="1GB", max_wal_size="4GB"),
        primaryUpdateStrategy="supervised",
    )
    assert check_cluster(manifest).findings == []
    assert (
        list(
            check(cluster(storage={"pvcTemplate": {"resources": {"requests": {"storage": "1Gi"}}}}))
        )
        == []
    )


def test_wal_sizes_must_stay_below_the_wal_volume() -> None:
    manifest = cluster(walStorage={"size": "1Gi"}, postgresql=_parameters(max_wal_size="2GB"))
    (finding,) = check_cluster(manifest).findings
    assert finding.subject.endswith("spec.postgresql.parameters.max_wal_size")
    assert "not below the WAL volume size (1Gi)" in finding.problem


def test_the_legacy_and_current_synchronous_settings_never_mix() -> None:
    manifest = cluster(
        maxSyncReplicas=1, postgresql={"synchronous": {"method": "any", "number": 3}}
    )
    places = sorted(f.subject.rsplit(" ", 1)[-1] for f in check_cluster(manifest).findings)
    assert places == ["spec.postgresql.synchronous", "spec.postgresql.synchronous.number"]


def test_quantities_are_read_as_kubernetes_reads_them() -> None:
    assert quantity.parse("1Gi") == Decimal(1024**3)
    assert quantity.parse("250m") == Decimal("0.25")
    assert quantity.parse("1e3") == Decimal(1000)
    assert quantity.parse(2) == Decimal(2)
    assert quantity.parse("10GB") is None and quantity.parse("ten") is None
    assert quantity.fix("512 mb").startswith("write 512Mi")


@needs_kubectl
def test_a_webhook_mistake_in_an_overlay_patch_names_the_patch(policy_copy: Path) -> None:
    edit(policy_copy, f"{PROD}/postgres.yaml", "size: 100Gi", "size: 100GB")
    found = [f for f in run_check(policy_copy, ["prod"]).findings if "storage.size" in f.subject]
    assert [f.file for f in found] == [f"{PROD}/postgres.yaml"], found
    assert "patched in by" in found[0].subject and "write 100Gi" in found[0].fix


@needs_kubectl
def test_the_real_policy_passes_the_webhook_rules() -> None:
    assert not [f for f in run_check(REPOSITORY).findings if "webhook" in f.problem]
