"""The local gateway's Envoy bootstrap: generated from mesh/istio/gateway, accepted by
`envoy --mode validate`, and saying what the mesh says (nothing more, nothing less)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from his.base.catalog import implemented, lookup
from his.gateway import envoy
from his.gateway.config import GatewayConfig
from his.gateway.envoy_config import LocalAddresses, bootstrap
from his.gateway.policy import GATEWAY_DIR, PolicyError, load, parse, seconds
from his.gateway.runner import repository_root

ROOT = repository_root(Path(__file__).parent)


def _local() -> LocalAddresses:
    iam_http = lookup("iam").http_port
    assert iam_http is not None
    return LocalAddresses({entry.name: entry.port for entry in implemented()}, iam_http)


def _objects() -> dict[str, list[dict[str, Any]]]:
    objects: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((ROOT / GATEWAY_DIR).glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            objects.setdefault(document["kind"], []).append(document)
    return objects


def test_the_generated_bootstrap_is_valid_for_envoy(tmp_path: Path) -> None:
    path = envoy.write_bootstrap(
        bootstrap(load(ROOT), GatewayConfig(), _local()), tmp_path / "envoy.json"
    )

    envoy.validate(path)


def test_a_broken_bootstrap_is_refused_by_envoy_validate(tmp_path: Path) -> None:
    generated = bootstrap(load(ROOT), GatewayConfig(), _local())
    listener = generated["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["route_config"]["virtual_hosts"][0]["routes"][1]["route"]["cluster"] = "nowhere"

    with pytest.raises(ValueError, match="nowhere"):
        envoy.validate(envoy.write_bootstrap(generated, tmp_path / "envoy.json"))


def test_audit_and_iam_administration_are_never_reachable_from_outside() -> None:
    policy = load(ROOT)
    reachable = {*policy.open_paths, *policy.signed_in_paths}

    assert not [path for path in reachable if path.startswith("/his.audit.")]
    for rpc in (
        "CreateStaffMember",
        "UpdateStaffMember",
        "DeactivateStaffMember",
        "AddMembership",
        "RemoveMembership",
        "CreateDepartment",
        "GetJwks",
    ):
        assert f"/his.iam.v1.IamService/{rpc}" not in reachable
    assert {route.service for route in policy.routes} == {
        "patient",
        "scheduling",
        "emr",
        "orders",
        "lab",
        "pharmacy",
        "billing",
        "iam",
    }


def test_sign_in_rpcs_are_the_only_ones_open_without_a_token() -> None:
    policy = load(ROOT)

    assert set(policy.open_paths) == {
        "/his.iam.v1.IamService/IssueToken",
        "/his.iam.v1.IamService/CompleteStaffEnrolment",
        "/his.iam.v1.IamService/StartPatientSignIn",
        "/his.iam.v1.IamService/CompletePatientSignIn",
    }
    assert policy.preflight_open
    assert policy.issuer == "https://iam.his.local"
    assert policy.audiences == ("his",)
    assert policy.forward_token


def test_envoy_trusts_the_mesh_issuer_against_iams_http_key_set() -> None:
    generated = bootstrap(load(ROOT), GatewayConfig(), _local())
    manager = generated["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = {f["name"]: f["typed_config"] for f in manager["typed_config"]["http_filters"]}

    provider = filters["envoy.filters.http.jwt_authn"]["providers"]["his"]
    assert provider["issuer"] == "https://iam.his.local"
    assert provider["audiences"] == ["his"]
    assert provider["forward"] is True
    assert provider["remote_jwks"]["http_uri"]["uri"] == (
        "http://127.0.0.1:8058/.well-known/jwks.json"
    )
    names = list(filters)
    assert (names[0], names[-1]) == ("envoy.filters.http.grpc_web", "envoy.filters.http.router")
    assert generated["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_a_route_with_its_own_cors_policy_cannot_be_reproduced() -> None:
    objects = copy.deepcopy(_objects())
    objects["VirtualService"][0]["spec"]["http"][1]["corsPolicy"] = {"allowOrigins": []}

    with pytest.raises(PolicyError, match="one CORS policy"):
        parse(objects)


def test_a_signed_in_rule_for_another_issuer_is_refused() -> None:
    objects = copy.deepcopy(_objects())
    rule = objects["AuthorizationPolicy"][0]["spec"]["rules"][2]
    rule["from"][0]["source"]["requestPrincipals"] = ["https://elsewhere.example/*"]

    with pytest.raises(PolicyError, match="requestPrincipals"):
        parse(objects)


def test_durations_read_as_istio_writes_them() -> None:
    assert seconds("1500ms") == 1.5
    assert seconds("24h") == 86400
    assert seconds("1h30m") == 5400
    with pytest.raises(PolicyError):
        seconds("5 s")
