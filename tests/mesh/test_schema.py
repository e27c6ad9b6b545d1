"""Strict schema validation: typos and wrong types in Kubernetes, Istio and CloudNativePG
manifests are found, valid policy passes, kinds with no schema offline are listed as unchecked.
The Istio and CloudNativePG schemas are the ones the package carries (tests/mesh/test_istio_crds.py
checks Istio's), so every test runs everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from his.mesh import cnpg_crd
from his.mesh.findings import Finding
from his.mesh.istio_crds import SchemaUnavailable
from his.mesh.schema import SchemaResult, cnpg_release, istio_release, validate
from his.mesh.sources import Source

FILE = "mesh/istio/policy.yaml"


def check(text: str) -> SchemaResult:
    """Validate the YAML documents of `text` as if written in FILE."""
    return validate([Source(FILE, doc) for doc in yaml.safe_load_all(text) if doc])


def only(result: SchemaResult) -> Finding:
    assert not result.unchecked
    assert len(result.findings) == 1, result.findings
    return result.findings[0]


def passes(text: str) -> dict[str, int]:
    """Validate `text`, which must pass: how many objects each schema set checked."""
    result = check(text)
    assert result.findings == []
    assert result.unchecked == []
    return result.checked


ISTIO = f"Istio {istio_release()}"


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: patient, namespace: his, labels: {app: patient}}
spec:
  replicas: 2
  selector: {matchLabels: {app: patient}}
  template:
    metadata: {labels: {app: patient, version: v1}}
    spec:
      serviceAccountName: patient
      containers:
        - name: patient
          image: his/patient:1.0
          imagePullPolicy: IfNotPresent
          ports: [{name: grpc, containerPort: 50051}]
          resources: {requests: {cpu: 100m, memory: 128Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: patient, namespace: his}
spec:
  selector: {app: patient}
  ports: [{name: grpc, port: 50051, targetPort: grpc, appProtocol: grpc}]
"""


def test_valid_deployment_and_service_pass() -> None:
    assert passes(DEPLOYMENT) == {"Kubernetes 1.32": 2}


def test_misspelled_deployment_field_names_path_and_file() -> None:
    finding = only(check(DEPLOYMENT.replace("imagePullPolicy", "imagePullPolcy")))
    assert finding.file == FILE
    assert finding.subject == (
        "Deployment his/patient spec.template.spec.containers[0].imagePullPolcy"
    )
    assert finding.problem == "unknown field 'imagePullPolcy'"
    assert "'imagePullPolicy'" in finding.fix


def test_quoted_port_number_is_a_type_error() -> None:
    finding = only(check(DEPLOYMENT.replace("containerPort: 50051", "containerPort: '50051'")))
    assert finding.subject.endswith("containers[0].ports[0].containerPort")
    assert "expected integer" in finding.problem
    assert "quotes" in finding.fix


def test_unknown_kind_of_a_builtin_group_is_a_finding() -> None:
    finding = only(check("apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: x}\n"))
    assert "no kind Deploymnet in apps/v1" in finding.problem


VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: patient, namespace: his}
spec:
  hosts: [patient.his.svc.cluster.local]
  http:
    - match:
        - headers: {x-canary: {exact: "true"}}
      fault:
        abort:
          grpcStatus: UNAVAILABLE
          percentage: {value: 0.1}
      retries:
        attempts: 3
        perTryTimeout: 2s
        retryOn: unavailable,cancelled
      timeout: 10s
      corsPolicy:
        allowOrigins: [{exact: "https://his.example.org"}]
        allowMethods: [POST, GET]
        allowHeaders: [content-type, x-grpc-web]
        exposeHeaders: [grpc-status, grpc-message]
        maxAge: 24h
      route:
        - destination: {host: patient.his.svc.cluster.local, subset: v1, port: {number: 50051}}
          weight: 90
        - destination: {host: patient.his.svc.cluster.local, subset: v2}
          weight: 10
"""

DESTINATION_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: patient, namespace: his}
spec:
  host: patient.his.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting:
        enabled: true
        failover: [{from: eu-west-1, to: eu-central-1}]
    connectionPool:
      http: {http2MaxRequests: 1000, maxRequestsPerConnection: 100, maxRetries: 3}
      tcp: {maxConnections: 100}
    outlierDetection:
      consecutiveGatewayErrors: 5
      consecutive5xxErrors: 0
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
    tls: {mode: ISTIO_MUTUAL}
  subsets:
    - {name: v1, labels: {version: v1}}
    - name: v2
      labels: {version: v2}
      trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}
"""

SECURITY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: patient, namespace: his}
spec:
  selector: {matchLabels: {app: patient}}
  action: ALLOW
  rules:
    - from: [{source: {principals: [cluster.local/ns/his/sa/scheduling]}}]
      to: [{operation: {paths: [/his.patient.v1.PatientService/*], methods: [POST]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: his}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: his}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: his-jwt, namespace: his}
spec:
  jwtRules:
    - issuer: https://iam.his.example.org
      jwksUri: https://iam.his.example.org/.well-known/jwks.json
      forwardOriginalToken: true
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: his, namespace: his}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: [his.example.org]
      tls: {mode: SIMPLE, credentialName: his-tls}
"""


@pytest.mark.parametrize("text", [VIRTUAL_SERVICE, DESTINATION_RULE, SECURITY])
def test_valid_istio_policy_passes(text: str) -> None:
    assert passes(text) == {ISTIO: text.count("\nkind: ")}


def test_older_served_istio_version_is_checked_too() -> None:
    text = DESTINATION_RULE.replace("networking.istio.io/v1", "networking.istio.io/v1beta1")
    assert passes(text) == {ISTIO: 1}
    bad = text.replace("consecutiveGatewayErrors", "consecutiveGatewayError")
    assert only(check(bad)).problem.startswith("unknown field 'consecutiveGatewayError'")


@pytest.mark.parametrize(
    ("text", "old", "new", "where", "suggested"),
    [
        (VIRTUAL_SERVICE, "retryOn:", "retryOnn:", "spec.http[0].retries.retryOnn", "retryOn"),
        (
            VIRTUAL_SERVICE,
            "subset: v2",
            "subsett: v2",
            "spec.http[0].route[1].destination.subsett",
            "subset",
        ),
        (
            DESTINATION_RULE,
            "consecutiveGatewayErrors",
            "consecutiveGatewayError",
            "spec.trafficPolicy.outlierDetection.consecutiveGatewayError",
            "consecutiveGatewayErrors",
        ),
        (DESTINATION_RULE, "  subsets:", "  subsetz:", "spec.subsetz", "subsets"),
    ],
)
def test_misspelled_istio_field_names_path_and_suggests(
    text: str, old: str, new: str, where: str, suggested: str
) -> None:
    finding = only(check(text.replace(old, new)))
    assert finding.file == FILE
    assert finding.subject.endswith(f"his/patient {where}")
    name = where.rsplit(".", 1)[-1]
    assert finding.problem == f"unknown field {name!r} (Istio ignores unknown fields silently)"
    assert finding.fix == f"did you mean {suggested!r}?"


def test_unknown_field_with_nothing_close_lists_allowed_fields() -> None:
    finding = only(check(VIRTUAL_SERVICE.replace("  hosts:", "  canary: true\n  hosts:")))
    assert finding.subject == "VirtualService his/patient spec.canary"
    assert "hosts" in finding.fix
    assert "http" in finding.fix


def test_wrong_type_fails() -> None:
    finding = only(check(VIRTUAL_SERVICE.replace("weight: 10", "weight: ten")))
    assert finding.subject.endswith("spec.http[0].route[1].weight")
    assert finding.problem == "expected integer, got 'ten'"


def test_wrong_enum_value_suggests_the_right_one() -> None:
    finding = only(check(DESTINATION_RULE.replace("LEAST_REQUEST", "LEAST_REQUESTS")))
    assert finding.subject.endswith("spec.trafficPolicy.loadBalancer.simple")
    assert finding.fix == "did you mean 'LEAST_REQUEST'?"


def test_mutually_exclusive_fields_are_reported_as_such() -> None:
    text = VIRTUAL_SERVICE.replace(
        '{exact: "https://his.example.org"}', '{exact: "https://a.org", prefix: "https://b"}'
    )
    finding = only(check(text))
    assert finding.subject.endswith("spec.http[0].corsPolicy.allowOrigins[0]")
    assert finding.problem.startswith("only one of 'exact', 'prefix', 'regex' may be set")


def test_missing_name_and_misspelled_metadata_are_found() -> None:
    text = SECURITY.replace(
        "metadata: {name: default, namespace: his}", "metadata: {namepsace: his}"
    )
    problems = {(f.subject, f.problem) for f in check(text).findings}
    assert problems == {
        ("PeerAuthentication ? metadata", "missing required field 'name'"),
        (
            "PeerAuthentication ? metadata.namepsace",
            "unknown field 'namepsace' (Istio ignores unknown fields silently)",
        ),
    }


def test_unserved_istio_version_and_unknown_kind_are_findings() -> None:
    text = VIRTUAL_SERVICE.replace("networking.istio.io/v1", "networking.istio.io/v2")
    assert only(check(text)).fix == "use apiVersion networking.istio.io/v1"
    typo = only(check(VIRTUAL_SERVICE.replace("kind: VirtualService", "kind: VirtualServce")))
    assert typo.fix == "did you mean 'VirtualService'?"


# --- the CloudNativePG Cluster, against the operator's CRD the package carries -----------------

REPOSITORY = Path(__file__).resolve().parents[2]
CLUSTER_FILE = "deploy/kustomize/components/postgres/cluster.yaml"
CNPG = f"CloudNativePG {cnpg_release()}"


def cluster(**spec: Any) -> dict[str, Any]:
    """The real Cluster of deploy/ with `spec` fields replaced (None: removed)."""
    manifest: dict[str, Any] = yaml.safe_load((REPOSITORY / CLUSTER_FILE).read_text())
    for name, value in spec.items():
        if value is None:
            manifest["spec"].pop(name, None)
        else:
            manifest["spec"][name] = value
    return manifest


def check_cluster(manifest: dict[str, Any]) -> SchemaResult:
    return validate([Source(CLUSTER_FILE, manifest)])


def test_the_real_cluster_is_schema_checked_and_passes() -> None:
    result = check_cluster(cluster())
    assert result.findings == [] and result.unchecked == []
    assert result.checked == {CNPG: 1}
    assert result.rules_evaluated > 0  # the CRD's CEL rules ran (imageCatalogRef vs imageName)


def test_the_carried_cnpg_crd_names_its_source_and_licence() -> None:
    carried = REPOSITORY / "services/his/mesh/crds"
    header = (carried / "cnpg-clusters.yaml").read_text(encoding="utf-8")[:1200]
    assert "github.com/cloudnative-pg/cloudnative-pg" in header
    assert f"tag v{cnpg_release()}" in header and "commit " in header
    assert "Apache License, Version 2.0" in header
    assert "Apache License" in (carried / "CNPG-LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("spec", "where", "problem", "fix"),
    [
        ({"instances": 0}, "spec.instances", "0 is not at least 1", "use a value of at least 1"),
        (
            {"instances": 3, "primaryUpdateStrategy": "automatic"},
            "spec.primaryUpdateStrategy",
            "'automatic' is not an allowed value",
            "use one of: unsupervised, supervised",
        ),
        ({"instances": "three"}, "spec.instances", "expected integer, got 'three'", "an integer"),
        ({"instances": "3"}, "spec.instances", "expected integer", "remove the quotes"),
        (
            {"storage": {"sise": "20Gi"}},
            "spec.storage.sise",
            "unknown field 'sise' (the API server drops it",
            "did you mean 'size'?",
        ),
    ],
    ids=["no-instances", "bad-enum", "wrong-type", "quoted-number", "misspelt-field"],
)
def test_a_seeded_cluster_mistake_is_found(
    spec: dict[str, Any], where: str, problem: str, fix: str
) -> None:
    result = check_cluster(cluster(**spec))
    assert len(result.findings) == 1, result.findings
    found = result.findings[0]
    assert found.file == CLUSTER_FILE
    assert found.subject == f"Cluster his/his-db {where}"
    assert problem in found.problem and fix in found.fix, found


def test_the_cluster_crd_cel_rules_are_evaluated() -> None:
    # The CRD's own rule: an image catalog or an image name, never both.
    both = cluster(
        imageCatalogRef={
            "apiGroup": "postgresql.cnpg.io",
            "kind": "ImageCatalog",
            "name": "postgresql",
            "major": 16,
        }
    )
    found = only(check_cluster(both))
    assert found.subject == "Cluster his/his-db spec"
    assert "imageName and imageCatalogRef are mutually exclusive" in found.problem
    assert "so the API server refuses the object" in found.problem
    # A catalog of another group breaks the catalog's own rule, at its place.
    other = cluster(
        imageName=None,
        imageCatalogRef={
            "apiGroup": "example.com",
            "kind": "ImageCatalog",
            "name": "postgresql",
            "major": 16,
        },
    )
    found = only(check_cluster(other))
    assert found.subject == "Cluster his/his-db spec.imageCatalogRef"
    assert "Only image catalogs are supported" in found.problem


FLAGGER_CANARY = """
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: patient, namespace: his}
spec: {targetRef: {apiVersion: apps/v1, kind: Deployment, name: patient}}
"""


def test_kinds_with_no_schema_are_unchecked_not_failed() -> None:
    result = check(FLAGGER_CANARY)
    assert not result.findings
    assert [str(u) for u in result.unchecked] == ["Canary his/patient (no schema offline)"]
    assert result.unchecked[0].file == FILE


def test_unsupported_kubernetes_version_is_an_error() -> None:
    manifests: list[Source] = []
    with pytest.raises(ValueError, match=r"not 1\.99"):
        validate(manifests, kubernetes_version="1.99")


def test_findings_are_sorted_by_path_within_each_manifest() -> None:
    manifest: dict[str, Any] = yaml.safe_load(VIRTUAL_SERVICE)
    routes = manifest["spec"]["http"][0]["route"]
    routes[1]["weight"] = "ten"
    routes[0]["destination"]["subsett"] = "v1"
    subjects = [f.subject for f in validate([Source(FILE, manifest)] * 2).findings]
    assert (
        subjects
        == [
            "VirtualService his/patient spec.http[0].route[0].destination.subsett",
            "VirtualService his/patient spec.http[0].route[1].weight",
        ]
        * 2
    )


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("- supervised\n", "- supervised\n                - automatic\n", "edited by hand?"),
        ("his-mesh.carried/content-sha256", "his-mesh.carried/checksum", "no 'his-mesh"),
    ],
    ids=["schema-edited", "digest-missing"],
)
def test_a_hand_edited_cnpg_crd_is_refused_not_used(
    tmp_path: Path, old: str, new: str, reason: str
) -> None:
    text = (REPOSITORY / "services/his/mesh/crds/cnpg-clusters.yaml").read_text(encoding="utf-8")
    assert old in text
    altered = tmp_path / "cnpg-clusters.yaml"
    altered.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(SchemaUnavailable, match="CloudNativePG schema unreadable") as raised:
        cnpg_crd.load(altered)
    assert reason in str(raised.value)
