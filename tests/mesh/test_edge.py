"""`his mesh check` on the mobile edge: gRPC-web really translated in the cluster, the gateway's
jwksUri naming a Service port that serves it, and the narrow openings for istiod on iam's key
documents port. Each seeded mistake fails the check; the real policy passes (test_check.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from his.mesh.check import run_check
from tests.mesh.conftest import edit

GATEWAY = "mesh/istio/gateway"
Seed = Callable[[Path], None]


def _plain_grpc_behind_the_gateway(root: Path) -> None:
    edit(
        root,
        "deploy/kustomize/base/patient/service.yaml",
        "    - name: grpc-web\n      port: 50051\n      targetPort: grpc\n      protocol: TCP\n"
        "      appProtocol: grpc-web",
        "    - name: grpc\n      port: 50051\n      targetPort: grpc\n      protocol: TCP\n"
        "      appProtocol: grpc",
    )


def _grpc_web_by_name_but_grpc_by_app_protocol(root: Path) -> None:
    edit(
        root, "deploy/kustomize/base/lab/service.yaml", "appProtocol: grpc-web", "appProtocol: grpc"
    )


def _jwks_on_a_port_iam_does_not_have(root: Path) -> None:
    edit(
        root, f"{GATEWAY}/request-authentication.yaml", "cluster.local:8080/", "cluster.local:8443/"
    )


def _jwks_on_the_grpc_port(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "cluster.local:8080/",
        "cluster.local:50051/",
    )


def _jwks_of_a_host_nobody_serves(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/request-authentication.yaml",
        "http://iam.his.svc.cluster.local:8080/",
        "http://iam.his.local/",
    )


def _plaintext_on_the_grpc_port(root: Path) -> None:
    edit(root, "mesh/istio/peer-authentication.yaml", '"8080":', '"50051":')


def _key_rule_opens_an_rpc(root: Path) -> None:
    edit(
        root,
        "mesh/istio/authorization/iam.yaml",
        "              - /.well-known/openid-configuration\n",
        "              - /.well-known/openid-configuration\n"
        "              - /his.iam.v1.IamService/CreateStaffMember\n",
    )


def _gateway_route_to_a_port_lab_lacks(root: Path) -> None:
    edit(
        root,
        f"{GATEWAY}/routes.yaml",
        "host: lab.his.svc.cluster.local\n",
        "host: lab.his.svc.cluster.local\n            port: {number: 50052}\n",
    )


def test_a_route_to_a_missing_port_says_so_and_never_prints_none(policy_copy: Path) -> None:
    _gateway_route_to_a_port_lab_lacks(policy_copy)
    found = [
        f
        for f in run_check(policy_copy, ["dev"]).findings
        if f.file == f"{GATEWAY}/routes.yaml" and "50052" in f.problem
    ]
    assert found, "no finding for the route to port 50052"
    for item in found:
        assert "None" not in str(item), item
    assert any(
        "lab.his.svc.cluster.local routes to port 50052, which Service lab does not expose "
        "(its ports: 50051 grpc-web, 9090 http-metrics): the route has no upstream"
        in f.problem
        and f.fix == "set destination.port.number to the Service's grpc-web port"
        for f in found
    ), found


MUTATIONS: list[tuple[Seed, str, str]] = [
    (_plain_grpc_behind_the_gateway, f"{GATEWAY}/routes.yaml", "arrive untranslated"),
    (
        _grpc_web_by_name_but_grpc_by_app_protocol,
        "deploy/kustomize/base/lab/service.yaml",
        "appProtocol is 'grpc', not 'grpc-web'",
    ),
    (
        _grpc_web_by_name_but_grpc_by_app_protocol,
        f"{GATEWAY}/routes.yaml",
        "lab.his.svc.cluster.local reaches port 50051 grpc-web of protocol grpc, not grpc-web",
    ),
    (_jwks_on_a_port_iam_does_not_have, f"{GATEWAY}/request-authentication.yaml", "no port 8443"),
    (
        _jwks_on_the_grpc_port,
        f"{GATEWAY}/request-authentication.yaml",
        "port of protocol 'grpc-web' 50051 serving HTTP",
    ),
    (
        _jwks_of_a_host_nobody_serves,
        f"{GATEWAY}/request-authentication.yaml",
        "neither https nor a Service of this overlay",
    ),
    (_plaintext_on_the_grpc_port, "mesh/istio/peer-authentication.yaml", "accepts plaintext"),
    (
        _key_rule_opens_an_rpc,
        "mesh/istio/authorization/iam.yaml",
        "a rule without principals",
    ),
]


@pytest.mark.parametrize(
    ("seed", "file", "problem"),
    MUTATIONS,
    ids=[f"{seed.__name__.strip('_')}-{n}" for n, (seed, _, _) in enumerate(MUTATIONS)],
)
def test_a_seeded_edge_mistake_fails_the_check(
    policy_copy: Path, seed: Seed, file: str, problem: str
) -> None:
    seed(policy_copy)
    report = run_check(policy_copy, ["dev"])
    lines = [str(finding) for finding in report.findings]
    assert not report.ok
    assert any(line.startswith(f"{file}: ") and problem in line for line in lines), "\n".join(lines)
