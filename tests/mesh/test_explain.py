"""`his mesh explain` on the real policy: the route each call takes, its split, retries and
faults; and on copies with one seeded change each, the warnings it gives."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from his.cli import main
from his.mesh.explain import Destination, ExplainError, explain, format, parse_headers
from tests.mesh.conftest import REPOSITORY

VS = "mesh/istio/virtual-services/patient.yaml"


def edit(root: Path, file: str, old: str, new: str, count: int = 1) -> None:
    """Replace `old` (which must be there) in one file of the copy."""
    path = root / file
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {file}: the test no longer seeds its change"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def weights(destinations: Sequence[Destination]) -> dict[str | None, int]:
    return {d.subset: d.weight for d in destinations}


def test_a_read_takes_the_reads_route_to_stable_and_retries_unavailable() -> None:
    e = explain(REPOSITORY, "patient", "GetPatient")
    assert (e.virtual_service, e.file) == ("his/patient", VS)
    assert (e.route_index, e.route_name) == (2, "patient-reads")
    assert weights(e.destinations) == {"stable": 100, "canary": 0}
    assert {d.subset: d.labels for d in e.destinations} == {
        "stable": {"version": "v1"},
        "canary": {"version": "v2"},
    }
    assert e.retries is not None and "unavailable" in e.retries["retryOn"].split(",")
    assert e.fault is None and e.warnings == ()
    report = format(e)
    assert "read-class" in report
    assert "route       http[2] patient-reads  (matched" in report and "matched uri regex" in report
    assert "subset stable 100%, subset canary 0%" in report
    assert "stable = version v1, canary = version v2" in report
    assert "on unavailable,connect-failure,refused-stream,reset  (at most 3 tries)" in report
    assert "fault       none" in report


def test_a_create_takes_the_writes_route_which_never_retries_unavailable() -> None:
    e = explain(REPOSITORY, "patient", "CreatePatient")
    assert e.route_name == "patient-writes"
    assert e.retries is not None
    assert set(e.retries["retryOn"].split(",")) == {"connect-failure", "refused-stream"}
    assert e.timeout == "10s"
    report = format(e)
    assert "write-class" in report and "unavailable" not in report and "warning" not in report


def test_the_canary_header_overrides_the_weights() -> None:
    e = explain(REPOSITORY, "patient", "GetPatient", parse_headers(["X-Canary=always"]))
    assert e.route_name == "patient-canary-override-reads"
    assert weights(e.destinations) == {"canary": 100}
    assert 'header x-canary exact "always"' in format(e)
    other = explain(REPOSITORY, "patient", "GetPatient", {"x-canary": "sometimes"})
    assert other.route_name == "patient-reads"


def test_through_the_gateway_the_mobile_routes_apply() -> None:
    e = explain(REPOSITORY, "scheduling", "BookAppointment", gateway=True)
    assert (e.virtual_service, e.file) == ("his/mobile", "mesh/istio/gateway/routes.yaml")
    assert e.route_name == "scheduling-writes"
    assert {d.host for d in e.destinations} == {"scheduling.his.svc.cluster.local"}
    read = explain(REPOSITORY, "scheduling", "ListSlots", gateway=True)
    assert read.route_name == "scheduling-reads"
    # The anchored retries (&read-retries) arrive resolved.
    assert read.retries is not None and read.retries["attempts"] == 2


def test_a_drill_shows_its_fault_on_the_route_the_call_takes() -> None:
    e = explain(REPOSITORY, "patient", "GetPatient", drill="patient/unavailable")
    assert e.drill is not None and e.drill.name == "patient/unavailable"
    assert e.fault == {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 10}}}
    report = format(e)
    assert "drill       patient/unavailable applied" in report
    assert "fault       abort grpcStatus UNAVAILABLE for 10% of calls" in report
    slow = format(explain(REPOSITORY, "scheduling", "ListSlots", drill="scheduling/slow"))
    assert "fault       delay 2s for 20% of calls" in slow


@pytest.mark.parametrize(
    ("service", "method", "drill", "message"),
    [
        ("patient", "GetPatients", None, "known methods: GetPatient, ListPatients"),
        ("pharmacist", "GetPatient", None, "known services: patient, scheduling"),
        ("patient", "GetPatient", "patient/slow", "known drills: patient/unavailable"),
        ("patient", "GetPatient", "scheduling/slow", "patches VirtualService his/scheduling"),
    ],
)
def test_what_cannot_be_explained_names_what_is_known(
    service: str, method: str, drill: str | None, message: str
) -> None:
    with pytest.raises(ExplainError, match=message):
        explain(REPOSITORY, service, method, drill=drill)


def test_a_header_without_a_value_is_refused() -> None:
    with pytest.raises(ExplainError, match="KEY=VALUE"):
        parse_headers(["x-canary"])


def test_a_call_no_route_takes_says_so_and_exits_one(
    policy_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every rpc has a gateway route today: take billing's writes route off its path.
    edit(
        policy_copy,
        "mesh/istio/gateway/routes.yaml",
        "prefix: /his.billing.v1.BillingService/",
        "prefix: /his.billing.v1.RetiredService/",
    )
    with pytest.raises(SystemExit) as done:
        main(
            [
                "mesh",
                "explain",
                "billing",
                "CreateInvoice",
                "--gateway",
                "--root",
                str(policy_copy),
            ]
        )
    assert done.value.code == 1
    assert "none matches" in capsys.readouterr().out


def test_the_cli_explains_a_call_and_refuses_a_bad_method(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["mesh", "explain", "patient", "GetPatient", "-H", "x-canary=always"]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--root", str(REPOSITORY)])
    assert done.value.code == 0
    assert "patient-canary-override-reads" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["mesh", "explain", "patient", "Nope", "--root", str(REPOSITORY)])
    assert done.value.code == 2
    assert "unknown method 'Nope' of patient; known methods:" in capsys.readouterr().err


def test_a_write_on_a_retrying_route_is_warned_but_explained(policy_copy: Path) -> None:
    edit(policy_copy, VS, "Service/(GetPatient|", "Service/(CreatePatient|GetPatient|", count=2)
    e = explain(policy_copy, "patient", "CreatePatient")
    assert e.route_name == "patient-reads"
    assert len(e.warnings) == 1 and e.warnings[0].startswith("warning: CreatePatient is write")
    # The unsafe conditions, sorted: reads also retry `reset` now.
    assert "retries on reset,unavailable:" in e.warnings[0]


def test_a_read_on_a_route_without_unavailable_is_warned(policy_copy: Path) -> None:
    edit(
        policy_copy,
        VS,
        "        attempts: 2\n        perTryTimeout: 1500ms\n        retryOn: unavailable,",
        "        attempts: 2\n        perTryTimeout: 1500ms\n        retryOn: ",
        count=2,
    )
    e = explain(policy_copy, "patient", "GetPatient")
    assert e.route_name == "patient-reads"
    assert e.warnings and "does not retry on unavailable" in e.warnings[0]
    assert "warning: GetPatient is read-class" in format(e)


def test_conditions_it_cannot_judge_are_named(policy_copy: Path) -> None:
    edit(
        policy_copy,
        VS,
        "    - name: patient-reads\n      match:\n        - uri:",
        "    - name: patient-reads\n      match:\n        - port: 50051\n          uri:",
    )
    e = explain(policy_copy, "patient", "GetPatient")
    assert e.route_name == "patient-reads" and e.ignored == ("port",)
    assert "ignored     port: not evaluated here" in format(e)


def test_under_a_fault_the_routes_timeout_and_retries_are_shown_as_not_applied() -> None:
    # Istio: "timeouts or retries will not be enabled when faults are enabled on the client side".
    for service, method, drill in (
        ("patient", "GetPatient", "patient/unavailable"),
        ("scheduling", "ListSlots", "scheduling/slow"),
    ):
        e = explain(REPOSITORY, service, method, drill=drill)
        assert e.timeout == "5s" and e.retries is not None  # the configured values are kept
        lines = format(e).splitlines()
        timeout = next(line for line in lines if line.startswith("timeout"))
        retries = next(line for line in lines if line.startswith("retries"))
        for line in (timeout, retries):
            assert "not applied (fault injection disables them on this route)" in line
        assert timeout.endswith("configured: 5s")
        assert "configured: 2 retries, perTryTimeout 1500ms" in retries
        assert any("callers' own deadlines and circuit breakers" in line for line in lines)
    plain = format(explain(REPOSITORY, "patient", "GetPatient"))
    assert "not applied" not in plain and "timeout     5s" in plain


def test_the_drill_comments_no_longer_promise_mesh_retries() -> None:
    for drill in ("patient/unavailable", "scheduling/slow"):
        lines = (REPOSITORY / f"mesh/istio/drills/{drill}.yaml").read_text(encoding="utf-8")
        comment = " ".join(line.lstrip("# ") for line in lines.splitlines() if line.startswith("#"))
        assert "turns off the route's timeout and retries" in comment
        assert "own deadline" in comment and "circuit breaker" in comment
        assert "cut and retried" not in comment


GATEWAY_DENIED = (
    "authorization  denied (403 PERMISSION_DENIED at the gateway): no rule of "
    "AuthorizationPolicy his/mobile-gateway allows it"
)


@pytest.mark.parametrize(
    ("service", "method", "headers", "rule"),
    [
        ("patient", "ListResearchPatients", [], None),  # internal rpc: never from outside
        ("patient", "ListResearchPatients", ["authorization=Bearer x"], None),
        ("patient", "GetPatient", [], None),  # user-facing, but no token
        ("patient", "GetPatient", ["authorization=Bearer x"], 2),  # rules[2]
        ("iam", "IssueToken", [], 1),  # login needs no token
    ],
)
def test_through_the_gateway_its_authorization_policy_decides(
    service: str,
    method: str,
    headers: list[str],
    rule: int | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    e = explain(REPOSITORY, service, method, parse_headers(headers), gateway=True)
    assert e.authorization is not None
    assert e.authorization.allowed == (rule is not None)
    argv = ["mesh", "explain", service, method, "--gateway", "--root", str(REPOSITORY)]
    for header in headers:
        argv += ["-H", header]
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr().out
    if rule is None:
        assert done.value.code == 1
        assert GATEWAY_DENIED in out
        assert "route       not reached (the gateway refuses the call first)" in out
        assert "timeout" not in out
    else:
        assert done.value.code == 0
        assert (
            f"authorization  allowed by rules[{rule}] of AuthorizationPolicy his/mobile-gateway"
            in out
        )
        assert "mesh/istio/gateway/authorization.yaml" in out


def test_inside_the_mesh_the_gateway_policy_is_not_consulted() -> None:
    e = explain(REPOSITORY, "patient", "ListResearchPatients")
    assert e.authorization is None and "authorization" not in format(e)


def test_a_path_added_to_the_gateway_policy_is_allowed(policy_copy: Path) -> None:
    edit(
        policy_copy,
        "mesh/istio/gateway/authorization.yaml",
        "              - /his.patient.v1.PatientService/GetPatient\n",
        "              - /his.patient.v1.PatientService/GetPatient\n"
        "              - /his.patient.v1.PatientService/ListResearch*\n",
    )
    e = explain(
        policy_copy, "patient", "ListResearchPatients", {"authorization": "x"}, gateway=True
    )
    assert e.authorization is not None and e.authorization.allowed
    assert e.authorization.rule == 2
    # Without a token the JWT rule's requestPrincipals do not hold.
    e = explain(policy_copy, "patient", "ListResearchPatients", gateway=True)
    assert e.authorization is not None and not e.authorization.allowed


def test_a_deny_policy_on_the_gateway_wins(policy_copy: Path) -> None:
    path = policy_copy / "mesh/istio/gateway/authorization.yaml"
    path.write_text(
        path.read_text(encoding="utf-8")
        + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        "  name: no-merges\n  namespace: his\nspec:\n  selector:\n    matchLabels:\n"
        "      istio: mobile-gateway\n  action: DENY\n  rules:\n    - to:\n"
        "        - operation:\n            paths: ['*/MergePatients']\n",
        encoding="utf-8",
    )
    e = explain(policy_copy, "patient", "MergePatients", {"authorization": "x"}, gateway=True)
    assert e.authorization is not None and not e.authorization.allowed
    assert "rules[0] of AuthorizationPolicy his/no-merges denies it" in format(e)


AUTHZ = "mesh/istio/gateway/authorization.yaml"


def add_policy(root: Path, name: str, namespace: str, spec: dict[str, Any]) -> None:
    """Append one AuthorizationPolicy to the gateway's authorization file of the copy."""
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    path = root / AUTHZ
    path.write_text(
        path.read_text(encoding="utf-8") + "---\n" + yaml.safe_dump(policy), encoding="utf-8"
    )


NO_MERGES = {"rules": [{"to": [{"operation": {"paths": ["*/MergePatients"]}}]}]}


def merge(root: Path) -> str:
    """The report for a MergePatients call with a token through the gateway (allowed as is)."""
    return format(explain(root, "patient", "MergePatients", {"authorization": "x"}, gateway=True))


def test_a_policy_may_select_the_gateway_pods_by_a_label_of_their_deployment(
    policy_copy: Path,
) -> None:
    # The Gateway selects `istio: mobile-gateway`; the pods (the Deployment in
    # deploy/kustomize/components/istio) also carry `app: mobile-gateway`.
    for app in ("patient", "mobile-gateway"):
        spec = {"selector": {"matchLabels": {"app": app}}, "action": "DENY"}
        add_policy(policy_copy, f"{app}-no-merges", "his", {**spec, **NO_MERGES})
    report = merge(policy_copy)
    # `app: patient` selects other pods; `app: mobile-gateway` the gateway's.
    assert "rules[0] of AuthorizationPolicy his/mobile-gateway-no-merges denies it" in report


def test_a_root_namespace_policy_with_a_selector_applies_in_every_namespace(
    policy_copy: Path,
) -> None:
    spec = {"selector": {"matchLabels": {"istio": "mobile-gateway"}}, "action": "DENY"}
    add_policy(policy_copy, "elsewhere", "audit", {**spec, **NO_MERGES})
    assert "allowed by rules[2]" in merge(policy_copy)  # another namespace: not the gateway's
    add_policy(policy_copy, "mesh-wide", "istio-system", {**spec, **NO_MERGES})
    assert "rules[0] of AuthorizationPolicy istio-system/mesh-wide denies it" in merge(policy_copy)


def test_a_custom_policy_is_named_as_not_evaluated(policy_copy: Path) -> None:
    add_policy(
        policy_copy,
        "ext-authz",
        "his",
        {
            "selector": {"matchLabels": {"istio": "mobile-gateway"}},
            "action": "CUSTOM",
            "provider": {"name": "opa"},
            "rules": [{"to": [{"operation": {"paths": ["/his.*"]}}]}],
        },
    )
    e = explain(policy_copy, "patient", "GetPatient", {"authorization": "x"}, gateway=True)
    assert e.authorization is not None and e.authorization.allowed
    assert e.authorization.notes == (
        f"AuthorizationPolicy his/ext-authz (CUSTOM, {AUTHZ}) not evaluated "
        "(an external authorizer decides first)",
    )
    assert "note        AuthorizationPolicy his/ext-authz (CUSTOM" in format(e)
    # The real policy has no CUSTOM one.
    real = explain(REPOSITORY, "patient", "GetPatient", {"authorization": "x"}, gateway=True)
    assert real.authorization is not None and real.authorization.notes == ()


def test_a_call_from_outside_has_no_peer_namespace(policy_copy: Path) -> None:
    gateway = {"selector": {"matchLabels": {"istio": "mobile-gateway"}}}
    # ALLOW from namespace his: a call from outside has no mTLS peer, so it never matches.
    research = {"to": [{"operation": {"paths": ["*/ListResearchPatients"]}}]}
    from_his = {"from": [{"source": {"namespaces": ["his"]}}], **research}
    add_policy(policy_copy, "from-his", "his", {**gateway, "rules": [from_his]})
    e = explain(policy_copy, "patient", "ListResearchPatients", gateway=True)
    assert e.authorization is not None and not e.authorization.allowed
    assert e.authorization.ignored == ()  # evaluated, not taken as holding
    # DENY unless from namespace his: notNamespaces always holds for it.
    unless = {"from": [{"source": {"notNamespaces": ["his"]}}], **NO_MERGES["rules"][0]}
    add_policy(policy_copy, "only-his", "his", {**gateway, "action": "DENY", "rules": [unless]})
    e = explain(policy_copy, "patient", "MergePatients", {"authorization": "x"}, gateway=True)
    assert e.authorization is not None and not e.authorization.allowed
    assert e.authorization.policy == "AuthorizationPolicy his/only-his"
    assert e.authorization.ignored == ()
