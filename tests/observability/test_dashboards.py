"""The committed Grafana dashboards are what his.observability.dashboards builds, one per
service, each with its SLO, RED, saturation, breaker and (outside audit) outbox and audit-lag
panels, and Kustomize ships every one of them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from his.base.catalog import CATALOG
from his.observability.dashboards import main, rendered
from tests.observability.files import DASHBOARDS, OBSERVABILITY


def test_the_committed_dashboards_are_what_the_code_builds() -> None:
    committed = {path.name: path.read_text(encoding="utf-8") for path in DASHBOARDS.glob("*.json")}
    assert committed.keys() == rendered().keys()
    stale = [name for name, text in rendered().items() if committed[name] != text]
    assert stale == [], "dashboards are stale: run `make dashboards` and commit"


def test_make_dashboards_writes_one_file_per_service(tmp_path: Path) -> None:
    out = tmp_path / "boards"
    assert main(["--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{e.name}.json" for e in CATALOG)


def test_each_dashboard_has_the_rows_an_on_call_needs() -> None:
    for entry in CATALOG:
        board = json.loads((DASHBOARDS / f"{entry.name}.json").read_text(encoding="utf-8"))
        rows = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
        expected = [
            "SLO (99.9 % available, P99 < 200 ms)",
            "Rate, errors, duration",
            "Saturation",
            "Calls to other services (client breakers)",
        ]
        if entry.name != "audit":  # audit keeps no outbox: it receives the others' events
            expected.append("Outbox and audit relay")
        assert rows == expected, entry.name
        assert board["uid"] == f"his-{entry.name}"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(set(ids)) == len(ids), entry.name
        exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets") or ())
        assert f'grpc_service="{entry.grpc_service}"' in exprs
        assert f'app="{entry.name}"' in exprs


def test_kustomize_ships_every_dashboard() -> None:
    kustomization = yaml.safe_load((OBSERVABILITY / "kustomization.yaml").read_text())
    generators = {g["name"]: g for g in kustomization["configMapGenerator"]}
    listed = sorted(generators["his-grafana-dashboards"]["files"])
    assert listed == sorted(f"dashboards/{p.name}" for p in DASHBOARDS.glob("*.json"))
    assert generators["his-grafana-dashboards"]["options"]["labels"] == {"grafana_dashboard": "1"}
    assert generators["his-prometheus-rules"]["files"] == ["prometheus/his-slo.rules.yaml"]
