"""The SLO rules, the Flagger template and the Alertmanager routes, checked and unit-tested with
Debian's Prometheus tools (promtool, amtool) as CI installs them (.ci/run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.files import (
    ALERTMANAGER,
    RULES,
    RULES_TEST,
    alerts,
    flagger_query,
)
from tests.observability.tools import run

LEVELS = {"1": "oncall-page,duty-manager", "2": "oncall-notify", "3": "service-desk-ticket"}
SEVERITY_OF_LEVEL = {"1": "page", "2": "page", "3": "ticket"}


def test_the_rules_pass_promtool_check() -> None:
    checked = run("promtool", "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.timeout(300)
def test_the_slo_alerts_fire_and_stay_quiet_in_the_promtool_unit_tests() -> None:
    # healthy, zero errors, all errors, fast, medium and slow burn, latency, delivery alerts.
    tested = run("promtool", "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_both_firing_and_quiet() -> None:
    cases = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", ()):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts never shown firing in his-slo.test.yaml"
    assert names - quiet == set(), "alerts never shown quiet in his-slo.test.yaml"


def test_every_alert_carries_an_incident_level_and_its_severity() -> None:
    for rule in alerts():
        labels = rule["labels"]
        assert labels.get("level") in LEVELS, rule["alert"]
        assert labels["severity"] == SEVERITY_OF_LEVEL[labels["level"]], rule["alert"]


def _flagger_case(name: str, series: list[tuple[str, str]], expected: list[Any]) -> dict[str, Any]:
    return {
        "name": name,
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [
            {"expr": flagger_query(), "eval_time": "10m", "exp_samples": expected}
        ],
    }


def _istio(workload: str, status: str, code: str = "200", reporter: str = "destination") -> str:
    return (
        f'istio_requests_total{{reporter="{reporter}", destination_workload_namespace="his", '
        f'destination_workload="{workload}", grpc_response_status="{status}", '
        f'response_code="{code}"}}'
    )


def test_the_flagger_query_gives_100_for_a_canary_without_errors_and_0_for_all_errors(
    tmp_path: Path,
) -> None:
    # The canary under analysis is the Deployment `patient` (Flagger's {{ target }}); the
    # primary and the callers' sidecars (reporter="source") must not count.
    others = [
        (_istio("patient-primary", "14"), "0+100x20"),
        (_istio("patient", "14", reporter="source"), "0+100x20"),
    ]
    cases = [
        _flagger_case(
            "zero-error canary",
            [(_istio("patient", "0"), "0+600x20"), *others],
            [{"value": 100}],
        ),
        _flagger_case(
            "all-error canary",
            [(_istio("patient", "14"), "0+600x20"), *others],
            [{"value": 0}],
        ),
        _flagger_case(
            # 985 OK, 5 NOT_FOUND (the caller's mistake, not the canary's), 10 INTERNAL.
            "one percent failing",
            [
                (_istio("patient", "0"), "0+985x20"),
                (_istio("patient", "5"), "0+5x20"),
                (_istio("patient", "13"), "0+10x20"),
                *others,
            ],
            [{"value": 99}],
        ),
        _flagger_case(
            # Answered by the sidecar itself (no upstream), no gRPC status: a failure.
            "sidecar 503s",
            [(_istio("patient", "0"), "0+900x20"), (_istio("patient", "", "503"), "0+100x20")],
            [{"value": 90}],
        ),
        # No call at all: no value, which Flagger counts as a failed check (needs a load tester).
        _flagger_case("no traffic", others, []),
    ]
    test_file = tmp_path / "flagger.test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [], "tests": cases}), encoding="utf-8")
    tested = run("promtool", "test", "rules", test_file.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alertmanager_config_passes_amtool_check() -> None:
    checked = run("amtool", "check-config", ALERTMANAGER)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


@pytest.mark.parametrize(("level", "receivers"), sorted(LEVELS.items()))
def test_each_incident_level_routes_to_its_receivers(level: str, receivers: str) -> None:
    routed = run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receivers}",
        f"level={level}",
        "alertname=HisAvailabilityFastBurn",
        "grpc_service=his.patient.v1.PatientService",
    )
    assert routed.returncode == 0, routed.stdout + routed.stderr
    assert routed.stdout.strip() == receivers


def test_an_alert_without_a_level_still_reaches_the_on_call() -> None:
    routed = run(
        "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}", "alertname=Other"
    )
    assert routed.returncode == 0, routed.stderr
    assert routed.stdout.strip() == LEVELS["2"]


def test_every_alert_of_the_rules_routes_by_its_level() -> None:
    for rule in alerts():
        labels = [f"{key}={value}" for key, value in sorted(rule["labels"].items())]
        routed = run(
            "amtool",
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            f"alertname={rule['alert']}",
            *labels,
        )
        assert routed.stdout.strip() == LEVELS[rule["labels"]["level"]], rule["alert"]
