"""The identity lint (his.mesh.identity_lint, ADR 0007) on the real overlays (clean) and on copies
with one seeded mistake each: a service's app label, ServiceAccount, `his serve` name and the
mTLS principal its tokens are bound to agree, and its credential Secret is read by it alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from his.mesh.findings import Finding
from his.mesh.identity_lint import lint_identity
from tests.mesh.conftest import REPOSITORY, edit, needs_kubectl
from tests.mesh.test_deploy_lint import BASE, cluster

pytestmark = needs_kubectl

CANARY = "deploy/kustomize/components/canary"


def findings(root: Path, overlay: str = "prod") -> list[Finding]:
    return list(lint_identity(cluster(root, overlay)))


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_real_overlays_are_clean(overlay: str) -> None:
    found = findings(REPOSITORY, overlay)
    assert found == [], "\n".join(map(str, found))


def _reads_audits_secret(root: Path) -> None:
    # patient's pods would hold audit's credential: a compromised patient pod logs in as audit.
    edit(
        root,
        f"{BASE}/patient/deployment.yaml",
        "                  name: patient-secrets\n                  key: HIS_SERVICE_CREDENTIAL",
        "                  name: audit-secrets\n                  key: HIS_SERVICE_CREDENTIAL",
    )


def _shared_key(root: Path) -> None:
    # The old way: every pod given the key every credential derives from.
    edit(
        root,
        f"{CANARY}/scheduling.yaml",
        "            - name: HIS_SERVICE_CREDENTIAL\n",
        "            - name: HIS_SERVICE_CREDENTIAL_KEY\n"
        "              valueFrom:\n"
        "                secretKeyRef:\n"
        "                  name: his-service-credential\n"
        "                  key: HIS_SERVICE_CREDENTIAL_KEY\n"
        "            - name: HIS_SERVICE_CREDENTIAL\n",
    )


def _no_credential(root: Path) -> None:
    edit(root, f"{BASE}/lab/deployment.yaml", "- name: HIS_SERVICE_CREDENTIAL\n", "- name: X_OLD\n")


def _serves_another(root: Path) -> None:
    edit(
        root,
        f"{BASE}/orders/deployment.yaml",
        'args: ["serve", "orders"]',
        'args: ["serve", "lab"]',
    )


def _principal_of_another_namespace(root: Path) -> None:
    edit(
        root,
        f"{BASE}/emr/configmap.yaml",
        "  HIS_MESH: istio\n",
        "  HIS_MESH: istio\n  HIS_AUTH_SERVICE_PEERS: spiffe://cluster.local/ns/hospital/sa/\n",
    )


def _peers_off(root: Path) -> None:
    edit(
        root,
        f"{BASE}/billing/configmap.yaml",
        "  HIS_MESH: istio\n",
        '  HIS_MESH: istio\n  HIS_AUTH_SERVICE_PEERS: "off"\n',
    )


@pytest.mark.parametrize(
    ("seed", "file", "subject", "problem"),
    [
        (
            _reads_audits_secret,
            f"{BASE}/patient/deployment.yaml",
            "Deployment his/patient containers[0] his env HIS_SERVICE_CREDENTIAL",
            "reads Secret audit-secrets, audit's own",
        ),
        (
            _shared_key,
            f"{CANARY}/scheduling.yaml",
            "Deployment his/scheduling-v2 containers[0] his env HIS_SERVICE_CREDENTIAL_KEY",
            "scheduling is given the key of every service credential",
        ),
        (
            _no_credential,
            f"{BASE}/lab/deployment.yaml",
            "Deployment his/lab containers[0] his env",
            "no HIS_SERVICE_CREDENTIAL: lab cannot log in at iam",
        ),
        (
            _serves_another,
            f"{BASE}/orders/deployment.yaml",
            "Deployment his/orders containers[0] his args",
            "runs `his serve lab` in pods labelled app: orders",
        ),
        (
            _principal_of_another_namespace,
            f"{BASE}/emr/deployment.yaml",
            "Deployment his/emr containers[0] his HIS_AUTH_SERVICE_PEERS",
            "only from spiffe://cluster.local/ns/hospital/sa/emr, but these pods' mTLS principal "
            "is spiffe://cluster.local/ns/his/sa/emr",
        ),
        (
            _peers_off,
            f"{BASE}/billing/deployment.yaml",
            "Deployment his/billing containers[0] his",
            "HIS_AUTH_SERVICE_PEERS=off is refused with HIS_MESH=istio",
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
