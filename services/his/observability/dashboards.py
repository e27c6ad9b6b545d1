"""One Grafana dashboard per service, built with grafana-foundation-sdk and written as JSON to
deploy/kustomize/components/observability/dashboards/ (`make dashboards`; `make test` fails when
the committed files differ from what this module builds).

Every query names only metrics the services export (his.runtime.metrics, relay, audit_trail and
his_client.resilience) or the recording rules of his-slo.rules.yaml; tests/observability/ holds
them to what running services really serve. Metrics with a `grpc_service` label are selected by
it; the others (in-flight calls, database, breakers, outbox) by the pod label `app`, which the
Prometheus scrape adds (every Deployment carries `app: <service>`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from his.base.catalog import CATALOG, ServiceEntry

FOLDER = Path("deploy/kustomize/components/observability/dashboards")

# Every panel queries the Prometheus chosen in the dashboard's `datasource` variable.
_DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
_RATE = "$__rate_interval"
# Server-side failures, as in the SLO rules and the Flagger template.
_FAILURE_CODES = "UNKNOWN|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|INTERNAL|UNAVAILABLE|DATA_LOSS"


def _sum_rate(by: str, metric: str, selector: str) -> str:
    """`sum by (by) (rate(metric{selector}[$__rate_interval]))`; `by` may be empty."""
    grouping = f"by ({by}) " if by else ""
    return f"sum {grouping}(rate({metric}{{{selector}}}[{_RATE}]))"


def _query(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)


def _graph(
    title: str, unit: str, *queries: tuple[str, str], description: str = ""
) -> timeseries.Panel:
    """A time series panel: `queries` are (PromQL, legend) pairs."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        # Set explicitly: panels without options render with Grafana's guesses.
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, expr: str, description: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .height(4)
        .span(6)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(_query(expr, title, "A"))
    )


def _slo_row(board: dashboard.Dashboard, grpc: str) -> dashboard.Dashboard:
    errors = f'grpc_service:his_availability_errors:ratio_rate1h{{grpc_service="{grpc}"}}'
    slow = f'grpc_service:his_latency_slow:ratio_rate1h{{grpc_service="{grpc}"}}'
    return (
        board.with_row(dashboard.Row("SLO (99.9 % available, P99 < 200 ms)"))
        .with_panel(
            _stat(
                "Availability, last hour",
                "percentunit",
                f"1 - {errors}",
                "Calls not failed on the server's side (budget: 0.1 % may fail).",
            )
        )
        .with_panel(
            _stat(
                "Availability burn rate, 1h",
                "none",
                f"{errors} / 0.001",
                "1 spends the 30-day budget exactly; 14.4 pages (level 1), 6 pages (level 2).",
            )
        )
        .with_panel(
            _stat(
                "Calls within 200 ms, last hour",
                "percentunit",
                f"1 - {slow}",
                "The P99 < 200 ms SLO: at least 99 % of calls within 200 ms.",
            )
        )
        .with_panel(
            _stat(
                "Latency burn rate, 1h",
                "none",
                f"{slow} / 0.01",
                "1 spends the 30-day budget exactly; 14.4 and 6 page (level 2).",
            )
        )
    )


def _red_row(board: dashboard.Dashboard, grpc: str) -> dashboard.Dashboard:
    selector = f'grpc_service="{grpc}"'
    buckets = "grpc_server_handling_seconds_bucket"
    return (
        board.with_row(dashboard.Row("Rate, errors, duration"))
        .with_panel(
            _graph(
                "Calls by method",
                "reqps",
                (
                    _sum_rate("grpc_method", "grpc_server_handled_total", selector),
                    "{{grpc_method}}",
                ),
            )
        )
        .with_panel(
            _graph(
                "Calls not OK, by code",
                "reqps",
                (
                    _sum_rate(
                        "grpc_code", "grpc_server_handled_total", f'{selector}, grpc_code!="OK"'
                    ),
                    "{{grpc_code}}",
                ),
                description=f"Failures count against the SLO only for {_FAILURE_CODES}.",
            )
        )
        .with_panel(
            _graph(
                "Duration P50 / P99",
                "s",
                (
                    f"histogram_quantile(0.5, {_sum_rate('le', buckets, selector)})",
                    "P50",
                ),
                (
                    f"histogram_quantile(0.99, {_sum_rate('le', buckets, selector)})",
                    "P99",
                ),
            )
        )
        .with_panel(
            _graph(
                "Duration P99 by method",
                "s",
                (
                    f"histogram_quantile(0.99, {_sum_rate('le, grpc_method', buckets, selector)})",
                    "{{grpc_method}}",
                ),
            )
        )
    )


def _saturation_row(board: dashboard.Dashboard, grpc: str, app: str) -> dashboard.Dashboard:
    return (
        board.with_row(dashboard.Row("Saturation"))
        .with_panel(
            _graph(
                "Calls in flight, per pod",
                "short",
                (f'sum by (pod) (grpc_server_in_flight{{app="{app}"}})', "{{pod}}"),
                description="Calls beyond HIS_MAX_CONCURRENT_RPCS are shed RESOURCE_EXHAUSTED.",
            )
        )
        .with_panel(
            _graph(
                "Load shed and database",
                "short",
                (
                    _sum_rate(
                        "",
                        "grpc_server_handled_total",
                        f'grpc_service="{grpc}", grpc_code="RESOURCE_EXHAUSTED"',
                    ),
                    "shed calls/s",
                ),
                (f'min(his_database_up{{app="{app}"}})', "database up (min over pods)"),
            )
        )
    )


def _breaker_row(board: dashboard.Dashboard, app: str) -> dashboard.Dashboard:
    return (
        board.with_row(dashboard.Row("Calls to other services (client breakers)"))
        .with_panel(
            _graph(
                "Breaker state by upstream",
                "short",
                (f'max by (upstream) (his_client_breaker_state{{app="{app}"}})', "{{upstream}}"),
                description="0 closed, 1 half-open (probing), 2 open (calls fail fast).",
            )
        )
        .with_panel(
            _graph(
                "Refused by an open breaker, retries",
                "reqps",
                (
                    _sum_rate("upstream", "his_client_breaker_rejections_total", f'app="{app}"'),
                    "refused {{upstream}}",
                ),
                (
                    _sum_rate("upstream", "his_client_retries_total", f'app="{app}"'),
                    "retried {{upstream}}",
                ),
            )
        )
    )


def _outbox_row(board: dashboard.Dashboard, app: str) -> dashboard.Dashboard:
    other = f'app="{app}", destination!="audit"'
    audit = f'app="{app}", destination="audit"'
    return (
        board.with_row(dashboard.Row("Outbox and audit relay"))
        .with_panel(
            _graph(
                "Outbox lag (oldest undelivered event)",
                "s",
                (
                    f"max by (destination) (his_outbox_oldest_age_seconds{{{other}}})",
                    "{{destination}}",
                ),
                description="Alert HisOutboxLagging (level 2) over 5 minutes.",
            )
        )
        .with_panel(
            _graph(
                "Audit relay lag",
                "s",
                (f"max(his_outbox_oldest_age_seconds{{{audit}}})", "oldest audit event"),
                (
                    _sum_rate("result", "his_audit_trail_events_total", f'app="{app}"'),
                    "recorded {{result}}/s",
                ),
                description="Alert HisAuditRelayLagging (level 2) over 2 minutes.",
            )
        )
        .with_panel(
            _graph(
                "Deliveries",
                "reqps",
                (
                    _sum_rate("destination", "his_outbox_delivered_total", f'app="{app}"'),
                    "delivered {{destination}}",
                ),
                (
                    _sum_rate("destination", "his_outbox_delivery_failures_total", f'app="{app}"'),
                    "failed {{destination}}",
                ),
            )
        )
        .with_panel(
            _graph(
                "Undelivered rows and dead letters",
                "short",
                (
                    f'max by (destination) (his_outbox_depth{{app="{app}"}})',
                    "{{destination}} waiting",
                ),
                (
                    f'max by (destination) (his_outbox_dead_letters{{app="{app}"}})',
                    "{{destination}} dead",
                ),
                description="Dead letters: refused for good, kept for an operator (level 3).",
            )
        )
    )


def build(entry: ServiceEntry) -> dashboard.Dashboard:
    """The dashboard of one service."""
    board = (
        dashboard.Dashboard(f"HIS {entry.name}")
        .uid(f"his-{entry.name}")
        .description(f"RED, saturation, breakers, outbox and audit lag of {entry.grpc_service}.")
        .tags(["his", entry.name])
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
    )
    board = _slo_row(board, entry.grpc_service)
    board = _red_row(board, entry.grpc_service)
    board = _saturation_row(board, entry.grpc_service, entry.name)
    board = _breaker_row(board, entry.name)
    # The audit service keeps no outbox: it is where the others' audit events go.
    if entry.name != "audit":
        board = _outbox_row(board, entry.name)
    return board


def render(entry: ServiceEntry) -> str:
    """The dashboard's JSON as committed (stable key order, one trailing newline)."""
    model = build(entry).build()
    # Distinct panel ids (the SDK leaves them 0): Grafana links and edits panels by id.
    for number, panel in enumerate(model.panels or (), start=1):
        panel.id_val = number
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name to JSON of every service's dashboard."""
    return {f"{entry.name}.json": render(entry) for entry in CATALOG}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards into a folder (default: the committed one)."""
    parser = argparse.ArgumentParser(prog="python -m his.observability.dashboards")
    parser.add_argument("--out", type=Path, default=FOLDER, help="folder to write into")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(CATALOG)} dashboards to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
