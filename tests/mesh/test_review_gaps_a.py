"""Seeded mistakes of the issue 18 review (2026-12-06) that `his mesh check` passed or blamed
on the wrong file: the gateway's hosts, TLS versions and selector, the jwksUri path, the gateway's
NetworkPolicy, the database's sidecars, the gateway issuer, the istiod policy and a mesh
VirtualService bound to the gateway only. Each is now one finding on the file to edit; each
correct variant passes the whole check. The real policy passes (test_check.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from his.mesh.check import run_check
from his.mesh.edge_lint import hosts_intersect
from tests.mesh.conftest import edit, needs_kubectl

pytestmark = needs_kubectl

Seed = Callable[[Path], None]
GATEWAY = "mesh/istio/gateway"
NETWORK = "deploy/kustomize/components/network-policies"
POSTGRES = "deploy/kustomize/components/postgres/cluster.yaml"
_OPT_OUT = '  inheritedMetadata:\n    labels:\n      sidecar.istio.io/inject: "false"\n'


def _gateway_host_renamed(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/gateway.yaml",
        "- mobile.his.hospital.example",
        "- mobile.hospital.example",
    )


def _tls_min_above_max(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/gateway.yaml",
        "minProtocolVersion: TLSV1_2",
        "minProtocolVersion: TLSV1_3\n        maxProtocolVersion: TLSV1_2",
    )


def _gateway_selects_istios_default_pods(root: Path) -> None:
    edit(root, f"{GATEWAY}/gateway.yaml", "    istio: mobile-gateway", "    istio: ingressgateway")


def _jwks_path_iam_does_not_serve(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "8080/.well-known/jwks.json",
        "8080/jwks.json",
    )


def _jwks_uri_at_the_discovery_document(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "8080/.well-known/jwks.json",
        "8080/.well-known/openid-configuration",
    )


def _gateway_ingress_from_namespace_pods(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/mobile-gateway.yaml",
        "  ingress:\n    - ports:",
        "  ingress:\n    - from:\n        - podSelector: {}\n      ports:",
    )


def _gateway_ingress_from_private_range(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/mobile-gateway.yaml",
        "  ingress:\n    - ports:",
        "  ingress:\n    - from:\n        - ipBlock:\n            cidr: 10.0.0.0/8\n      ports:",
    )


def _database_without_opt_out(root: Path) -> None:
    edit(root, POSTGRES, _OPT_OUT, "")


def _gateway_issuer_with_slash(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "issuer: https://iam.his.local\n",
        "issuer: https://iam.his.local/\n",
    )


def _istiod_namespace_misspelt(root: Path) -> None:
    edit(root, f"{NETWORK}/platform.yaml", "name: istio-system", "name: istio-sytem")


def _lab_routes_bound_to_the_gateway(root: Path) -> None:
    edit(root, "mesh/istio/virtual-services/lab.yaml", "    - mesh\n", "    - his/mobile\n")


def _second_gateway_virtual_service_for_another_host(root: Path) -> None:
    # The Gateway still has its routes (routes.yaml): this one binds to nothing.
    (root / GATEWAY / "kiosk.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata:\n  name: kiosk\n  namespace: his\n"
        "spec:\n  hosts:\n    - kiosk.his.hospital.example\n  gateways:\n    - his/mobile\n"
        "  tcp:\n    - route:\n        - destination:\n"
        "            host: patient.his.svc.cluster.local\n",
        encoding="utf-8",
    )
    edit(
        root,
        "mesh/istio/kustomization.yaml",
        "resources:\n",
        "resources:\n  - gateway/kiosk.yaml\n",
    )


# (seed, file, subject, words of the problem, words of the fix): the one finding of the check.
MISTAKES: list[tuple[Seed, str, str, list[str], list[str]]] = [
    (
        _gateway_host_renamed,
        f"{GATEWAY}/gateway.yaml",
        "Gateway his/mobile servers[0].hosts",
        ["mobile.hospital.example", "VirtualService his/mobile", "404"],
        ["'mobile.his.hospital.example'", f"{GATEWAY}/routes.yaml"],
    ),
    (
        _tls_min_above_max,
        f"{GATEWAY}/gateway.yaml",
        "Gateway his/mobile servers[0].tls",
        ["TLSV1_3 is above maxProtocolVersion TLSV1_2", "every handshake"],
        ["maxProtocolVersion"],
    ),
    (
        _gateway_selects_istios_default_pods,
        f"{GATEWAY}/gateway.yaml",
        "Gateway his/mobile selector",
        ["istio: ingressgateway selects no pod", "mobile.his.hospital.example"],
        ["istio: mobile-gateway", "components/istio/mobile-gateway/deployment.yaml"],
    ),
    (
        _jwks_path_iam_does_not_serve,
        f"{GATEWAY}/request-authentication.yaml",
        "RequestAuthentication his/mobile-gateway jwtRules[0].jwksUri",
        ["'/jwks.json' is not a path iam serves", "every token"],
        ["http://iam.his.svc.cluster.local:8080/.well-known/jwks.json"],
    ),
    (
        _jwks_uri_at_the_discovery_document,
        f"{GATEWAY}/request-authentication.yaml",
        "RequestAuthentication his/mobile-gateway jwtRules[0].jwksUri",
        ["discovery document, not a key set"],
        ["/.well-known/jwks.json"],
    ),
    (
        _gateway_ingress_from_namespace_pods,
        f"{NETWORK}/mobile-gateway.yaml",
        "NetworkPolicy his/mobile-gateway ingress",
        ["admits port 8443 only from podSelector {}", "outside the cluster", "LoadBalancer"],
        ["from anywhere"],
    ),
    (
        _gateway_ingress_from_private_range,
        f"{NETWORK}/mobile-gateway.yaml",
        "NetworkPolicy his/mobile-gateway ingress",
        ["only from ipBlock 10.0.0.0/8"],
        ["0.0.0.0/0"],
    ),
    (
        _database_without_opt_out,
        POSTGRES,
        "Cluster his/his-db spec.inheritedMetadata.labels",
        ["istio-injection: enabled", "istiod", "allow-istiod does not select the instances"],
        ['sidecar.istio.io/inject: "false"'],
    ),
    (
        _gateway_issuer_with_slash,
        f"{GATEWAY}/request-authentication.yaml",
        "RequestAuthentication his/mobile-gateway jwtRules[0].issuer",
        ["'https://iam.his.local/' is not the issuer", "HIS_AUTH_ISSUER 'https://iam.his.local'"],
        ["set issuer: https://iam.his.local"],
    ),
    (
        _istiod_namespace_misspelt,
        f"{NETWORK}/platform.yaml",
        "NetworkPolicy his/allow-istiod egress",
        ["audit, billing, emr", "'istio-sytem' is misspelt"],
        ["kubernetes.io/metadata.name: istio-system"],
    ),
    (
        _lab_routes_bound_to_the_gateway,
        "mesh/istio/virtual-services/lab.yaml",
        "VirtualService his/lab gateways",
        ["lists his/mobile but not mesh", "lab.his.svc.cluster.local"],
        ["put mesh back in gateways"],
    ),
    (
        _second_gateway_virtual_service_for_another_host,
        f"{GATEWAY}/kiosk.yaml",
        "VirtualService his/kiosk hosts",
        ["kiosk.his.hospital.example", "bound to nothing"],
        ["a host the Gateway serves"],
    ),
]


@pytest.mark.parametrize(
    ("seed", "file", "subject", "problem", "fix"),
    MISTAKES,
    ids=[seed.__name__.strip("_") for seed, *_ in MISTAKES],
)
def test_a_seeded_mistake_is_one_finding_on_the_file_to_edit(
    policy_copy: Path, seed: Seed, file: str, subject: str, problem: list[str], fix: list[str]
) -> None:
    seed(policy_copy)
    report = run_check(policy_copy, ["dev"])
    assert len(report.findings) == 1, "\n".join(map(str, report.findings))
    (found,) = report.findings
    assert (found.file, found.subject) == (file, subject), found
    assert all(word in found.problem for word in problem), found
    assert all(word in found.fix for word in fix), found


def _gateway_wildcard_host(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/gateway.yaml",
        "- mobile.his.hospital.example",
        '- "*.his.hospital.example"',
    )


def _gateway_host_for_its_namespace(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/gateway.yaml",
        "- mobile.his.hospital.example",
        "- ./mobile.his.hospital.example",
    )


def _tls_one_dot_three_only(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/gateway.yaml",
        "minProtocolVersion: TLSV1_2",
        "minProtocolVersion: TLSV1_3\n        maxProtocolVersion: TLSV1_3",
    )


def _gateway_selected_by_app(root: Path) -> None:
    edit(root, f"{GATEWAY}/gateway.yaml", "    istio: mobile-gateway", "    app: mobile-gateway")


def _gateway_ingress_from_any_address(root: Path) -> None:
    edit(
        root,
        f"{NETWORK}/mobile-gateway.yaml",
        "  ingress:\n    - ports:",
        "  ingress:\n    - from:\n        - ipBlock:\n            cidr: 0.0.0.0/0\n      ports:",
    )


def _database_opts_out_by_annotation(root: Path) -> None:
    edit(
        root,
        POSTGRES,
        _OPT_OUT,
        '  inheritedMetadata:\n    annotations:\n      sidecar.istio.io/inject: "false"\n',
    )


CORRECT_VARIANTS: list[Seed] = [
    _gateway_wildcard_host,
    _gateway_host_for_its_namespace,
    _tls_one_dot_three_only,
    _gateway_selected_by_app,
    _gateway_ingress_from_any_address,
    _database_opts_out_by_annotation,
]


@pytest.mark.parametrize(
    "seed", CORRECT_VARIANTS, ids=[s.__name__.strip("_") for s in CORRECT_VARIANTS]
)
def test_a_correct_variant_passes_the_check(policy_copy: Path, seed: Seed) -> None:
    seed(policy_copy)
    report = run_check(policy_copy, ["dev"])
    assert report.ok, "\n".join(map(str, report.findings))


def test_istio_hosts_intersect_as_istio_matches_them() -> None:
    assert hosts_intersect("*", "mobile.his.hospital.example")
    assert hosts_intersect("*.hospital.example", "mobile.his.hospital.example")
    assert hosts_intersect("*.his.hospital.example", "*.hospital.example")
    assert hosts_intersect("Mobile.His.Hospital.Example", "mobile.his.hospital.example")
    assert not hosts_intersect("*.his.hospital.example", "his.hospital.example")
    assert not hosts_intersect("mobile.hospital.example", "mobile.his.hospital.example")
