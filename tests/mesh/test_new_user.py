"""The SRE tools tried as a new user would: `his canary <svc> set --help` names the service and
the allowed weights; `his mesh explain`, `his canary` and `his mesh check` number routes (and
rules) one way, by their index in the file; the port-name finding says what Istio really does
with an `http` port; a contract-only service is named as such by `his canary` and `explain`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from his.base import catalog
from his.base.canary_plan import PLAN
from his.cli import main
from his.mesh.check import run_check
from his.mesh.contracts import rpcs
from his.mesh.explain import ExplainError, explain, format
from his.mesh.port_protocols import not_grpc, reading
from tests.mesh.conftest import REPOSITORY, edit, needs_kubectl


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


# --- his canary <service> set --help ----------------------------------------------------------


def test_set_help_names_the_service_and_the_allowed_weights(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["canary", "patient", "set", "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: his canary patient set [-h] WEIGHT")
    assert "of patient's calls to its canary subset" in out
    assert "Allowed weights: 0, 10, 50, 100." in out
    assert PLAN == (0, 10, 50, 100)
    # Each step's help names the service it acts on.
    for step, said in (
        ("promote", "Move scheduling's canary to the next step"),
        ("rollback", "Send all of scheduling's calls back to its stable subset"),
        ("status", "every route splitting scheduling"),
    ):
        code, out, _ = run(["canary", "scheduling", step, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: his canary scheduling {step}")
        assert said in " ".join(out.split())


def test_a_weight_outside_the_plan_is_refused_by_the_parser_naming_the_allowed_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(["canary", "patient", "--root", str(REPOSITORY), "set", "20"], capsys)
    assert code == 2
    assert "his canary patient set: error: argument WEIGHT: invalid choice: 20" in err
    assert "(choose from 0, 10, 50, 100)" in err


# --- routes numbered one way --------------------------------------------------------------------


def test_explain_names_routes_and_rules_by_their_index_in_the_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = format(explain(REPOSITORY, "patient", "GetPatient"))
    assert "route       http[2] patient-reads  (matched uri regex" in report
    assert "#" not in report  # no 1-based numbering beside the 0-based index
    code, out, _ = run(
        ["mesh", "explain", "patient", "GetPatient", "--gateway", "--root", str(REPOSITORY)],
        capsys,
    )
    assert code == 1  # no token: the gateway refuses it
    assert "it would take http[0] patient-reads" in out
    code, out, _ = run(
        ["mesh", "explain", "iam", "IssueToken", "--gateway", "--root", str(REPOSITORY)], capsys
    )
    assert code == 0
    assert "allowed by rules[1] of AuthorizationPolicy his/mobile-gateway" in out
    assert "rule 2" not in out


def test_canary_names_routes_as_explain_does(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["canary", "patient", "--root", str(REPOSITORY), "status"], capsys)
    assert code == 0
    explained = explain(REPOSITORY, "patient", "GetPatient")
    assert f"mesh/istio/virtual-services/patient.yaml  {explained.route_label}: stable" in out


# --- what Istio does with a port's protocol -----------------------------------------------------


def test_an_http_port_is_http_1_1_which_a_grpc_server_refuses() -> None:
    for port in ({"name": "http", "port": 50051}, {"name": "api", "appProtocol": "http"}):
        said = reading(port)
        assert "HTTP/1.1" in said and "gRPC server (HTTP/2 only) refuses" in said
        assert "TCP" not in said


def test_other_protocols_are_named_for_what_istio_does() -> None:
    assert "plain TCP" in reading({"name": "tcp-db"})
    assert "http2" in reading({"name": "h", "appProtocol": "http2"})
    sniffed = reading({"name": "api"})
    assert "sniffs each connection" in sniffed and "HTTP/2" in sniffed
    said = not_grpc([{"name": "api"}, {"name": "http-metrics", "appProtocol": "http"}])
    assert said.startswith(
        "no port named grpc with appProtocol grpc; name 'api' declares no protocol"
    )
    # The metrics port is HTTP on purpose: never named as the cause.
    assert "http-metrics" not in said and said.count("; ") == 1


@needs_kubectl
def test_the_check_says_what_istio_does_with_an_http_port(policy_copy: Path) -> None:
    service = "deploy/kustomize/base/scheduling/service.yaml"
    edit(policy_copy, service, "- name: grpc-web", "- name: http")
    edit(policy_copy, service, "appProtocol: grpc-web", "appProtocol: http")
    found = [f for f in run_check(policy_copy).findings if "no port named grpc" in f.problem]
    assert found, "no finding for the http port"
    assert {f.file for f in found} == {service}
    assert all("HTTP/1.1" in f.problem and "TCP" not in f.problem for f in found)
    # The cause is the port that carries the calls; the metrics port is not one.
    for item in found:
        assert item.problem == (
            "no port named grpc with appProtocol grpc; Istio reads port 'http' (appProtocol "
            "http) as http, which is HTTP/1.1: the sidecars forward each call to the server as "
            "HTTP/1.1, which a gRPC server (HTTP/2 only) refuses, so calls fail"
        ), item


# --- contract-only services ---------------------------------------------------------------------


@pytest.fixture
def lab_contract_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """lab as a service whose protos exist but which no server implements yet."""
    entry = dataclasses.replace(catalog.BY_NAME["lab"], implemented=False)
    monkeypatch.setitem(catalog.BY_NAME, "lab", entry)


@pytest.mark.usefixtures("lab_contract_only")
def test_canary_names_a_contract_only_service_and_moves_nothing(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["canary", "lab", "--root", str(policy_copy), "status"], capsys)
    assert code == 0
    assert out.startswith("lab is contract-only: its API is defined (protos/his/lab/v1)")
    assert "http[2] lab-reads: stable 100, canary 0" in out
    before = (policy_copy / "mesh/istio/virtual-services/lab.yaml").read_text(encoding="utf-8")
    code, _, err = run(["canary", "lab", "--root", str(policy_copy), "set", "10"], capsys)
    assert code == 1
    assert "lab is contract-only" in err and "nothing changed" in err
    after = (policy_copy / "mesh/istio/virtual-services/lab.yaml").read_text(encoding="utf-8")
    assert after == before


@pytest.mark.usefixtures("lab_contract_only")
def test_explain_names_a_contract_only_service(policy_copy: Path) -> None:
    method = rpcs("lab")[0].method
    e = explain(policy_copy, "lab", method)
    assert e.contract_only
    assert "service     lab is contract-only: its API is defined (protos)" in format(e)
    # Without a VirtualService, the error says why there is none.
    (policy_copy / "mesh/istio/virtual-services/lab.yaml").unlink()
    with pytest.raises(ExplainError, match="lab is contract-only"):
        explain(policy_copy, "lab", method)


def test_implemented_services_are_not_called_contract_only() -> None:
    assert not explain(REPOSITORY, "patient", "GetPatient").contract_only
    assert "contract-only" not in format(explain(REPOSITORY, "patient", "GetPatient"))
