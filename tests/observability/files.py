"""Where the alerting and dashboard files live, and the PromQL each of them holds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPOSITORY / "deploy/kustomize/components/observability"
RULES = OBSERVABILITY / "prometheus/his-slo.rules.yaml"
RULES_TEST = OBSERVABILITY / "prometheus/his-slo.test.yaml"
ALERTMANAGER = OBSERVABILITY / "alertmanager/alertmanager.yml"
DASHBOARDS = OBSERVABILITY / "dashboards"
FLAGGER_TEMPLATE = REPOSITORY / "mesh/istio/flagger/metric-template.yaml"


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it is written."""

    where: str
    expr: str


def rules() -> list[dict[str, Any]]:
    """Every rule of the rules file (recording and alerting)."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    """The alerting rules."""
    return [rule for rule in rules() if "alert" in rule]


def flagger_query(namespace: str = "his", target: str = "patient", interval: str = "1m") -> str:
    """The Flagger template's query as Flagger sends it for one canary (placeholders filled)."""
    template = yaml.safe_load(FLAGGER_TEMPLATE.read_text(encoding="utf-8"))
    query: str = template["spec"]["query"]
    for name, value in (("namespace", namespace), ("target", target), ("interval", interval)):
        query = query.replace("{{ " + name + " }}", value)
    return query


def dashboard_queries() -> list[Query]:
    """Every panel target of the committed dashboards, Grafana's `$__rate_interval` as 5m."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets") or ():
                expr = target["expr"].replace("$__rate_interval", "5m")
                found.append(Query(f"{path.name}: {panel['title']}", expr))
    return found


def all_queries() -> list[Query]:
    """The rules', the Flagger template's and the dashboards' PromQL."""
    of_rules = [
        Query(f"{RULES.name}: {rule.get('record') or rule.get('alert')}", rule["expr"])
        for rule in rules()
    ]
    return [*of_rules, Query(FLAGGER_TEMPLATE.name, flagger_query()), *dashboard_queries()]
