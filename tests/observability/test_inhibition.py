"""Alertmanager's inhibition, as Alertmanager applies it, over the alerts the rules can raise:
a page silences only the lower alerts of its own service and SLO, never anyone else's."""

from __future__ import annotations

import re
from itertools import product
from typing import Any

import yaml

from tests.observability.files import ALERTMANAGER, alerts

_MATCHER = re.compile(r'^(\w+)(=~|!~|!=|=)"(.*)"$')


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    found = _MATCHER.match(matcher)
    assert found is not None, matcher
    name, op, value = found.groups()
    actual = labels.get(name, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    hit = re.fullmatch(value, actual) is not None
    return hit if op == "=~" else not hit


def _inhibits(rule: dict[str, Any], source: dict[str, str], target: dict[str, str]) -> bool:
    """Alertmanager: every source and target matcher holds, and each `equal` label has the same
    value on both sides (a label absent on both sides counts as the same, the empty value)."""
    return (
        all(_matches(m, source) for m in rule.get("source_matchers", []))
        and all(_matches(m, target) for m in rule.get("target_matchers", []))
        and all(source.get(name, "") == target.get(name, "") for name in rule.get("equal", []))
    )


def _raised() -> list[dict[str, str]]:
    """Each alert's labels as it fires: its own, the SLO alerts once per service (their series
    carry grpc_service), the others as written (per app or pool, no grpc_service)."""
    fired = []
    for alert in alerts():
        labels = {"alertname": alert["alert"], **alert.get("labels", {})}
        if "slo" in labels:
            fired += [
                {**labels, "grpc_service": f"his.{name}.v1.Service"} for name in ("patient", "iam")
            ]
        else:
            fired.append(labels)
    return fired


def test_a_page_silences_only_its_own_services_lower_alerts_of_the_same_slo() -> None:
    rules = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))["inhibit_rules"]
    raised = _raised()
    silenced = [
        (source["alertname"], target["alertname"], target.get("grpc_service", ""))
        for rule, source, target in product(rules, raised, raised)
        if source is not target and _inhibits(rule, source, target)
    ]
    assert silenced, "no inhibition at all: the rules below would prove nothing"
    for source_name, target_name, _ in silenced:
        source = next(a for a in raised if a["alertname"] == source_name)
        target = next(a for a in raised if a["alertname"] == target_name)
        # Only an SLO alert silences, only an SLO alert of the same SLO is silenced.
        assert "slo" in source and source.get("slo") == target.get("slo"), (source, target)
    for rule, source, target in product(rules, raised, raised):
        if _inhibits(rule, source, target):
            assert source["grpc_service"] == target["grpc_service"], (source, target)
