"""`his mesh check` on the real policy (clean) and on copies with one seeded mistake each:
every lint rule must fail the check with a line naming the file and the problem."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from his.mesh.check import OVERLAYS, CheckUnavailable, overlays, run_check
from his.mesh.render import render
from his.mesh.schema import cnpg_release, istio_release
from tests.mesh.conftest import REPOSITORY, edit, his_in, needs_kubectl

pytestmark = needs_kubectl


def test_the_real_policy_passes_on_every_overlay() -> None:
    report = run_check(REPOSITORY)
    assert report.findings == [], "\n".join(map(str, report.findings))
    assert set(report.rendered) == {
        "mesh/istio",
        "deploy/kustomize/overlays/dev",
        "deploy/kustomize/overlays/prod",
    }
    assert all(count > 0 for count in report.rendered.values())
    # Every object was schema-checked: Istio's and CloudNativePG's carried schemas were used.
    assert report.notes == [], report.notes
    assert report.schema_checked[f"Istio {istio_release()}"] == report.rendered["mesh/istio"]
    # One Cluster his/his-db per overlay (dev and prod size it differently).
    assert report.schema_checked[f"CloudNativePG {cnpg_release()}"] == 2


def test_cli_exits_zero_on_the_real_policy() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "his.cli", "mesh", "check", "--root", str(REPOSITORY)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "his mesh check: ok" in done.stdout


VS = "mesh/istio/virtual-services"
POSTGRES = "deploy/kustomize/components/postgres/cluster.yaml"
READS = "unavailable,connect-failure,refused-stream,reset"


def _misspelled_field(root: Path) -> None:
    edit(
        root,
        "mesh/istio/destination-rules/patient.yaml",
        "consecutiveGatewayErrors",
        "consecutiveGatewayError",
    )


def _weights_90_20(root: Path) -> None:
    edit(root, f"{VS}/scheduling.yaml", "weight: 100", "weight: 90")
    edit(root, f"{VS}/scheduling.yaml", "weight: 0", "weight: 20")


def _retry_on_create(root: Path) -> None:
    edit(
        root,
        f"{VS}/patient.yaml",
        "Service/(GetPatient|",
        "Service/(CreatePatient|GetPatient|",
        count=2,
    )


def _unknown_subset(root: Path) -> None:
    edit(
        root,
        f"{VS}/patient.yaml",
        "subset: canary\n          weight: 0",
        "subset: canery\n          weight: 0",
    )


def _retry_on_with_spaces(root: Path) -> None:
    edit(root, f"{VS}/iam.yaml", f"retryOn: {READS}", 'retryOn: "unavailable, cancelled"')


def _missing_authorization_policy(root: Path) -> None:
    (root / "mesh/istio/authorization/audit.yaml").unlink()
    edit(root, "mesh/istio/kustomization.yaml", "  - authorization/audit.yaml\n", "")


def _path_to_no_rpc(root: Path) -> None:
    edit(
        root,
        "mesh/istio/authorization/patient.yaml",
        "PatientService/ListConsents",
        "PatientService/ListConsent",
    )


def _unknown_principal(root: Path) -> None:
    edit(
        root, "mesh/istio/authorization/patient.yaml", "sa/research-export", "sa/research-exporter"
    )


def _port_not_grpc(root: Path) -> None:
    edit(root, "deploy/kustomize/base/scheduling/service.yaml", "- name: grpc", "- name: api")
    edit(
        root,
        "deploy/kustomize/base/scheduling/service.yaml",
        "appProtocol: grpc",
        "appProtocol: http",
    )


def _timeout_below_retries(root: Path) -> None:
    edit(root, f"{VS}/audit.yaml", "timeout: 5s", "timeout: 3s")


def _host_not_a_service(root: Path) -> None:
    edit(
        root,
        "mesh/istio/destination-rules/iam.yaml",
        "host: iam.his.svc.cluster.local",
        "host: iamm.his.svc.cluster.local",
    )


def _http_retry_token(root: Path) -> None:
    edit(root, f"{VS}/scheduling.yaml", f"retryOn: {READS}", "retryOn: 5xx,connect-failure")


def _read_missing_from_reads(root: Path) -> None:
    edit(root, f"{VS}/patient.yaml", "(GetPatient|ListPatients|", "(ListPatients|", count=2)


def _file_not_listed(root: Path) -> None:
    edit(root, "mesh/istio/kustomization.yaml", "  - destination-rules/iam.yaml\n", "")


def _canary_without_pods(root: Path) -> None:
    edit(root, f"{VS}/audit.yaml", "weight: 100", "weight: 90")
    edit(root, f"{VS}/audit.yaml", "weight: 0", "weight: 10")


def _drill_out_of_date(root: Path) -> None:
    edit(root, f"{VS}/patient.yaml", "name: patient-reads", "name: patient-read-class")


def _write_retried_on_unavailable(root: Path) -> None:
    edit(
        root,
        f"{VS}/scheduling.yaml",
        "retryOn: connect-failure,refused-stream",
        "retryOn: connect-failure,refused-stream,unavailable",
    )


AUTHZ = "mesh/istio/authorization"
GATEWAY = "mesh/istio/gateway"


def _default_deny_opened(root: Path) -> None:
    edit(root, f"{AUTHZ}/default-deny.yaml", "spec: {}", "spec:\n  rules:\n    - {}")


def _deny_action(root: Path) -> None:
    edit(root, f"{AUTHZ}/iam.yaml", "action: ALLOW", "action: DENY")


def _rule_without_callers(root: Path) -> None:
    edit(
        root,
        f"{AUTHZ}/patient.yaml",
        "principals:\n              - cluster.local/ns/his/sa/iam",
        "namespaces:\n              - his",
    )


def _wildcard_path(root: Path) -> None:
    edit(
        root,
        f"{AUTHZ}/patient.yaml",
        "- /his.patient.v1.PatientService/ListResearchPatients",
        "- /his.patient.v1.PatientService/*",
    )


def _internal_rpc_at_the_gateway(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/authorization.yaml",
        "- /his.iam.v1.IamService/IssueToken",
        "- /his.iam.v1.IamService/IssueToken\n"
        "              - /his.audit.v1.AuditService/WriteAuditEvents",
    )


def _gateway_issuer_typo(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/authorization.yaml",
        "- https://iam.his.local/*",
        "- https://iam.his.locl/*",
    )


def _gateway_rule_without_jwt(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/authorization.yaml",
        "requestPrincipals:\n              - https://iam.his.local/*",
        "principals:\n              - cluster.local/ns/his/sa/mobile-gateway",
    )


def _issuer_differs_from_services(root: Path) -> None:
    edit(
        root,
        "deploy/kustomize/base/patient/configmap.yaml",
        "HIS_AUTH_ISSUER: https://iam.his.local",
        "HIS_AUTH_ISSUER: https://iam.hospital.example",
    )


def _peer_authentication_permissive(root: Path) -> None:
    edit(root, "mesh/istio/peer-authentication.yaml", "mode: STRICT", "mode: PERMISSIVE")


def _outlier_counting_5xx(root: Path) -> None:
    edit(
        root,
        "mesh/istio/destination-rules/audit.yaml",
        "consecutive5xxErrors: 0",
        "consecutive5xxErrors: 5",
    )


def _round_robin(root: Path) -> None:
    edit(
        root,
        "mesh/istio/destination-rules/audit.yaml",
        "simple: LEAST_REQUEST",
        "simple: ROUND_ROBIN",
    )


def _no_retry_budget(root: Path) -> None:
    edit(
        root,
        "mesh/istio/destination-rules/audit.yaml",
        "maxRetries: 20",
        "maxConcurrentStreams: 100",
    )


def _override_after_the_split(root: Path) -> None:
    path = root / f"{VS}/iam.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    http = document["spec"]["http"]
    document["spec"]["http"] = [http[2], http[0], http[1], http[3]]
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def _lookahead_regex(root: Path) -> None:
    edit(root, f"{VS}/audit.yaml", 'regex: "/his', 'regex: "(?!/x)/his', count=2)


def _timeout_off(root: Path) -> None:
    edit(root, f"{VS}/iam.yaml", "timeout: 10s", "timeout: 0s")


def _per_try_timeout_never_retried(root: Path) -> None:
    edit(root, f"{VS}/audit.yaml", READS, "unavailable,connect-failure,refused-stream", count=2)


def _drill_status_misspelled(root: Path) -> None:
    edit(
        root,
        "mesh/istio/drills/patient/unavailable.yaml",
        "grpcStatus: UNAVAILABLE",
        "grpcStatus: UNAVAILABEL",
    )


def _scheduling_may_not_read_patients(root: Path) -> None:
    edit(
        root,
        f"{AUTHZ}/patient.yaml",
        "              - /his.patient.v1.PatientService/GetPatient\n"
        "              - /his.patient.v1.PatientService/ListConsents",
        "              - /his.patient.v1.PatientService/ListConsents",
    )


def _network_blocks_a_caller(root: Path) -> None:
    edit(
        root,
        "deploy/kustomize/components/network-policies/patient.yaml",
        "values: [scheduling, emr, orders, lab, pharmacy, billing, iam, mobile-gateway, "
        "research-export]",
        "values: [emr, orders, lab, pharmacy, billing, iam, mobile-gateway, research-export, "
        "audit]",
    )


NETWORK = "deploy/kustomize/components/network-policies"


def _ingress_open_to_all(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/patient.yaml",
        "    - from:\n"
        "        - podSelector:\n"
        "            matchExpressions:\n"
        "              - key: app\n"
        "                operator: In\n"
        "                values: [scheduling, emr, orders, lab, pharmacy, billing, iam, "
        "mobile-gateway, research-export]\n"
        "      ports:",
        """    - ports:""",
    )


def _gateway_cannot_reach_patient(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/mobile-gateway.yaml",
        "values: [patient, scheduling, emr, orders, lab, pharmacy, billing, iam]",
        "values: [scheduling, emr, orders, lab, pharmacy, billing, iam]",
    )


def _patient_may_reach_emr(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/patient.yaml",
        "values: [iam, audit, scheduling]",
        "values: [iam, audit, scheduling, emr]",
    )


def _requests_by_get(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/authorization.yaml",
        """      to:
        - operation:
            methods:
              - POST
            paths:
              - /his.patient.v1.PatientService/GetPatient""",
        """      to:
        - operation:
            methods:
              - GET
            paths:
              - /his.patient.v1.PatientService/GetPatient""",
    )


def _token_not_forwarded(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "forwardOriginalToken: true",
        "forwardOriginalToken: false",
    )


Seed = Callable[[Path], None]


def _cluster_field_misspelt(root: Path) -> None:
    edit(
        root,
        POSTGRES,
        "primaryUpdateStrategy: unsupervised",
        "primaryUpdateStrategie: unsupervised",
    )


def _wal_storage_size_as_a_number(root: Path) -> None:
    edit(root, POSTGRES, "affinity:\n", "walStorage: {size: 0}\n  affinity:\n")


MUTATIONS: list[tuple[Seed, str, str]] = [
    (_cluster_field_misspelt, POSTGRES, "unknown field 'primaryUpdateStrategie'"),
    (_wal_storage_size_as_a_number, POSTGRES, "expected string, got 0"),
    (
        _misspelled_field,
        "mesh/istio/destination-rules/patient.yaml",
        "unknown field 'consecutiveGatewayError'",
    ),
    (
        _weights_90_20,
        f"{VS}/scheduling.yaml",
        "weights sum to 110 (stable 90 + canary 20), not 100",
    ),
    (_retry_on_create, f"{VS}/patient.yaml", "retries write-class CreatePatient"),
    (_unknown_subset, f"{VS}/patient.yaml", "unknown subset 'canery'"),
    (_retry_on_with_spaces, f"{VS}/iam.yaml", "'unavailable, cancelled' has spaces"),
    (
        _missing_authorization_policy,
        "mesh/istio/authorization/audit.yaml",
        "no AuthorizationPolicy selects app: audit",
    ),
    (
        _path_to_no_rpc,
        "mesh/istio/authorization/patient.yaml",
        "'/his.patient.v1.PatientService/ListConsent' is not an rpc",
    ),
    (_unknown_principal, "mesh/istio/authorization/patient.yaml", "names no ServiceAccount"),
    (_port_not_grpc, "deploy/kustomize/base/scheduling/service.yaml", "no port named grpc"),
    (_timeout_below_retries, f"{VS}/audit.yaml", "gives up before the last retry"),
    (
        _host_not_a_service,
        "mesh/istio/destination-rules/iam.yaml",
        "host 'iamm.his.svc.cluster.local' is not a Service",
    ),
    (_http_retry_token, f"{VS}/scheduling.yaml", "'5xx' looks at the HTTP status"),
    (_read_missing_from_reads, f"{VS}/patient.yaml", "read-class GetPatient"),
    (
        _file_not_listed,
        "mesh/istio/destination-rules/iam.yaml",
        "missing from mesh/istio/kustomization.yaml",
    ),
    (_canary_without_pods, f"{VS}/audit.yaml", "subset 'canary' gets traffic but selects no pods"),
    (
        _drill_out_of_date,
        "mesh/istio/drills/patient/unavailable.yaml",
        "the routes changed, update the drill",
    ),
    (
        _write_retried_on_unavailable,
        f"{VS}/scheduling.yaml",
        "BookAppointment (not idempotent in the proto) on unavailable",
    ),
    (_default_deny_opened, f"{AUTHZ}/default-deny.yaml", "no namespace-wide default deny"),
    (_deny_action, f"{AUTHZ}/iam.yaml", "action: DENY in namespace his"),
    (_rule_without_callers, f"{AUTHZ}/patient.yaml", "source.namespaces: callers must be named"),
    (_wildcard_path, f"{AUTHZ}/patient.yaml", "wildcard path '/his.patient.v1.PatientService/*'"),
    (
        _internal_rpc_at_the_gateway,
        f"{GATEWAY}/authorization.yaml",
        "lets /his.audit.v1.AuditService/WriteAuditEvents in, but AuthorizationPolicy his/audit",
    ),
    (_gateway_issuer_typo, f"{GATEWAY}/authorization.yaml", "is not from the issuer"),
    (
        _gateway_rule_without_jwt,
        f"{GATEWAY}/authorization.yaml",
        "a rule without requestPrincipals",
    ),
    (
        _issuer_differs_from_services,
        "deploy/kustomize/base/patient/configmap.yaml",
        "differs from the gateway's RequestAuthentication issuer",
    ),
    (
        _peer_authentication_permissive,
        "mesh/istio/peer-authentication.yaml",
        "no mesh-wide STRICT mTLS",
    ),
    (
        _outlier_counting_5xx,
        "mesh/istio/destination-rules/audit.yaml",
        "would eject healthy pods",
    ),
    (_round_robin, "mesh/istio/destination-rules/audit.yaml", "only LEAST_REQUEST spreads"),
    (_no_retry_budget, "mesh/istio/destination-rules/audit.yaml", "no maxRetries"),
    (_override_after_the_split, f"{VS}/iam.yaml", "its header match never applies"),
    (
        _lookahead_regex,
        f"{VS}/audit.yaml",
        "RE2 (Envoy's regex engine) refuses it: invalid perl operator: (?!",
    ),
    (_timeout_off, f"{VS}/iam.yaml", "0s turns the timeout off"),
    (
        _per_try_timeout_never_retried,
        f"{VS}/audit.yaml",
        "a try cut by perTryTimeout is never retried",
    ),
    (
        _drill_status_misspelled,
        "mesh/istio/drills/patient/unavailable.yaml",
        "'UNAVAILABEL' is not a gRPC status",
    ),
    (
        _scheduling_may_not_read_patients,
        f"{AUTHZ}/patient.yaml",
        "the code calls /his.patient.v1.PatientService/GetPatient as scheduling",
    ),
    (
        _network_blocks_a_caller,
        "deploy/kustomize/components/network-policies/patient.yaml",
        "does not admit scheduling on port 50051",
    ),
    (
        _network_blocks_a_caller,
        "deploy/kustomize/components/network-policies/patient.yaml",
        "admits audit, which never calls patient",
    ),
    (_ingress_open_to_all, f"{NETWORK}/patient.yaml", "admits every pod to patient on port 50051"),
    (
        _gateway_cannot_reach_patient,
        f"{NETWORK}/mobile-gateway.yaml",
        "does not let mobile-gateway reach patient",
    ),
    (
        _patient_may_reach_emr,
        f"{NETWORK}/patient.yaml",
        "lets patient reach emr on port 50051, which it never calls",
    ),
    (_requests_by_get, f"{GATEWAY}/authorization.yaml", "gRPC-web calls are POST"),
    (
        _token_not_forwarded,
        f"{GATEWAY}/request-authentication.yaml",
        "forwardOriginalToken: is False: after validating the JWT the gateway removes the "
        "Authorization header",
    ),
]


@pytest.mark.parametrize(
    ("seed", "file", "problem"),
    MUTATIONS,
    ids=[seed.__name__.strip("_") for seed, _, _ in MUTATIONS],
)
def test_a_seeded_mistake_fails_the_check(
    policy_copy: Path, seed: Seed, file: str, problem: str
) -> None:
    seed(policy_copy)
    report = run_check(policy_copy, ["dev"])
    lines = [str(finding) for finding in report.findings]
    assert not report.ok
    assert any(line.startswith(f"{file}: ") and problem in line for line in lines), "\n".join(lines)


def _namespace_and_pod_selector(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/patient.yaml",
        """    - from:
        - podSelector:""",
        """    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: his
          podSelector:""",
    )


def _port_range(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/audit.yaml",
        "        - port: 50051\n          protocol: TCP",
        "        - port: 50000\n          endPort: 50100\n          protocol: TCP",
    )


def _any_valid_token(root: Path) -> None:
    edit(root, f"{GATEWAY}/authorization.yaml", "- https://iam.his.local/*", '- "*"')


def _explicit_allow_default_deny(root: Path) -> None:
    edit(root, f"{AUTHZ}/default-deny.yaml", "spec: {}", "spec:\n  action: ALLOW")


def _header_only_route_after_reads(root: Path) -> None:
    path = root / f"{VS}/iam.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    http = document["spec"]["http"]
    document["spec"]["http"] = [http[0], http[2], http[1], http[3]]
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


CORRECT_VARIANTS: list[Seed] = [
    _namespace_and_pod_selector,
    _port_range,
    _any_valid_token,
    _explicit_allow_default_deny,
    _header_only_route_after_reads,
]


@pytest.mark.parametrize(
    "seed", CORRECT_VARIANTS, ids=[seed.__name__.strip("_") for seed in CORRECT_VARIANTS]
)
def test_correct_policy_written_another_way_passes(policy_copy: Path, seed: Seed) -> None:
    seed(policy_copy)
    report = run_check(policy_copy, ["dev"])
    assert report.ok, "\n".join(map(str, report.findings))


def test_cli_prints_one_line_per_finding_and_exits_one(policy_copy: Path) -> None:
    _weights_90_20(policy_copy)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "his.cli",
            "mesh",
            "check",
            "--root",
            str(policy_copy),
            "--overlay",
            "prod",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert (
        f"{VS}/scheduling.yaml: VirtualService his/scheduling http[2] scheduling-reads route: "
        "weights sum to 110" in done.stdout
    )
    assert "fix: make them add up to 100" in done.stdout


def test_a_yaml_syntax_error_names_the_file(policy_copy: Path) -> None:
    edit(policy_copy, f"{VS}/iam.yaml", "  gateways:\n", "  gateways:\n   bad: [\n")
    report = run_check(policy_copy, ["dev"])
    assert any(
        f.file == f"{VS}/iam.yaml" and "does not parse" in f.problem for f in report.findings
    )


def test_unknown_overlay_is_refused() -> None:
    with pytest.raises(CheckUnavailable, match="unknown overlay staging; overlays: dev, prod"):
        run_check(REPOSITORY, ["staging"])


def test_missing_kubectl_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIS_KUBECTL", "/nonexistent/kubectl")
    with pytest.raises(CheckUnavailable, match="kubectl not runnable"):
        run_check(REPOSITORY, ["dev"])


# --- a fresh clone: the check needs nothing beside the repository ----------------------------


def _istio_objects(root: Path) -> int:
    """Distinct Istio objects the check renders in `root` (mesh/istio and every overlay)."""
    trees = ["mesh/istio", *(f"{OVERLAYS}/{name}" for name in overlays(root))]
    return len(
        {
            json.dumps(obj, sort_keys=True)
            for tree in trees
            for obj in render(root / tree)
            if str(obj.get("apiVersion", "")).partition("/")[0].endswith(".istio.io")
        }
    )


def test_an_exported_copy_schema_checks_every_istio_object(exported_copy: Path) -> None:
    done = his_in(exported_copy, "mesh", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    checked = re.search(r"schema-checked objects: .*Istio (1\.28\.\d+) \((\d+)\)", done.stdout)
    assert checked, done.stdout
    assert int(checked[2]) == _istio_objects(exported_copy) > 0
    # Nothing went unchecked: the CloudNativePG Cluster is checked against the carried CRD.
    notes = [line for line in done.stdout.splitlines() if line.startswith("note:")]
    assert notes == [], notes
    assert re.search(r"CloudNativePG 1\.30\.\d+ \(2\)", done.stdout), done.stdout
    assert "skipped" not in done.stdout + done.stderr


def test_an_exported_copy_fails_on_a_misspelled_istio_field(exported_copy: Path) -> None:
    _misspelled_field(exported_copy)
    done = his_in(exported_copy, "mesh", "check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "mesh/istio/destination-rules/patient.yaml: DestinationRule his/patient "
        "spec.trafficPolicy.outlierDetection.consecutiveGatewayError: "
        "unknown field 'consecutiveGatewayError'" in done.stdout
    ), done.stdout


ARTIFACT = "services/his/mesh/crds/istio.json"


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda path: path.unlink(), "Istio schema missing: no "),
        (lambda path: path.write_bytes(path.read_bytes()[:1000]), "Istio schema unreadable: "),
    ],
    ids=["missing", "truncated"],
)
def test_without_its_istio_schema_the_check_fails_instead_of_passing(
    exported_copy: Path, damage: Callable[[Path], object], said: str
) -> None:
    damage(exported_copy / ARTIFACT)
    done = his_in(exported_copy, "mesh", "check")
    assert done.returncode == 2, done.stdout + done.stderr
    # The copy's own artifact was the one looked for, not the installed package's.
    assert f"his mesh check: cannot run: {said}" in done.stderr
    assert str(exported_copy / ARTIFACT) in done.stderr
    assert "his mesh check: ok" not in done.stdout


def test_an_object_of_the_wrong_shape_gives_findings_not_a_traceback(policy_copy: Path) -> None:
    # A null server and a list where a map belongs: the schema says which object is wrong, and
    # the rules that cannot read it say they checked nothing rather than crash the check.
    (policy_copy / "mesh/istio/zz.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\n"
        "metadata: {name: g2, namespace: his}\n"
        "spec:\n  selector: [{istio: mobile-gateway}]\n  servers: [null]\n",
        encoding="utf-8",
    )
    with (policy_copy / "mesh/istio/kustomization.yaml").open("a", encoding="utf-8") as listed:
        listed.write("  - zz.yaml\n")

    report = run_check(policy_copy, ["dev"])

    about = [f for f in report.findings if f.file == "mesh/istio/zz.yaml"]
    assert about, "the schema names the malformed Gateway"
    assert any("could not read an object" in f.problem for f in report.findings)
