"""PodDisruptionBudgets and the pods a CloudNativePG Cluster makes (cnpg.io/cluster=<name>): a
budget selecting them is understood, never "selects no pods"; one the operator's own budgets
overlap, or one leaving no instance evictable, is a finding."""

from __future__ import annotations

from pathlib import Path

from his.mesh.check import run_check
from his.mesh.findings import Finding
from tests.mesh.conftest import edit, needs_kubectl

pytestmark = needs_kubectl

POSTGRES = "deploy/kustomize/components/postgres"
_PDB = """apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: his-db
  namespace: his
spec:
  {budget}
  selector:
    matchLabels:
      cnpg.io/cluster: his-db
"""


def _budget_findings(root: Path, overlay: str, budget: str) -> list[Finding]:
    (root / POSTGRES / "pdb.yaml").write_text(_PDB.format(budget=budget), encoding="utf-8")
    edit(
        root,
        f"{POSTGRES}/kustomization.yaml",
        "  - cluster.yaml\n",
        "  - cluster.yaml\n  - pdb.yaml\n",
    )
    return [
        f
        for f in run_check(root, [overlay]).findings
        if "PodDisruptionBudget his/his-db" in f.subject
    ]


def test_a_budget_on_a_cluster_the_operator_budgets_too_is_a_finding(policy_copy: Path) -> None:
    found = _budget_findings(policy_copy, "prod", "maxUnavailable: 1")
    assert len(found) == 1, found
    (finding,) = found
    assert finding.file == f"{POSTGRES}/pdb.yaml"
    assert "Cluster his/his-db primary, Cluster his/his-db replica" in finding.problem
    assert "CloudNativePG's own PodDisruptionBudget" in finding.problem
    assert "selects no pods" not in finding.problem


def test_a_budget_on_a_cluster_without_the_operators_is_understood(policy_copy: Path) -> None:
    # dev: one instance, enablePDB false. A budget letting one pod go passes.
    assert _budget_findings(policy_copy, "dev", "maxUnavailable: 1") == []


def test_a_budget_keeping_the_only_instance_is_a_finding(policy_copy: Path) -> None:
    (finding,) = _budget_findings(policy_copy, "dev", "minAvailable: 1")
    assert "keeps all 1 pod(s) of his-db primary" in finding.problem, finding
