"""The rule families of issue 18 on copies of the policy with one seeded mistake each: hosts as
istiod resolves them, exportTo and Sidecar hiding, pool and ejection values, HPAs and PDBs,
kustomize patches matching nothing, drills and faults, pinned production images, JWT audiences,
CORS, the gateway's servers, mesh-wide allows, sidecar injection and HIS_MESH, and the network
ports of istiod and the gateway. Each mistake is found with the file to edit named; each correct
variant passes the whole check. The real policy passes (test_check.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from his.mesh.check import OVERLAYS, overlay_cluster, run_check
from his.mesh.findings import Finding
from his.mesh.kustomize_lint import lint_kustomize, pinned, selector_holds
from his.mesh.lint import lint
from his.mesh.render import render
from his.mesh.routes import fqdn, istio_host
from his.mesh.sources import scan
from tests.mesh.conftest import edit, needs_kubectl

pytestmark = needs_kubectl

Seed = Callable[[Path], None]
DR = "mesh/istio/destination-rules"
VS = "mesh/istio/virtual-services"
GATEWAY = "mesh/istio/gateway"
BASE = "deploy/kustomize/base"
NETWORK = "deploy/kustomize/components/network-policies"


def overlay_findings(root: Path, overlay: str) -> list[Finding]:
    """The lint of one rendered overlay, located as `his mesh check` locates it (no schemas:
    the seeds are valid Istio and Kubernetes, only wrong)."""
    tree = f"{OVERLAYS}/{overlay}"
    objects = render(root / tree)
    cluster = overlay_cluster(root, tree, objects, scan(root).files)
    return sorted({*lint(cluster), *lint_kustomize(root, tree, objects)})


def _add_to_mesh(root: Path, file: str, text: str) -> None:
    (root / "mesh/istio" / file).write_text(text, encoding="utf-8")
    edit(root, "mesh/istio/kustomization.yaml", "resources:\n", f"resources:\n  - {file}\n")


# --- hosts -----------------------------------------------------------------------------------


def test_istio_keeps_a_dotted_short_name_as_written_and_dns_expands_it() -> None:
    assert istio_host("patient", "his") == "patient.his.svc.cluster.local"
    assert istio_host("patient.his", "his") == "patient.his"
    assert istio_host("patient.his.svc", "his") == "patient.his.svc"
    assert istio_host("*", "his") == "*"
    assert fqdn("patient.his", "his") == "patient.his.svc.cluster.local"


def _dotted_rule_host(root: Path) -> None:
    edit(root, f"{DR}/patient.yaml", "host: patient.his.svc.cluster.local", "host: patient.his")


def _dotted_route_host(root: Path) -> None:
    edit(
        root,
        f"{VS}/scheduling.yaml",
        "hosts:\n    - scheduling.his.svc.cluster.local",
        "hosts:\n    - scheduling.his",
    )


def _dotted_destination(root: Path) -> None:
    edit(root, f"{VS}/emr.yaml", "host: emr.his.svc.cluster.local", "host: emr.his.svc")


# --- exportTo and Sidecar ------------------------------------------------------------------


def _rule_exported_elsewhere(root: Path) -> None:
    edit(
        root,
        f"{DR}/patient.yaml",
        "spec:\n  host:",
        "spec:\n  exportTo:\n    - istio-system\n  host:",
    )


def _routes_exported_to_no_one(root: Path) -> None:
    edit(root, f"{VS}/iam.yaml", "spec:\n  hosts:", 'spec:\n  exportTo:\n    - "~"\n  hosts:')


def _gateway_routes_exported_elsewhere(root: Path) -> None:
    edit(
        root, f"{GATEWAY}/routes.yaml", "spec:\n  hosts:", "spec:\n  exportTo:\n    - web\n  hosts:"
    )


def _service_exported_to_its_own_namespace_only(root: Path) -> None:
    # Its callers share the namespace, so "." is fine; "~" is not.
    edit(
        root,
        f"{BASE}/audit/service.yaml",
        "metadata:\n",
        'metadata:\n  annotations:\n    networking.istio.io/exportTo: "~"\n',
    )


_SIDECAR = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: {name}
  namespace: his
spec:
{selector}  egress:
    - hosts:
{hosts}"""


def _narrow_sidecar(root: Path) -> None:
    _add_to_mesh(
        root,
        "sidecar-scheduling.yaml",
        _SIDECAR.format(
            name="scheduling",
            selector="  workloadSelector:\n    labels:\n      app: scheduling\n",
            hosts='        - "./iam.his.svc.cluster.local"\n        - "istio-system/*"\n',
        ),
    )


# --- connection pool, ejection, retries ------------------------------------------------------


def _eject_every_pod(root: Path) -> None:
    edit(root, f"{DR}/audit.yaml", "maxEjectionPercent: 50", "maxEjectionPercent: 100")


def _eject_on_one_error(root: Path) -> None:
    edit(root, f"{DR}/lab.yaml", "consecutiveGatewayErrors: 5", "consecutiveGatewayErrors: 1")


def _one_call_at_a_time(root: Path) -> None:
    edit(root, f"{DR}/billing.yaml", "http2MaxRequests: 1000", "http2MaxRequests: 1")


def _connection_per_call(root: Path) -> None:
    edit(root, f"{DR}/orders.yaml", "maxRequestsPerConnection: 0", "maxRequestsPerConnection: 1")


def _one_connection(root: Path) -> None:
    edit(root, f"{DR}/emr.yaml", "maxConnections: 200", "maxConnections: 1")


def _zero_retry_budget(root: Path) -> None:
    edit(root, f"{DR}/pharmacy.yaml", "maxRetries: 20", "maxRetries: 0")


def _retry_storm(root: Path) -> None:
    edit(root, f"{VS}/patient.yaml", "attempts: 2\n", "attempts: 10\n")


# --- HPA and PDB -----------------------------------------------------------------------------


def _hpa_min_above_max(root: Path) -> None:
    edit(root, f"{BASE}/patient/hpa.yaml", "minReplicas: 3", "minReplicas: 8")


def _hpa_of_nothing(root: Path) -> None:
    edit(root, f"{BASE}/lab/hpa.yaml", "    name: lab\n", "    name: labs\n")


def _pdb_never_evicts(root: Path) -> None:
    edit(root, f"{BASE}/emr/pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 0")


def _pdb_keeps_every_pod(root: Path) -> None:
    edit(root, f"{BASE}/patient/pdb.yaml", "maxUnavailable: 1", "minAvailable: 3")


def _pdb_of_no_pod(root: Path) -> None:
    edit(root, f"{BASE}/iam/pdb.yaml", "version: v1", "version: v3")


def _second_budget(root: Path) -> None:
    path = root / f"{BASE}/patient/pdb.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "---\n" + text.replace("name: patient\n", "name: patient-spare\n", 1))


def _second_autoscaler(root: Path) -> None:
    path = root / f"{BASE}/lab/hpa.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "---\n" + text.replace("  name: lab\n", "  name: lab-spare\n", 1))


# --- kustomize, drills and faults, images ---------------------------------------------------


def _patch_target_typo(root: Path) -> None:
    edit(
        root,
        f"{OVERLAYS}/prod/kustomization.yaml",
        "labelSelector: app.kubernetes.io/part-of=his-mesh",
        "labelSelector: app.kubernetes.io/part-of=his_mesh",
    )


def _drill_in_the_policy(root: Path) -> None:
    edit(
        root,
        "mesh/istio/kustomization.yaml",
        "  - gateway/routes.yaml\n",
        "  - gateway/routes.yaml\npatches:\n  - path: drills/patient/unavailable.yaml\n"
        "    target:\n      kind: VirtualService\n      name: patient\n",
    )


DRILL = "mesh/istio/drills/patient/unavailable.yaml"


def _fault_patched_in_by_an_overlay(root: Path) -> None:
    (root / OVERLAYS / "dev/slow-audit.yaml").write_text(
        "- op: add\n  path: /spec/http/0/fault\n  value:\n    delay:\n      fixedDelay: 2s\n"
        "      percentage: {value: 50}\n",
        encoding="utf-8",
    )
    edit(
        root,
        f"{OVERLAYS}/dev/kustomization.yaml",
        "patches:\n",
        "patches:\n  - path: slow-audit.yaml\n    target: {kind: VirtualService, name: audit}\n",
    )


def _fault_left_in_routes(root: Path) -> None:
    edit(
        root,
        f"{VS}/audit.yaml",
        "      timeout: 10s\n",
        "      timeout: 10s\n      fault:\n        delay:\n          fixedDelay: 2s\n"
        "          percentage:\n            value: 50\n",
    )


def _latest_in_prod(root: Path) -> None:
    edit(root, f"{OVERLAYS}/prod/kustomization.yaml", "newTag: 1.1.0", "newTag: latest")


# --- edge: JWT, CORS, gateway servers -------------------------------------------------------


def _no_audiences(root: Path) -> None:
    edit(root, f"{GATEWAY}/request-authentication.yaml", "      audiences:\n        - his\n", "")


def _jwks_by_a_name_istiod_resolves_elsewhere(root: Path) -> None:
    # istiod fetches the keys from istio-system, where the single label `iam` is not iam of his.
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "http://iam.his.svc.cluster.local:8080/",
        "http://iam:8080/",
    )


def _grpc_message_hidden(root: Path) -> None:
    edit(root, f"{GATEWAY}/routes.yaml", "          - grpc-message\n", "")


def _grpc_web_header_refused(root: Path) -> None:
    edit(root, f"{GATEWAY}/routes.yaml", "          - x-grpc-web\n", "")


def _any_origin_with_credentials(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/routes.yaml",
        "          - exact: https://staff.his.hospital.example\n",
        '          - exact: "*"\n        allowCredentials: true\n',
    )


def _route_without_cors(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/routes.yaml",
        "      timeout: 10s\n      corsPolicy: *cors\n",
        "      timeout: 10s\n",
    )


def _old_tls(root: Path) -> None:
    edit(root, f"{GATEWAY}/gateway.yaml", "TLSV1_2", "TLSV1_1")


def _tls_passed_through(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/gateway.yaml",
        "        mode: SIMPLE\n        credentialName: mobile-gateway-tls\n",
        "        mode: PASSTHROUGH\n",
    )


def _plaintext_server(root: Path) -> None:
    edit(root, f"{GATEWAY}/gateway.yaml", "protocol: HTTPS", "protocol: HTTP")


def _server_on_the_pod_port(root: Path) -> None:
    edit(root, f"{GATEWAY}/gateway.yaml", "number: 443", "number: 8443")


# --- who may call, sidecars, network ---------------------------------------------------------


def _allow_all_from_the_root_namespace(root: Path) -> None:
    _add_to_mesh(
        root,
        "authorization/allow-all.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        "  name: allow-all\n  namespace: istio-system\nspec:\n  rules:\n    - {}\n",
    )


def _deny_reflection_in_the_root_namespace(root: Path) -> None:
    # Mesh-wide hardening: no workload answers gRPC reflection. A DENY only refuses.
    _add_to_mesh(
        root,
        "authorization/deny-reflection.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        "  name: deny-reflection\n  namespace: istio-system\nspec:\n  action: DENY\n"
        "  rules:\n    - to:\n        - operation:\n            paths:\n"
        '              - "/grpc.reflection.v1alpha.ServerReflection/*"\n',
    )


def _deny_all_but_his_in_the_root_namespace(root: Path) -> None:
    # Only a negative matcher: it refuses every caller outside his, istiod and the gateway too.
    _add_to_mesh(
        root,
        "authorization/deny-others.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        "  name: deny-others\n  namespace: istio-system\nspec:\n  action: DENY\n"
        "  rules:\n    - from:\n        - source:\n            notNamespaces: [his]\n",
    )


def _custom_authorizer_in_the_root_namespace(root: Path) -> None:
    _add_to_mesh(
        root,
        "authorization/ext-authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        "  name: ext-authz\n  namespace: istio-system\nspec:\n  action: CUSTOM\n"
        "  provider:\n    name: opa\n  rules:\n    - to:\n        - operation:\n"
        '            paths: ["/his.audit.v1.AuditService/*"]\n',
    )


def _empty_rule_for_the_database(root: Path) -> None:
    _add_to_mesh(
        root,
        "authorization/his-db.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        "  name: his-db\n  namespace: his\nspec:\n  selector:\n    matchLabels:\n"
        "      cnpg.io/cluster: his-db\n  rules:\n    - {}\n",
    )


def _injection_off_for_a_service(root: Path) -> None:
    edit(
        root,
        f"{BASE}/orders/deployment.yaml",
        "        app: orders\n        version: v1\n",
        '        app: orders\n        version: v1\n        sidecar.istio.io/inject: "false"\n',
    )


def _namespace_not_injected(root: Path) -> None:
    edit(
        root,
        "deploy/kustomize/components/istio/namespace-injection.yaml",
        "istio-injection: enabled",
        "istio-injection: disabled",
    )


def _not_in_mesh_mode(root: Path) -> None:
    edit(root, f"{BASE}/pharmacy/configmap.yaml", "HIS_MESH: istio", "HIS_MESH: none")


def _istiod_cut_off(root: Path) -> None:
    edit(root, f"{NETWORK}/platform.yaml", "- port: 15012", "- port: 15010")


def _gateway_service_port_not_pod_port(root: Path) -> None:
    edit(root, f"{NETWORK}/mobile-gateway.yaml", "- port: 8443", "- port: 443")


def _istiod_port_for_udp_only(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/platform.yaml",
        "- port: 15012\n          protocol: TCP",
        "- port: 15012\n          protocol: UDP",
    )


MUTATIONS: list[tuple[Seed, str, str, str]] = [
    (_dotted_rule_host, "dev", f"{DR}/patient.yaml", "keeps 'patient.his' as written"),
    # Its file exists: the host finding above names the cause, not "add the file"; the routes
    # to its subsets say what it breaks.
    (_dotted_rule_host, "dev", f"{VS}/patient.yaml", "which has no DestinationRule"),
    (_dotted_route_host, "dev", f"{VS}/scheduling.yaml", "names no Service as Istio resolves"),
    (_dotted_destination, "dev", f"{VS}/emr.yaml", "keeps 'emr.his.svc' as written"),
    (_rule_exported_elsewhere, "dev", f"{DR}/patient.yaml", "['istio-system'] hides it from"),
    (_routes_exported_to_no_one, "dev", f"{VS}/iam.yaml", "no retry classes"),
    (_gateway_routes_exported_elsewhere, "dev", f"{GATEWAY}/routes.yaml", "mobile-gateway"),
    (
        _service_exported_to_its_own_namespace_only,
        "dev",
        f"{BASE}/audit/service.yaml",
        "hides the Service from",
    ),
    (
        _narrow_sidecar,
        "dev",
        "mesh/istio/sidecar-scheduling.yaml",
        "scheduling → patient (no Service/VirtualService/DestinationRule his/patient)",
    ),
    (
        _narrow_sidecar,
        "dev",
        "mesh/istio/sidecar-scheduling.yaml",
        "scheduling → emr (no Service/VirtualService/DestinationRule his/emr)",
    ),
    (_eject_every_pod, "dev", f"{DR}/audit.yaml", "every pod may be ejected at once"),
    (_eject_on_one_error, "dev", f"{DR}/lab.yaml", "ejected after 1 refused connection"),
    (_one_call_at_a_time, "dev", f"{DR}/billing.yaml", "at most 1 call(s) in flight"),
    (_connection_per_call, "dev", f"{DR}/orders.yaml", "a new connection and mTLS handshake"),
    (_zero_retry_budget, "dev", f"{DR}/pharmacy.yaml", "0 is Istio's 'unset'"),
    (_retry_storm, "dev", f"{VS}/patient.yaml", "10 retries"),
    (_hpa_min_above_max, "prod", f"{BASE}/patient/hpa.yaml", "minReplicas 8 > maxReplicas 6"),
    (_hpa_of_nothing, "dev", f"{BASE}/lab/hpa.yaml", "Deployment his/labs does not exist"),
    (_pdb_never_evicts, "dev", f"{BASE}/emr/pdb.yaml", "lets no pod of emr be evicted"),
    (_pdb_keeps_every_pod, "prod", f"{BASE}/patient/pdb.yaml", "keeps all 3 pod(s) of patient"),
    (_pdb_of_no_pod, "dev", f"{BASE}/iam/pdb.yaml", "selects no pods"),
    (_second_budget, "dev", f"{BASE}/patient/pdb.yaml", "PodDisruptionBudget his/patient selects"),
    (_second_autoscaler, "dev", f"{BASE}/lab/hpa.yaml", "HorizontalPodAutoscaler his/lab too"),
    (
        _patch_target_typo,
        "prod",
        f"{OVERLAYS}/prod/kustomization.yaml",
        "matches no object rendered",
    ),
    (_drill_in_the_policy, "dev", "mesh/istio/kustomization.yaml", "applies a drill"),
    # The fault is blamed on the patch that brings it in, not on the VirtualService's file.
    (_drill_in_the_policy, "dev", DRILL, "a fault outside a drill"),
    (_fault_patched_in_by_an_overlay, "dev", f"{OVERLAYS}/dev/slow-audit.yaml", "a fault outside"),
    (_fault_left_in_routes, "dev", f"{VS}/audit.yaml", "a fault outside a drill"),
    (_latest_in_prod, "prod", f"{OVERLAYS}/prod/kustomization.yaml", "tag 'latest'"),
    (_no_audiences, "dev", f"{GATEWAY}/request-authentication.yaml", "no audiences"),
    (
        _jwks_by_a_name_istiod_resolves_elsewhere,
        "dev",
        f"{GATEWAY}/request-authentication.yaml",
        "neither https nor a Service of this overlay",
    ),
    (_grpc_message_hidden, "dev", f"{GATEWAY}/routes.yaml", "does not expose grpc-message"),
    (_grpc_web_header_refused, "dev", f"{GATEWAY}/routes.yaml", "does not allow x-grpc-web"),
    (_any_origin_with_credentials, "dev", f"{GATEWAY}/routes.yaml", "any origin with allowCred"),
    (_route_without_cors, "dev", f"{GATEWAY}/routes.yaml", "no corsPolicy"),
    (_old_tls, "dev", f"{GATEWAY}/gateway.yaml", "TLSV1_1 accepts TLS versions"),
    (_tls_passed_through, "dev", f"{GATEWAY}/gateway.yaml", "the gateway does not end TLS"),
    (_plaintext_server, "dev", f"{GATEWAY}/gateway.yaml", "plaintext HTTP server"),
    (_server_on_the_pod_port, "dev", f"{GATEWAY}/gateway.yaml", "8443 is no port of the gat"),
    (
        _allow_all_from_the_root_namespace,
        "dev",
        "mesh/istio/authorization/allow-all.yaml",
        "applies to every workload of the mesh",
    ),
    (
        _deny_all_but_his_in_the_root_namespace,
        "dev",
        "mesh/istio/authorization/deny-others.yaml",
        "refuses nearly every call in the mesh",
    ),
    (
        _custom_authorizer_in_the_root_namespace,
        "dev",
        "mesh/istio/authorization/ext-authz.yaml",
        "external authorizer (opa) that this repository does not define",
    ),
    (
        _empty_rule_for_the_database,
        "dev",
        "mesh/istio/authorization/his-db.yaml",
        "an empty rule matches every request",
    ),
    (
        _injection_off_for_a_service,
        "dev",
        f"{BASE}/orders/deployment.yaml",
        "run without a sidecar",
    ),
    (_namespace_not_injected, "dev", f"{BASE}/namespace.yaml", "no pod of the namespace gets"),
    (_not_in_mesh_mode, "dev", f"{BASE}/pharmacy/deployment.yaml", "is none, not istio"),
    (_istiod_cut_off, "dev", f"{NETWORK}/platform.yaml", "patient, pharmacy, scheduling reach"),
    (_gateway_service_port_not_pod_port, "dev", f"{NETWORK}/mobile-gateway.yaml", "port 8443"),
    (_one_connection, "dev", f"{DR}/emr.yaml", "connection(s) to the whole service"),
    (_istiod_port_for_udp_only, "dev", f"{NETWORK}/platform.yaml", "reach istiod"),
]


@pytest.mark.parametrize(
    ("seed", "overlay", "file", "problem"),
    MUTATIONS,
    ids=[f"{seed.__name__.strip('_')}-{n}" for n, (seed, *_) in enumerate(MUTATIONS)],
)
def test_a_seeded_mistake_is_found_with_its_file(
    policy_copy: Path, seed: Seed, overlay: str, file: str, problem: str
) -> None:
    seed(policy_copy)
    found = overlay_findings(policy_copy, overlay)
    assert any(f.file == file and problem in f.problem and f.fix for f in found), "\n".join(
        map(str, found)
    )


# --- correct variants: the whole check passes -------------------------------------------------


def _short_name_hosts(root: Path) -> None:
    # A name without a dot is expanded in the object's namespace: the same Service.
    edit(root, f"{DR}/patient.yaml", "host: patient.his.svc.cluster.local", "host: patient")
    edit(
        root,
        f"{VS}/scheduling.yaml",
        "hosts:\n    - scheduling.his.svc.cluster.local",
        "hosts:\n    - scheduling",
    )


def _dialled_by_dns_short_name(root: Path) -> None:
    # A process dials by DNS, where the search domains expand `patient.his`.
    edit(
        root,
        f"{BASE}/scheduling/configmap.yaml",
        "HIS_PATIENT_ADDR: patient.his.svc.cluster.local:50051",
        "HIS_PATIENT_ADDR: patient.his:50051",
    )


def _jwks_by_dns_short_name(root: Path) -> None:
    # istiod's resolver expands `iam.his` through its search domains: the same Service.
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "http://iam.his.svc.cluster.local:8080/",
        "http://iam.his:8080/",
    )


def _exported_to_own_namespace(root: Path) -> None:
    edit(root, f"{DR}/patient.yaml", "spec:\n  host:", 'spec:\n  exportTo:\n    - "."\n  host:')
    edit(root, f"{VS}/iam.yaml", "spec:\n  hosts:", "spec:\n  exportTo:\n    - his\n  hosts:")


def _namespace_sidecar_importing_its_own_namespace(root: Path) -> None:
    _add_to_mesh(
        root,
        "sidecar.yaml",
        _SIDECAR.format(
            name="default", selector="", hosts='        - "./*"\n        - "istio-system/*"\n'
        ),
    )


def _prod_image_by_digest(root: Path) -> None:
    edit(
        root,
        f"{OVERLAYS}/prod/kustomization.yaml",
        "newTag: 1.1.0",
        "digest: sha256:" + "0" * 64,
    )


def _budget_below_the_lowest_scale(root: Path) -> None:
    # prod runs at least 3 patient pods: keeping 2 leaves one to drain. (dev's single pod would
    # not, so only prod is checked here.)
    edit(root, f"{BASE}/patient/pdb.yaml", "maxUnavailable: 1", "minAvailable: 2")


def _wildcard_headers_with_authorization(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/routes.yaml",
        "          - content-type\n          - grpc-timeout\n          - x-grpc-web\n"
        "          - x-user-agent\n",
        '          - "*"\n',
    )


def _gateway_ports_by_name(root: Path) -> None:
    # Kubernetes admits a port by the container port's name as well as by its number.
    edit(root, f"{NETWORK}/mobile-gateway.yaml", "- port: 8443", "- port: https")
    edit(
        root,
        "deploy/kustomize/components/istio/mobile-gateway/service.yaml",
        "targetPort: 8443",
        "targetPort: https",
    )


def _namespace_wide_mtls_default(root: Path) -> None:
    # A wildcard host is a default for every Service it matches, as istiod reads it.
    _add_to_mesh(
        root,
        "mtls-default.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata:\n  name: his-default\n  namespace: his\n"
        'spec:\n  host: "*.his.svc.cluster.local"\n'
        "  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n",
    )


def _istiod_by_revision_label(root: Path) -> None:
    # istiod's pods carry istio.io/rev too: a policy may select them by it.
    edit(root, f"{NETWORK}/platform.yaml", "app: istiod", "istio.io/rev: default")


CORRECT_VARIANTS: list[tuple[Seed, str]] = [
    (_gateway_ports_by_name, "dev"),
    (_istiod_by_revision_label, "dev"),
    (_namespace_wide_mtls_default, "dev"),
    (_short_name_hosts, "dev"),
    (_dialled_by_dns_short_name, "dev"),
    (_jwks_by_dns_short_name, "dev"),
    (_exported_to_own_namespace, "dev"),
    (_namespace_sidecar_importing_its_own_namespace, "dev"),
    (_prod_image_by_digest, "prod"),
    (_budget_below_the_lowest_scale, "prod"),
    (_wildcard_headers_with_authorization, "dev"),
    (_deny_reflection_in_the_root_namespace, "dev"),
]


@pytest.mark.parametrize(
    ("seed", "overlay"),
    CORRECT_VARIANTS,
    ids=[seed.__name__.strip("_") for seed, _ in CORRECT_VARIANTS],
)
def test_a_correct_variant_passes_the_check(policy_copy: Path, seed: Seed, overlay: str) -> None:
    seed(policy_copy)
    report = run_check(policy_copy, [overlay])
    assert report.ok, "\n".join(map(str, report.findings))


# --- one mistake, one finding ---------------------------------------------------------------


def _namespace_sidecar_importing_only_iam(root: Path) -> None:
    _add_to_mesh(
        root,
        "sidecar-his.yaml",
        _SIDECAR.format(
            name="default",
            selector="",
            hosts='        - "./iam.his.svc.cluster.local"\n        - "istio-system/*"\n',
        ),
    )


@pytest.mark.parametrize(
    ("seed", "file", "names"),
    [
        (
            _namespace_sidecar_importing_only_iam,
            "mesh/istio/sidecar-his.yaml",
            ["billing, emr, iam, lab, orders, patient, pharmacy, scheduling → audit", "→ emr"],
        ),
        (_narrow_sidecar, "mesh/istio/sidecar-scheduling.yaml", ["scheduling → audit", "→ emr"]),
        (_grpc_message_hidden, f"{GATEWAY}/routes.yaml", ["16 places", "http[15] iam-writes"]),
        (_any_origin_with_credentials, f"{GATEWAY}/routes.yaml", ["16 places", "http[0] patient"]),
    ],
    ids=["namespace-sidecar", "workload-sidecar", "cors-anchor-header", "cors-anchor-origin"],
)
def test_one_mistake_is_one_finding_naming_everything_it_affects(
    policy_copy: Path, seed: Seed, file: str, names: list[str]
) -> None:
    seed(policy_copy)
    report = run_check(policy_copy, ["dev"])
    assert len(report.findings) == 1, "\n".join(map(str, report.findings))
    (found,) = report.findings
    assert found.file == file and found.fix
    assert all(name in found.problem for name in names), found


def test_pinned_means_a_release_tag_or_a_digest() -> None:
    assert pinned("registry.hospital.example/his:1.0.0")
    assert pinned("ghcr.io/cloudnative-pg/postgresql:16.6")
    assert pinned("his:v2.3.1-rc.1")
    assert pinned("his@sha256:" + "a" * 64)
    assert not pinned("his")
    assert not pinned("registry.hospital.example:5000/his")
    assert not pinned("his:latest")
    assert not pinned("his:dev")


def test_a_patch_target_label_selector_reads_as_kubernetes_reads_it() -> None:
    labels = {"app": "patient", "tier": "grpc"}
    assert selector_holds("app=patient", labels)
    assert selector_holds("app==patient,tier", labels)
    assert selector_holds("app in (patient, iam),!canary", labels)
    assert selector_holds("tier notin (web),app!=iam", labels)
    assert not selector_holds("app=iam", labels)
    assert not selector_holds("app notin (patient)", labels)
    assert not selector_holds("!tier", labels)
    assert not selector_holds("version", labels)


def test_a_fault_patched_in_by_an_overlay_is_blamed_on_that_patch(policy_copy: Path) -> None:
    _fault_patched_in_by_an_overlay(policy_copy)
    faults = [f for f in overlay_findings(policy_copy, "dev") if "fault outside" in f.problem]
    assert len(faults) == 1, faults
    (fault,) = faults
    assert fault.file == f"{OVERLAYS}/dev/slow-audit.yaml"
    assert fault.subject.startswith("VirtualService his/audit http[0] ")
    assert fault.subject.endswith(
        f" fault, patched in by {OVERLAYS}/dev/kustomization.yaml patches[0] "
        f"({OVERLAYS}/dev/slow-audit.yaml)"
    )
    assert fault.fix.startswith(f"remove patches[0] from {OVERLAYS}/dev/kustomization.yaml")
