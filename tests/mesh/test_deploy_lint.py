"""The deployment lint (his.mesh.deploy_lint) on the real overlays (clean) and on copies with one
seeded mistake each: every rule names the file to edit and the problem. Also the HPA bounds the
hospital planned, canaries included."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from his.mesh.cluster import Cluster
from his.mesh.deploy_lint import lint_deploy
from his.mesh.findings import Finding
from his.mesh.render import render
from his.mesh.sources import Manifest, file_of, key, scan
from his.runtime.config import ServerConfig
from tests.mesh.conftest import REPOSITORY, edit, needs_kubectl

pytestmark = needs_kubectl

OVERLAYS = "deploy/kustomize/overlays"
BASE = "deploy/kustomize/base"


def cluster(root: Path, overlay: str) -> Cluster:
    """One overlay rendered, each object located in the file it is written in (as the check)."""
    tree = f"{OVERLAYS}/{overlay}"
    files = scan(root).files

    def locate(manifest: Manifest) -> str:
        return file_of(files, manifest, tree)

    return Cluster(render(root / tree), locate)


def findings(root: Path, overlay: str = "prod") -> list[Finding]:
    return list(lint_deploy(cluster(root, overlay)))


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_real_overlays_are_clean(overlay: str) -> None:
    found = findings(REPOSITORY, overlay)
    assert found == [], "\n".join(map(str, found))


def _default_account(root: Path) -> None:
    edit(
        root,
        f"{BASE}/patient/deployment.yaml",
        "serviceAccountName: patient",
        "serviceAccountName: default",
    )


def _target_port_typo(root: Path) -> None:
    edit(root, f"{BASE}/patient/service.yaml", "targetPort: grpc", "targetPort: grcp")


def _grace_below_drain(root: Path) -> None:
    edit(
        root,
        f"{BASE}/scheduling/deployment.yaml",
        "terminationGracePeriodSeconds: 45",
        "terminationGracePeriodSeconds: 20",
    )


def _writable_root(root: Path) -> None:
    edit(
        root,
        f"{BASE}/iam/deployment.yaml",
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
    )


def _no_readiness(root: Path) -> None:
    edit(root, f"{BASE}/audit/deployment.yaml", "readinessProbe:", "x-removed:")
    # Drop the renamed block whole: it is the only key the schema would not know.
    path = root / f"{BASE}/audit/deployment.yaml"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "x-removed:" in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
    ):
        end += 1
    path.write_text("".join(lines[:start] + lines[end:]), encoding="utf-8")


def _inline_secret(root: Path) -> None:
    edit(
        root,
        "deploy/kustomize/components/canary/scheduling.yaml",
        "          env:\n",
        "          env:\n"
        "            - name: HIS_PAGE_TOKEN_KEY_OLD\n"
        "              value: c2VjcmV0\n",
    )


def _schedule_any_way(root: Path) -> None:
    edit(
        root,
        f"{OVERLAYS}/prod/zone-spread.yaml",
        "whenUnsatisfiable: ScheduleAnyway",
        "whenUnsatisfiable: ScheduleAnyWay",
    )


def _loopback_only(root: Path) -> None:
    edit(root, f"{BASE}/patient/configmap.yaml", 'HIS_HOST: "[::]"', "HIS_HOST: 127.0.0.1")


def _caller_without_address(root: Path) -> None:
    edit(
        root,
        f"{BASE}/scheduling/configmap.yaml",
        "  HIS_PATIENT_ADDR: patient.his.svc.cluster.local:50051\n",
        "",
    )


def _liveness_follows_database(root: Path) -> None:
    edit(
        root,
        f"{BASE}/patient/deployment.yaml",
        "          livenessProbe:\n            grpc:\n              port: 50051\n"
        "              service: liveness",
        "          livenessProbe:\n            grpc:\n              port: 50051\n"
        '              service: ""',
    )


def _readiness_asks_liveness(root: Path) -> None:
    edit(
        root,
        f"{BASE}/iam/deployment.yaml",
        "              service: his.iam.v1.IamService",
        "              service: liveness",
    )


DRAIN = ServerConfig.from_env(
    {"HIS_DRAIN_DELAY_S": "5", "HIS_GRACE_S": "20"},
    port=ServerConfig.port,
    metrics_port=ServerConfig.metrics_port,
)


@pytest.mark.parametrize(
    ("seed", "file", "subject", "problem"),
    [
        (
            _default_account,
            f"{BASE}/patient/deployment.yaml",
            "Deployment his/patient spec.template.spec.serviceAccountName",
            "runs as ServiceAccount 'default', not 'patient'",
        ),
        (
            _target_port_typo,
            f"{BASE}/patient/service.yaml",
            "Service his/patient ports[0] grpc-web",
            "targetPort 'grcp' is no containerPort of Deployment his/patient",
        ),
        (
            _grace_below_drain,
            f"{BASE}/scheduling/deployment.yaml",
            "Deployment his/scheduling spec.template.spec.terminationGracePeriodSeconds",
            f"20 s is not more than the server's drain of "
            f"{DRAIN.drain_delay_s + DRAIN.grace_s:g} s",
        ),
        (
            _writable_root,
            f"{BASE}/iam/deployment.yaml",
            "Deployment his/iam containers[0] his securityContext.readOnlyRootFilesystem",
            "readOnlyRootFilesystem is False, not true",
        ),
        (
            _no_readiness,
            f"{BASE}/audit/deployment.yaml",
            "Deployment his/audit containers[0] his readinessProbe",
            "no readinessProbe",
        ),
        (
            _liveness_follows_database,
            f"{BASE}/patient/deployment.yaml",
            "Deployment his/patient containers[0] his livenessProbe.grpc.service",
            "a database outage would restart every pod",
        ),
        (
            _readiness_asks_liveness,
            f"{BASE}/iam/deployment.yaml",
            "Deployment his/iam containers[0] his readinessProbe.grpc.service",
            "stays SERVING while the database is down",
        ),
        (
            _inline_secret,
            "deploy/kustomize/components/canary/scheduling.yaml",
            "Deployment his/scheduling-v2 containers[0] his env HIS_PAGE_TOKEN_KEY_OLD",
            "looks secret (KEY) but its value is written inline",
        ),
        (
            _schedule_any_way,
            f"{BASE}/patient/deployment.yaml",
            "Deployment his/patient spec.template.spec.topologySpreadConstraints[0]",
            "whenUnsatisfiable 'ScheduleAnyWay' is neither DoNotSchedule nor ScheduleAnyway",
        ),
        (
            _loopback_only,
            f"{BASE}/patient/deployment.yaml",
            "Deployment his/patient containers[0] his HIS_HOST",
            "the server binds 127.0.0.1",
        ),
        (
            _caller_without_address,
            f"{BASE}/scheduling/deployment.yaml",
            "Deployment his/scheduling containers[0] his HIS_PATIENT_ADDR",
            "is unset: scheduling calls patient",
        ),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
def test_a_seeded_mistake_is_found_with_its_file(
    policy_copy: Path, seed: Callable[[Path], None], file: str, subject: str, problem: str
) -> None:
    seed(policy_copy)
    found = findings(policy_copy)
    assert any(
        f.file == file and f.subject == subject and problem in f.problem and f.fix for f in found
    ), "\n".join(map(str, found))


def test_the_drain_comes_from_the_configmap_and_the_runtime_defaults(policy_copy: Path) -> None:
    # Without HIS_GRACE_S the runtime's default applies; 45 s then covers 5 s + the default.
    edit(policy_copy, f"{BASE}/patient/configmap.yaml", '  HIS_GRACE_S: "20"\n', "")
    assert findings(policy_copy) == []
    edit(
        policy_copy,
        f"{BASE}/patient/configmap.yaml",
        'HIS_DRAIN_DELAY_S: "5"',
        'HIS_DRAIN_DELAY_S: "50"',
    )
    found = [f for f in findings(policy_copy) if "terminationGracePeriodSeconds" in f.subject]
    drain = 50 + ServerConfig.grace_s
    # Stable and canary read the same ConfigMap: both are named, each in its own file.
    assert {f.file for f in found} == {
        f"{BASE}/patient/deployment.yaml",
        "deploy/kustomize/components/canary/patient.yaml",
    }
    assert all(f"drain of {drain:g} s" in f.problem for f in found)


def _hpas(objects: list[Manifest]) -> dict[str, dict[str, object]]:
    return {key(m)[2]: m["spec"] for m in objects if m.get("kind") == "HorizontalPodAutoscaler"}


def test_prod_scales_scheduling_5_to_10_and_every_canary_has_an_hpa() -> None:
    prod = render(REPOSITORY / f"{OVERLAYS}/prod")
    hpas = _hpas(prod)
    scheduling = hpas["scheduling"]
    assert (scheduling["minReplicas"], scheduling["maxReplicas"]) == (5, 10)
    canaries = [
        key(m)[2]
        for m in prod
        if m.get("kind") == "Deployment"
        and m["spec"]["template"]["metadata"]["labels"].get("version") == "v2"
    ]
    assert sorted(canaries) == ["patient-v2", "scheduling-v2"]
    for name in canaries:
        stable, canary = hpas[name.removesuffix("-v2")], hpas[name]
        deployment = next(m for m in prod if key(m) == ("Deployment", "his", name))
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the count"
        assert canary["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert canary["minReplicas"] == 1
        assert canary["maxReplicas"] == stable["maxReplicas"]
        assert canary["metrics"] == stable["metrics"]
    dev = _hpas(render(REPOSITORY / f"{OVERLAYS}/dev"))
    assert all((h["minReplicas"], h["maxReplicas"]) == (1, 2) for h in dev.values()), dev
    assert {"patient-v2", "scheduling-v2"} <= set(dev)
