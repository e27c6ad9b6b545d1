"""Which metrics and labels a PromQL expression names, read with a real PromQL parser
(promql-parser: Prometheus's grammar), and the check of those names against what is exported."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import promql_parser

# Labels Prometheus adds to every scraped series: `job` and `instance` always, `namespace`, `pod`
# and the pod's own labels (`app`) through the kubernetes-pods scrape job of Istio's Prometheus
# addon (a labelmap of __meta_kubernetes_pod_label_*). The rules and dashboards tell services
# apart by `app` where a metric carries no grpc_service.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "app"})

# Istio's standard metrics, served by every sidecar (not by our services, so a scrape of the
# services cannot show them): https://istio.io/latest/docs/reference/config/metrics/ (labels of
# the HTTP/gRPC metrics). The Flagger template counts gRPC statuses with them.
ISTIO_LABELS = frozenset(
    {
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "source_canonical_service",
        "source_canonical_revision",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_service_name",
        "destination_service_namespace",
        "destination_cluster",
        "destination_canonical_service",
        "destination_canonical_revision",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    }
)
ISTIO_METRICS: Mapping[str, frozenset[str]] = {
    "istio_requests_total": ISTIO_LABELS,
    "istio_request_duration_milliseconds_bucket": ISTIO_LABELS | {"le"},
    "istio_request_duration_milliseconds_count": ISTIO_LABELS,
}

# Series Prometheus makes itself for every target it scrapes (not exported by anyone).
SCRAPE_METRICS: Mapping[str, frozenset[str]] = {"up": TARGET_LABELS}

_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Names:
    """The metric names an expression selects, with the labels each selector matches on, and
    the labels it groups or matches by (by, without, on, ignoring, group_left/right)."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def names_in(expr: str) -> Names:
    """Parse `expr` and collect its names (raises ValueError when it is not PromQL)."""
    found = Names()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {matcher.name for matcher in node.matchers.matchers}
            for alternative in node.matchers.or_matchers:
                labels |= {matcher.name for matcher in alternative}
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), ""
            )
            found.selectors.append((name, labels - {"__name__"}))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            found.grouping |= set(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                found.grouping |= set(node.modifier.matching.labels)
            found.grouping |= set(node.modifier.group_labels or ())

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def recorded_labels(expr: str) -> set[str]:
    """The labels a recording rule's series carry: what its expression groups by, else the
    labels its selectors match on."""
    names = names_in(expr)
    return names.grouping or set().union(*(labels for _, labels in names.selectors))


def problems(
    where: str,
    expr: str,
    exported: Mapping[str, set[str]],
    *,
    templates: Iterable[str] = (),
) -> list[str]:
    """What `expr` (written at `where`) names that `exported` (series name to its labels) has
    not; `templates` are texts that refer to the result's labels ({{x}} legends, $labels.x)."""
    names = names_in(expr)
    found: list[str] = []
    available = set(TARGET_LABELS)
    for name, labels in names.selectors:
        if name not in exported:
            found.append(f"{where}: names metric {name!r}, which nothing exports")
            continue
        available |= exported[name]
        for label in sorted(labels - exported[name] - TARGET_LABELS):
            found.append(f"{where}: {name} has no label {label!r}")
    for label in sorted(names.grouping - available):
        found.append(f"{where}: groups or matches by {label!r}, which no series here carries")
    for text in templates:
        used = set(_LEGEND_LABEL.findall(text)) | set(_TEMPLATE_LABEL.findall(text))
        for label in sorted(used - available - names.grouping):
            found.append(f"{where}: {text!r} shows label {label!r}, which no series here carries")
    return found
