"""Reproductions from the second review of issue 18 (rev18b): a mistake seeded into a copy of the
real policy that `his mesh check` passed, blamed on the wrong file or worded wrongly. Each seed
gives a finding naming the file to edit, the object, the problem and the fix; a correct variant
of the same edit passes. The real policy passes (test_check.py)."""

from __future__ import annotations

from pathlib import Path

from his.mesh.check import run_check
from his.mesh.findings import Finding
from tests.mesh.conftest import edit, needs_kubectl

pytestmark = needs_kubectl

BASE = "deploy/kustomize/base"
PROD = "deploy/kustomize/overlays/prod"
CANARY = "deploy/kustomize/components/canary"
VS = "mesh/istio/virtual-services"


def _findings(root: Path, overlay: str) -> list[Finding]:
    return run_check(root, [overlay]).findings


# --- F at weight 0: the x-canary header routes still reach the canary subset ------------------


def _canary_relabelled(root: Path) -> None:
    file = f"{CANARY}/patient.yaml"
    edit(root, file, "      version: v2\n  strategy", "      version: canary\n  strategy")
    edit(root, file, "        version: v2\n", "        version: canary\n")


def test_relabelled_canary_at_weight_0_is_reached_by_the_header_routes(policy_copy: Path) -> None:
    _canary_relabelled(policy_copy)
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == f"{CANARY}/patient.yaml", finding
    assert finding.subject == "Deployment his/patient-v2 spec.template.metadata.labels", finding
    assert "selects no pods" in finding.problem, finding
    assert "label its pods version=v2 again" in finding.fix, finding
    # Weight 0 is already the state: the fix must name the header routes that still send there.
    assert "http[0] patient-canary-override-reads" in finding.fix, finding
    assert "give subset 'canary' weight 0" not in finding.fix, finding


def test_header_routes_to_an_undeployed_canary_pass(policy_copy: Path) -> None:
    # orders has header routes to subset canary and no canary Deployment: the normal state.
    edit(policy_copy, f"{CANARY}/kustomization.yaml", "  - patient.yaml\n", "")
    assert _findings(policy_copy, "dev") == []


# --- N16: a Deployment's cpu limit below its request ----------------------------------------


def test_limit_below_the_request_is_rejected_by_the_api_server(policy_copy: Path) -> None:
    edit(policy_copy, f"{PROD}/resources.yaml", 'cpu: "1"', "cpu: 100m")
    found = _findings(policy_copy, "prod")
    assert found, "a cpu limit below the request passed"
    assert all(f.file == f"{PROD}/resources.yaml" for f in found), found
    assert all("resources.limits.cpu" in f.subject for f in found), found
    assert all("the limit 100m is below the request 500m" in f.problem for f in found), found
    assert all("API server rejects" in f.problem for f in found), found
    assert all("raise limits.cpu to at least 500m" in f.fix for f in found), found


def test_limit_equal_to_the_request_passes(policy_copy: Path) -> None:
    edit(policy_copy, f"{PROD}/resources.yaml", 'cpu: "1"', "cpu: 500m")
    assert _findings(policy_copy, "prod") == []


# --- N6: runAsUser 0 with runAsNonRoot true (the container's value wins) -----------------------

_CONTAINER_USER = "            runAsNonRoot: true\n            runAsUser: 10001\n"
_POD_USER = "        runAsNonRoot: true\n        runAsUser: 10001\n"


def test_container_run_as_root_with_run_as_non_root_is_refused(policy_copy: Path) -> None:
    edit(
        policy_copy,
        f"{BASE}/lab/deployment.yaml",
        _CONTAINER_USER,
        _CONTAINER_USER.replace("10001", "0"),
    )
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == f"{BASE}/lab/deployment.yaml", finding
    assert finding.subject == ("Deployment his/lab containers[0] his securityContext.runAsUser"), (
        finding
    )
    assert "CreateContainerConfigError" in finding.problem, finding
    assert "runAsUser to a non-root uid" in finding.fix, finding


def test_pod_root_user_overridden_by_the_container_passes(policy_copy: Path) -> None:
    edit(policy_copy, f"{BASE}/lab/deployment.yaml", _POD_USER, _POD_USER.replace("10001", "0"))
    assert _findings(policy_copy, "dev") == []


# --- N4: iam-keys' PERMISSIVE port moved off the key documents' port --------------------------

PEER = "mesh/istio/peer-authentication.yaml"


def test_keys_opening_on_the_wrong_port_names_the_jwks_failure(policy_copy: Path) -> None:
    edit(
        policy_copy,
        PEER,
        '    "8080":\n      mode: PERMISSIVE',
        '    "8081":\n      mode: PERMISSIVE',
    )
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == PEER, finding
    assert finding.subject == "PeerAuthentication his/iam-keys portLevelMtls 8081", finding
    assert "cannot fetch the JWKS" in finding.problem, finding
    assert "the port must be 8080 (http-keys)" in finding.fix, finding
    assert "STRICT" not in finding.fix, finding


def test_another_permissive_port_beside_the_keys_port_says_set_strict(policy_copy: Path) -> None:
    edit(
        policy_copy,
        PEER,
        '    "8080":\n      mode: PERMISSIVE',
        '    "8080":\n      mode: PERMISSIVE\n    "8081":\n      mode: PERMISSIVE',
    )
    (finding,) = _findings(policy_copy, "dev")
    assert finding.subject == "PeerAuthentication his/iam-keys portLevelMtls 8081", finding
    assert "accepts plaintext" in finding.problem and finding.fix == "set STRICT", finding


# --- N8: callers' HIS_*_ADDR ports must be ports of the callee's Service ----------------------


def test_service_port_no_caller_dials(policy_copy: Path) -> None:
    edit(policy_copy, f"{BASE}/lab/service.yaml", "port: 50051", "port: 50052")
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == f"{BASE}/lab/service.yaml", finding
    assert finding.subject == "Service his/lab spec.ports", finding
    assert "orders dial lab.his.svc.cluster.local:50051" in finding.problem, finding
    assert "serve port 50051 again" in finding.fix, finding


def test_one_caller_dialling_a_port_the_service_does_not_serve(policy_copy: Path) -> None:
    edit(
        policy_copy,
        f"{BASE}/scheduling/configmap.yaml",
        "HIS_PATIENT_ADDR: patient.his.svc.cluster.local:50051",
        "HIS_PATIENT_ADDR: patient.his.svc.cluster.local:5051",
    )
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == f"{BASE}/scheduling/configmap.yaml", finding
    assert finding.subject.endswith("HIS_PATIENT_ADDR"), finding
    assert "set HIS_PATIENT_ADDR: patient.his.svc.cluster.local:50051" in finding.fix, finding


# --- N11: an images entry whose name matches no container image -------------------------------


def test_misspelt_images_entry_is_one_finding_on_that_entry(policy_copy: Path) -> None:
    edit(policy_copy, f"{PROD}/kustomization.yaml", "- name: his-canary", "- name: his_canary")
    (finding,) = _findings(policy_copy, "prod")
    assert finding.file == f"{PROD}/kustomization.yaml", finding
    assert finding.subject == "kustomization images[1] his_canary", finding
    assert "matches no container image" in finding.problem, finding
    assert "did you mean 'his-canary'" in finding.fix, finding


def test_misspelt_images_entry_in_dev_is_found_too(policy_copy: Path) -> None:
    # dev maps both names to his:dev, so the rendered images alone cannot show it.
    edit(
        policy_copy,
        "deploy/kustomize/overlays/dev/kustomization.yaml",
        "- name: his-canary",
        "- name: his_canary",
    )
    (finding,) = _findings(policy_copy, "dev")
    assert finding.subject == "kustomization images[1] his_canary", finding


# --- N1: mirroring a route that carries non-idempotent writes ---------------------------------

_WRITES_TIMEOUT = "      timeout: 10s\n"
_MIRROR = (
    "      mirror:\n        host: patient.his.svc.cluster.local\n        subset: canary\n"
    "      mirrorPercentage:\n        value: 100\n"
)


def _mirror_after(root: Path, route: str, timeout: str) -> None:
    path = root / f"{VS}/patient.yaml"
    text = path.read_text(encoding="utf-8")
    start = text.index(f"    - name: {route}\n")
    at = text.index(timeout, start) + len(timeout)
    path.write_text(text[:at] + _MIRROR + text[at:], encoding="utf-8")


def test_mirrored_write_route_runs_every_write_twice(policy_copy: Path) -> None:
    _mirror_after(policy_copy, "patient-writes", _WRITES_TIMEOUT)
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == f"{VS}/patient.yaml", finding
    assert finding.subject.startswith("VirtualService his/patient http[3] patient-writes mirror")
    assert "CreatePatient" in finding.problem and "runs twice" in finding.problem, finding
    assert "remove mirror" in finding.fix, finding


def test_mirrored_reads_route_passes(policy_copy: Path) -> None:
    _mirror_after(policy_copy, "patient-reads", "      timeout: 5s\n")
    assert _findings(policy_copy, "dev") == []


# --- N5: a Sidecar ingress defaultEndpoint on a port the container does not serve --------------

_SIDECAR = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: lab-ingress
  namespace: his
spec:
  workloadSelector:
    labels:
      app: lab
  ingress:
    - port:
        number: 50051
        protocol: GRPC
        name: grpc
      defaultEndpoint: 127.0.0.1:{port}
"""


def _sidecar(root: Path, port: int) -> None:
    (root / "mesh/istio/sidecar-lab.yaml").write_text(_SIDECAR.format(port=port), encoding="utf-8")
    edit(
        root,
        "mesh/istio/kustomization.yaml",
        "  - peer-authentication.yaml\n",
        "  - peer-authentication.yaml\n  - sidecar-lab.yaml\n",
    )


def test_sidecar_default_endpoint_nothing_listens_on(policy_copy: Path) -> None:
    _sidecar(policy_copy, 50052)
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == "mesh/istio/sidecar-lab.yaml", finding
    assert finding.subject == "Sidecar his/lab-ingress ingress[0].defaultEndpoint", finding
    assert "127.0.0.1:50052" in finding.problem and "Deployment his/lab" in finding.problem
    assert finding.fix == "set defaultEndpoint: 127.0.0.1:50051", finding


def test_sidecar_default_endpoint_on_the_grpc_port_passes(policy_copy: Path) -> None:
    _sidecar(policy_copy, 50051)
    assert _findings(policy_copy, "dev") == []


# --- N10: the CloudNativePG operator's port 8000 in the database's NetworkPolicy ---------------

_OPERATOR_PORTS = "        - port: 8000\n          protocol: TCP\n        - port: 5432\n"
NETPOL_DB = "deploy/kustomize/components/network-policies/postgres.yaml"


def test_operator_port_8000_removed_from_the_database_policy(policy_copy: Path) -> None:
    edit(policy_copy, NETPOL_DB, _OPERATOR_PORTS, "        - port: 5432\n")
    (finding,) = _findings(policy_copy, "dev")
    assert finding.file == NETPOL_DB, finding
    assert finding.subject == "NetworkPolicy his/his-db ingress[1]", finding
    assert "port 8000" in finding.problem and "failover" in finding.problem, finding
    assert "add `- port: 8000`" in finding.fix, finding


def test_operator_on_every_port_passes(policy_copy: Path) -> None:
    # A rule from cnpg-system without ports lets the operator in on all of them.
    edit(
        policy_copy,
        NETPOL_DB,
        "              kubernetes.io/metadata.name: cnpg-system\n      ports:\n"
        + _OPERATOR_PORTS
        + "          protocol: TCP\n",
        "              kubernetes.io/metadata.name: cnpg-system\n",
    )
    assert _findings(policy_copy, "dev") == []


# --- N3: a rule opened to a namespace does not refuse the caller it used to name ---------------


def test_rule_opened_to_the_namespace_is_not_said_to_refuse_orders(policy_copy: Path) -> None:
    edit(
        policy_copy,
        "mesh/istio/authorization/lab.yaml",
        "            principals:\n              - cluster.local/ns/his/sa/orders\n",
        "            namespaces: [his]\n",
    )
    found = _findings(policy_copy, "dev")
    assert len(found) == 2, found
    assert all(f.subject == "AuthorizationPolicy his/lab rules[1]" for f in found), found
    assert not any("PERMISSION_DENIED" in f.problem for f in found), found


# --- N15: minReplicas above maxReplicas is refused by the API server -----------------------------


def test_min_above_max_replicas_says_the_api_server_rejects_it(policy_copy: Path) -> None:
    edit(policy_copy, f"{BASE}/lab/hpa.yaml", "minReplicas: 3", "minReplicas: 7")
    (finding,) = _findings(policy_copy, "prod")
    assert finding.file == f"{BASE}/lab/hpa.yaml", finding
    assert "the API server rejects the HorizontalPodAutoscaler" in finding.problem, finding
    assert "ScalingLimited" not in finding.problem, finding


# --- 10: max_connections below the peak names the overlay whose peak it is ----------------------


def test_max_connections_findings_name_their_overlay(policy_copy: Path) -> None:
    edit(
        policy_copy,
        "deploy/kustomize/components/postgres/cluster.yaml",
        'max_connections: "900"',
        'max_connections: "50"',
    )
    found = run_check(policy_copy, ["dev", "prod"]).findings
    assert len(found) == 2, found
    dev, prod = sorted(found, key=lambda f: "prod" in f.problem)
    assert "clients in deploy/kustomize/overlays/dev may open" in dev.problem, dev
    assert "at least 223 for deploy/kustomize/overlays/dev" in dev.fix, dev
    assert "clients in deploy/kustomize/overlays/prod may open" in prod.problem, prod
    assert "at least 683 for deploy/kustomize/overlays/prod" in prod.fix, prod


# --- 5: one patch's mistake about many Deployments is one finding listing them ------------------


def test_limit_below_request_in_the_shared_patch_is_one_finding(policy_copy: Path) -> None:
    edit(policy_copy, f"{PROD}/resources.yaml", 'cpu: "1"', "cpu: 100m")
    (finding,) = _findings(policy_copy, "prod")
    assert finding.subject.startswith("Deployment his/audit, his/billing, his/emr"), finding
    assert "(11 objects) containers[0] his resources.limits.cpu, patched in by" in finding.subject
