"""Reproductions from the review of issue 18 (rev18, items 5-7, 10-13, C, D, F, G): a mistake
seeded into a copy of the real policy that `his mesh check` passed or blamed on the wrong file.
Each seed must give one finding naming the file to edit, the object, the problem and the fix;
a correct variant of the same edit must pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from his.mesh.check import run_check
from his.mesh.findings import Finding
from tests.mesh.conftest import edit, needs_kubectl

pytestmark = needs_kubectl

BASE = "deploy/kustomize/base"
PROD = "deploy/kustomize/overlays/prod"
CLUSTER = "deploy/kustomize/components/postgres/cluster.yaml"
CANARY = "deploy/kustomize/components/canary"
DR = "mesh/istio/destination-rules"
VS = "mesh/istio/virtual-services"


def _findings(root: Path, overlay: str) -> list[Finding]:
    return run_check(root, [overlay]).findings


@dataclass(frozen=True)
class Seed:
    """One seeded mistake and the single finding it must give."""

    name: str
    apply: Callable[[Path], None]
    overlay: str
    file: str
    subject: str
    problem: str
    fix: str
    alone: bool = True  # the only finding (else one of several, each checked elsewhere)


def _no_cpu_request(root: Path) -> None:
    # Both overlays replace the base's resources; prod's patch is where the request lives.
    edit(root, f"{PROD}/resources.yaml", "      cpu: 500m\n", "")


def _old_target_version(root: Path) -> None:
    edit(root, f"{BASE}/lab/hpa.yaml", "apiVersion: apps/v1", "apiVersion: apps/v1beta1")


def _scale_up_disabled(root: Path) -> None:
    edit(
        root,
        f"{BASE}/lab/hpa.yaml",
        "  behavior:\n",
        "  behavior:\n    scaleUp:\n      selectPolicy: Disabled\n",
    )


def _max_connections(value: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        edit(root, CLUSTER, 'max_connections: "900"', f'max_connections: "{value}"')

    return apply


def _startup(threshold: int) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        edit(
            root,
            f"{BASE}/lab/deployment.yaml",
            "failureThreshold: 30",
            f"failureThreshold: {threshold}",
        )

    return apply


def _min_health(percent: int) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        edit(
            root,
            f"{DR}/lab.yaml",
            "      maxEjectionPercent: 50\n",
            f"      maxEjectionPercent: 50\n      minHealthPercent: {percent}\n",
        )

    return apply


def _idle(timeout: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        edit(root, f"{DR}/lab.yaml", "idleTimeout: 300s", f"idleTimeout: {timeout}")

    return apply


def _database_image(root: Path) -> None:
    edit(root, CLUSTER, "postgresql:16.6", "postgresql:16")


def _wildcard_host(root: Path) -> None:
    edit(
        root,
        f"{DR}/audit.yaml",
        "host: audit.his.svc.cluster.local",
        "host: '*.his.svc.cluster.local'",
    )


_SPLIT = (
    "          weight: 100\n        - destination:\n"
    "            host: patient.his.svc.cluster.local\n"
    "            subset: canary\n          weight: {canary}\n"
)


def _canary_relabelled(root: Path) -> None:
    file = f"{CANARY}/patient.yaml"
    edit(root, file, "      version: v2\n  strategy", "      version: canary\n  strategy")
    edit(root, file, "        version: v2\n", "        version: canary\n")
    # The canary gets calls (as after `his canary patient set 10`).
    edit(
        root,
        f"{VS}/patient.yaml",
        _SPLIT.format(canary=0),
        _SPLIT.format(canary=10).replace("weight: 100", "weight: 90"),
        count=2,
    )


def _main_in_prod(root: Path) -> None:
    edit(root, f"{PROD}/kustomization.yaml", "newTag: 1.0.0", "newTag: main")


SEEDS = [
    Seed(
        "5 cpu request of a cpu-utilisation HPA",
        _no_cpu_request,
        "prod",
        f"{PROD}/resources.yaml",
        "his/lab, his/orders",
        "HorizontalPodAutoscaler his/<each> metrics[0] targets cpu Utilization",
        "set resources.requests.cpu",
        alone=False,
    ),
    Seed(
        "6 scaleTargetRef apiVersion",
        _old_target_version,
        "dev",
        f"{BASE}/lab/hpa.yaml",
        "HorizontalPodAutoscaler his/lab scaleTargetRef.apiVersion",
        "apps/v1beta1 does not resolve Deployment his/lab, which is apps/v1",
        "set scaleTargetRef.apiVersion: apps/v1",
    ),
    Seed(
        "7 scale-up disabled",
        _scale_up_disabled,
        "dev",
        f"{BASE}/lab/hpa.yaml",
        "HorizontalPodAutoscaler his/lab behavior.scaleUp.selectPolicy",
        "never adds a pod",
        "remove selectPolicy",
    ),
    Seed(
        "10 max_connections below the pods' budget",
        _max_connections("50"),
        "prod",
        CLUSTER,
        "Cluster his/his-db postgresql.parameters.max_connections",
        "lab 6x10 + orders 6x10 + patient 6x10 + patient-v2 6x10 + pharmacy 4x10 + "
        "scheduling 10x10 + scheduling-v2 10x10 (pods at maxReplicas x connections per pod, "
        "HIS_DB_POOL_SIZE + HIS_DB_MAX_OVERFLOW + HIS_DB_DRIVER_POOL_SIZE) = 680, "
        "plus superuser_reserved_connections 3 = 683",
        "raise max_connections to at least 683",
    ),
    Seed(
        "11 start-up probe of 1 s",
        _startup(1),
        "dev",
        f"{BASE}/lab/deployment.yaml",
        "Deployment his/lab containers[0] his startupProbe",
        "allows 1 s to start",
        "allow at least 10 s",
    ),
    Seed(
        "12 minHealthPercent 100",
        _min_health(100),
        "dev",
        f"{DR}/lab.yaml",
        "DestinationRule his/lab trafficPolicy.outlierDetection.minHealthPercent",
        "the first ejection switches it off",
        "remove it",
    ),
    Seed(
        "13 idleTimeout 100ms",
        _idle("100ms"),
        "dev",
        f"{DR}/lab.yaml",
        "DestinationRule his/lab trafficPolicy.connectionPool.http.idleTimeout",
        "mTLS handshake",
        "set 300s",
    ),
    Seed(
        "C database image tag",
        _database_image,
        "prod",
        CLUSTER,
        "Cluster his/his-db spec.imageName",
        "kustomize's images[] does not rewrite it",
        "tag spec.imageName with a full PostgreSQL version",
    ),
    Seed(
        "D wildcard DestinationRule host",
        _wildcard_host,
        "dev",
        f"{DR}/audit.yaml",
        "DestinationRule his/audit host",
        "host '*.his.svc.cluster.local' is a wildcard: Istio applies it",
        "name the service's host: audit.his.svc.cluster.local",
    ),
    Seed(
        "F canary pods relabelled",
        _canary_relabelled,
        "dev",
        f"{CANARY}/patient.yaml",
        "Deployment his/patient-v2 spec.template.metadata.labels",
        "its pods (version=canary) are in no subset",
        "label its pods version=v2 again",
    ),
    Seed(
        "G newTag main in prod",
        _main_in_prod,
        "prod",
        f"{PROD}/kustomization.yaml",
        "kustomization images[0] his",
        "(tag 'main')",
        "set newTag to a release version",
    ),
]


@pytest.mark.parametrize("seed", SEEDS, ids=[s.name for s in SEEDS])
def test_a_seeded_mistake_gives_one_finding_on_the_file_to_edit(
    policy_copy: Path, seed: Seed
) -> None:
    seed.apply(policy_copy)
    found = _findings(policy_copy, seed.overlay)
    assert len(found) == 1 or not seed.alone, found
    ours = [f for f in found if seed.subject in f.subject]
    assert len(ours) == 1, found
    (finding,) = ours
    assert finding.file == seed.file, finding
    assert seed.problem in finding.problem, finding
    assert seed.fix in finding.fix, finding


def test_no_cpu_request_is_one_finding_listing_every_deployment(policy_copy: Path) -> None:
    # The deployment rule's "no cpu requests" leaves the request an HPA needs to the HPA rule;
    # the patch's one mistake is one finding listing every Deployment it writes (rev18b 5).
    _no_cpu_request(policy_copy)
    (finding,) = _findings(policy_copy, "prod")
    assert finding.file == f"{PROD}/resources.yaml", finding
    assert "Utilization" in finding.problem, finding
    assert "(11 objects)" in finding.subject, finding  # canaries included


def test_wildcard_host_names_the_database_it_reaches(policy_copy: Path) -> None:
    _wildcard_host(policy_copy)
    (finding,) = _findings(policy_copy, "prod")
    assert "his-db-rw" in finding.problem and "ISTIO_MUTUAL" in finding.problem, finding
    assert "add mesh/istio" not in finding.fix, finding


def test_newtag_main_for_both_images_is_one_finding_per_entry(policy_copy: Path) -> None:
    _main_in_prod(policy_copy)
    edit(policy_copy, f"{PROD}/kustomization.yaml", "newTag: 1.1.0", "newTag: dev")
    found = _findings(policy_copy, "prod")
    assert [f.subject for f in found] == [
        "kustomization images[0] his",
        "kustomization images[1] his-canary",
    ], found


@pytest.mark.parametrize(
    ("name", "apply", "overlay"),
    [
        ("scale-down disabled may be meant", None, "dev"),
        ("max_connections at the peak", _max_connections("683"), "prod"),
        ("a start-up probe of 10 s", _startup(10), "dev"),
        ("minHealthPercent 50", _min_health(50), "prod"),
        ("minHealthPercent 66 of 3 pods", _min_health(66), "prod"),
        ("idleTimeout 1s", _idle("1s"), "dev"),
    ],
)
def test_a_correct_variant_passes(
    policy_copy: Path, name: str, apply: Callable[[Path], None] | None, overlay: str
) -> None:
    if apply is None:
        edit(
            policy_copy,
            f"{BASE}/lab/hpa.yaml",
            "  behavior:\n",
            "  behavior:\n    scaleUp:\n      selectPolicy: Max\n",
        )
        edit(
            policy_copy,
            f"{BASE}/lab/hpa.yaml",
            "      stabilizationWindowSeconds: 300\n",
            "      stabilizationWindowSeconds: 300\n      selectPolicy: Disabled\n",
        )
    else:
        apply(policy_copy)
    assert _findings(policy_copy, overlay) == []


def test_min_health_above_what_one_ejection_leaves_is_a_finding(policy_copy: Path) -> None:
    # prod runs at least 3 lab pods: one ejected leaves 67 %, below 70.
    _min_health(70)(policy_copy)
    (finding,) = _findings(policy_copy, "prod")
    assert finding.file == f"{DR}/lab.yaml", finding
    assert "of the 3 pods at its lowest scale, one ejected leaves 67 %" in finding.problem


def test_max_connections_one_below_the_peak_is_a_finding(policy_copy: Path) -> None:
    _max_connections("682")(policy_copy)
    (finding,) = _findings(policy_copy, "prod")
    assert "at least 683" in finding.fix, finding
