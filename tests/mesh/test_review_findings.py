"""Reproductions from the review of the mesh18 merge (issue 18 leftovers). Each test states what
an SRE would expect. All were fixed and stay as regression tests."""

from __future__ import annotations

from pathlib import Path

from his.mesh.check import run_check
from his.mesh.render import render as kubectl_render
from tests.mesh.conftest import REPOSITORY, edit, needs_kubectl
from tests.mesh.rendering import Renderer

pytestmark = needs_kubectl

DEV, PROD = "deploy/kustomize/overlays/dev", "deploy/kustomize/overlays/prod"
_DENY_ALL = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: istio-system
spec:
  action: DENY
  rules:
    - {}
"""


def _add_to_mesh(root: Path, file: str, text: str) -> None:
    (root / "mesh/istio" / file).write_text(text, encoding="utf-8")
    edit(root, "mesh/istio/kustomization.yaml", "resources:\n", f"resources:\n  - {file}\n")


def test_a_mesh_wide_deny_of_every_call_is_a_finding(policy_copy: Path) -> None:
    _add_to_mesh(policy_copy, "deny-all.yaml", _DENY_ALL)
    found = run_check(policy_copy, ["dev"]).findings
    assert any("deny-all" in f.subject and "names nothing positive" in f.problem for f in found), (
        found
    )


def test_an_unknown_field_written_by_an_overlay_patch_names_the_patch(policy_copy: Path) -> None:
    edit(policy_copy, f"{PROD}/postgres.yaml", "  instances: 3", "  instance: 3")
    found = [f for f in run_check(policy_copy, ["prod"]).findings if "instance" in f.subject]
    assert [f.file for f in found] == [f"{PROD}/postgres.yaml"], found


def test_a_fault_in_the_file_is_not_blamed_on_a_patch_faulting_another_route(
    policy_copy: Path,
) -> None:
    edit(
        policy_copy,
        "mesh/istio/virtual-services/patient.yaml",
        "            subset: canary\n      retries:\n        attempts: 2",
        "            subset: canary\n      fault:\n        delay:\n          fixedDelay: 2s\n"
        "          percentage:\n            value: 5\n      retries:\n        attempts: 2",
    )
    (policy_copy / DEV / "patient-drill.yaml").write_text(
        "- op: add\n  path: /spec/http/3/fault\n  value:\n    abort:\n"
        "      grpcStatus: UNAVAILABLE\n      percentage:\n        value: 10\n",
        encoding="utf-8",
    )
    edit(
        policy_copy,
        f"{DEV}/kustomization.yaml",
        "  - path: postgres.yaml\n",
        "  - path: postgres.yaml\n  - path: patient-drill.yaml\n    target:\n"
        "      kind: VirtualService\n      name: patient\n",
    )
    found = [f for f in run_check(policy_copy, ["dev"]).findings if "fault" in f.subject]
    files = sorted(f.file for f in found)
    assert files == [f"{DEV}/patient-drill.yaml", "mesh/istio/virtual-services/patient.yaml"]


def test_a_single_instance_cluster_keeping_its_pdb_is_a_finding(policy_copy: Path) -> None:
    # The repository's dev overlay sets enablePDB: false; without it the check must object.
    edit(policy_copy, f"{DEV}/postgres.yaml", "  enablePDB: false\n", "")
    found = run_check(policy_copy, ["dev"]).findings
    assert any("his-db" in f.subject and "enablePDB" in f.problem for f in found), found
    assert not [f for f in run_check(REPOSITORY, ["dev"]).findings if "his-db" in f.subject]


def test_the_splice_equals_kubectl_for_an_unquoted_annotation(policy_copy: Path) -> None:
    edit(
        policy_copy,
        "mesh/istio/destination-rules/lab.yaml",
        "  name: lab\n",
        "  name: lab\n  annotations:\n    sidecar.istio.io/inject: false\n",
    )
    # kubectl renders the value as the string "false": the real check passes. The splice keeps
    # PyYAML's bool, so a test asserting a finding here would pass only because of the splice.
    assert Renderer(REPOSITORY, kubectl_render)(policy_copy / DEV) == kubectl_render(
        policy_copy / DEV
    )


def test_a_scaling_mistake_an_overlay_patch_writes_names_the_patch(policy_copy: Path) -> None:
    edit(
        policy_copy,
        f"{DEV}/hpa.yaml",
        "  path: /spec/minReplicas\n  value: 1",
        "  path: /spec/minReplicas\n  value: 3",
    )
    found = [f for f in run_check(policy_copy, ["dev"]).findings if "minReplicas 3 >" in f.problem]
    assert found and {f.file for f in found} == {f"{DEV}/hpa.yaml"}, found
    assert all("patched in by" in f.subject for f in found)
    # prod does not apply the patch: its HPAs' findings (none here) would name the base files.
    assert not [f for f in run_check(policy_copy, ["prod"]).findings if "minReplicas" in f.problem]
