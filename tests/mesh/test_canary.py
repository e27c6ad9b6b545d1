"""`his canary` on copies of the real policy: weights move through the plan in both files, only
the weight lines change, and an edit the check rejects is never written."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
import yaml

from his.cli import main
from his.mesh.canary import command, round_trip_yaml, splits
from his.mesh.check import run_check
from tests.mesh.conftest import REPOSITORY, needs_kubectl

VS = "mesh/istio/virtual-services/patient.yaml"
GATEWAY = "mesh/istio/gateway/routes.yaml"
FILES = (VS, GATEWAY)


def canary(root: Path, action: str, weight: int | None = None, service: str = "patient") -> int:
    """Run the command the way `his canary` does, on the copy at `root`."""
    args = argparse.Namespace(service=service, root=str(root), action=action, weight=weight)
    return command(args)


def weights(root: Path, file: str, service: str = "patient") -> dict[str, tuple[int, int]]:
    """Route → (stable, canary) of the service's split routes in one file, read with PyYAML."""
    documents = list(yaml.safe_load_all((root / file).read_text(encoding="utf-8")))
    return {split.route: split.weights for split in splits(documents, service, file)}


def texts(root: Path) -> dict[str, str]:
    return {file: (root / file).read_text(encoding="utf-8") for file in FILES}


def assert_only_weights_changed(before: str, after: str, canary_weight: int) -> None:
    """Same lines except `weight:` ones, every comment kept, weights as the plan says."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert all(
        a.strip().startswith("weight:") and b.strip().startswith("weight:") for a, b in changed
    )
    comments = [line for line in old if line.lstrip().startswith("#")]
    assert comments and all(line in new for line in comments)
    allowed = {f"weight: {canary_weight}", f"weight: {100 - canary_weight}"}
    assert all(b.strip() in allowed for _, b in changed)


def test_an_unchanged_round_trip_reproduces_every_mapping_file_of_the_policy() -> None:
    handler = round_trip_yaml()
    skipped: list[str] = []
    for path in sorted((REPOSITORY / "mesh/istio").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        documents = list(handler.load_all(text))
        if any(isinstance(doc, list) for doc in documents):
            # ruamel indents a top-level sequence by the offset; drills are lists, never edited.
            skipped.append(path.relative_to(REPOSITORY).as_posix())
            continue
        out = io.StringIO()
        handler.dump_all(documents, out)
        assert out.getvalue() == text, path
    assert all(file.startswith("mesh/istio/drills/") for file in skipped), skipped


@needs_kubectl
def test_set_promote_rollback_move_both_files_and_only_their_weight_lines(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = texts(policy_copy)
    for action, weight, expected in (("set", 10, 10), ("promote", None, 50), ("rollback", None, 0)):
        assert canary(policy_copy, action, weight) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert f"{VS}  http[2] patient-reads: stable" in out and f"canary weight {expected}%" in out
        for file in FILES:
            assert set(weights(policy_copy, file).values()) == {(100 - expected, expected)}, file
            after = (policy_copy / file).read_text(encoding="utf-8")
            assert_only_weights_changed(original[file], after, expected)
        # Another service's split in the shared gateway file is left alone.
        assert set(weights(policy_copy, GATEWAY, "scheduling").values()) == {(100, 0)}
        report = run_check(policy_copy)
        assert report.ok, "\n".join(map(str, report.findings))
    assert texts(policy_copy) == original


def test_a_weight_outside_the_plan_is_refused(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = texts(policy_copy)
    assert canary(policy_copy, "set", 30) == 2
    assert "not a step of the plan 0 → 10 → 50 → 100" in capsys.readouterr().err
    assert texts(policy_copy) == original


def test_promote_refuses_routes_that_disagree_and_lists_them(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = policy_copy / GATEWAY
    text = path.read_text(encoding="utf-8")
    # The gateway's patient-reads route alone at 90/10.
    path.write_text(
        text.replace("weight: 100", "weight: 90", 1).replace("weight: 0", "weight: 10", 1),
        encoding="utf-8",
    )
    original = texts(policy_copy)
    assert canary(policy_copy, "promote") == 1
    err = capsys.readouterr().err
    assert "disagree" in err
    assert f"{GATEWAY}  http[0] patient-reads: stable 90, canary 10" in err
    assert f"{VS}  http[3] patient-writes: stable 100, canary 0" in err
    assert texts(policy_copy) == original


@needs_kubectl
def test_an_edit_the_check_rejects_is_not_written_and_the_finding_is_named(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = policy_copy / "mesh/istio/destination-rules/patient.yaml"
    rule.write_text(
        rule.read_text(encoding="utf-8").replace(
            "consecutiveGatewayErrors", "consecutiveGatewayError"
        ),
        encoding="utf-8",
    )
    original = texts(policy_copy)
    assert canary(policy_copy, "set", 10) == 1
    err = capsys.readouterr().err
    assert "nothing written" in err
    assert "mesh/istio/destination-rules/patient.yaml" in err and "consecutiveGatewayError" in err
    assert texts(policy_copy) == original


def test_without_kubectl_the_edit_is_checked_for_weights_and_the_skipped_check_is_said(
    policy_copy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIS_KUBECTL", str(policy_copy / "no-kubectl-here"))
    assert canary(policy_copy, "set", 50) == 0
    out = capsys.readouterr().out
    assert "full `his mesh check` was skipped" in out
    for file in FILES:
        assert set(weights(policy_copy, file).values()) == {(50, 50)}


def test_promote_at_full_canary_changes_nothing(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for file in FILES:
        path = policy_copy / file
        text = path.read_text(encoding="utf-8")
        path.write_text(
            text.replace("weight: 100", "weight: X")
            .replace("weight: 0", "weight: 100")
            .replace("weight: X", "weight: 0"),
            encoding="utf-8",
        )
    original = texts(policy_copy)
    assert canary(policy_copy, "promote") == 0
    assert "fully promoted" in capsys.readouterr().out
    assert texts(policy_copy) == original


def test_status_lists_each_route_of_both_files_through_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["canary", "scheduling", "--root", str(REPOSITORY), "status"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    # Routes are named as his mesh check and explain name them: index in the file, then name.
    vs = "mesh/istio/virtual-services/scheduling.yaml"
    for file, index, route in (
        (vs, 2, "scheduling-reads"),
        (vs, 3, "scheduling-writes"),
        (GATEWAY, 2, "scheduling-reads"),
        (GATEWAY, 3, "scheduling-writes"),
    ):
        assert f"{file}  http[{index}] {route}: stable" in out
    assert "patient-reads" not in out
    assert "canary weight " in out


def test_an_unknown_service_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert canary(REPOSITORY, "status", service="pharmacist") == 2
    assert "known services: patient" in capsys.readouterr().err


# A weighted destination of billing's canary subset (its VirtualService and the gateway's routes).
_BILLING_CANARY = """        - destination:
            host: billing.his.svc.cluster.local
            subset: canary
          weight: 0
"""


def test_an_unrouted_service_is_an_error(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every service splits its routes today: take billing's canary destinations away.
    for file in ("mesh/istio/virtual-services/billing.yaml", "mesh/istio/gateway/routes.yaml"):
        text = (policy_copy / file).read_text(encoding="utf-8")
        assert _BILLING_CANARY in text, file
        (policy_copy / file).write_text(text.replace(_BILLING_CANARY, ""), encoding="utf-8")
    assert canary(policy_copy, "status", service="billing") == 2
    assert "no route of billing splits" in capsys.readouterr().err


def test_the_flagger_metric_template_counts_grpc_status_and_is_not_applied_by_default() -> None:
    folder = REPOSITORY / "mesh/istio/flagger"
    template = yaml.safe_load((folder / "metric-template.yaml").read_text(encoding="utf-8"))
    assert template["apiVersion"] == "flagger.app/v1beta1"
    assert template["kind"] == "MetricTemplate"
    assert template["metadata"] == {"name": "grpc-success-rate", "namespace": "his"}
    assert template["spec"]["provider"]["type"] == "prometheus"
    query = " ".join(template["spec"]["query"].split())
    for needle in (
        'reporter="destination"',
        'destination_workload_namespace="{{ namespace }}"',
        'destination_workload=~"{{ target }}"',
        'grpc_response_status!~"2|4|8|13|14|15"',  # 8: RESOURCE_EXHAUSTED, load shed
        'response_code!~"5.."',  # answered by the sidecar itself, no gRPC status
        "[{{ interval }}]",
    ):
        assert needle in query
    # Success-based; its values (zero-error canary 100, all-error 0) are tested with promtool in
    # tests/observability/test_prometheus_tools.py.
    assert query.startswith("100 * ( sum(")
    kustomization = (REPOSITORY / "mesh/istio/kustomization.yaml").read_text(encoding="utf-8")
    assert "flagger" not in kustomization
