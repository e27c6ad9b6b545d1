"""`his services` and `his gateway config`: where the gateway is, and what Envoy is given."""

from __future__ import annotations

import json

import pytest

from his.cli import main


def _run(*argv: str) -> int:
    """The exit code of `his <argv>`."""
    with pytest.raises(SystemExit) as ended:
        main(list(argv))
    return int(ended.value.code or 0)


def test_services_lists_iams_http_port_and_the_gateway(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HIS_GATEWAY_PORT", raising=False)
    monkeypatch.delenv("HIS_GATEWAY", raising=False)

    code = _run("services")

    printed = capsys.readouterr().out
    assert code == 0
    iam = next(line for line in printed.splitlines() if line.startswith("iam "))
    assert iam.split()[:4] == ["iam", "50058", "9058", "8058"]
    assert "gateway      http://localhost:8080 " in printed
    assert "admin 127.0.0.1:9901" in printed


def test_gateway_config_follows_the_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIS_GATEWAY_PORT", "18080")
    monkeypatch.setenv("HIS_GATEWAY_ORIGINS", "http://localhost:5173")

    code = _run("gateway", "config")

    generated = json.loads(capsys.readouterr().out)
    assert code == 0
    listener = generated["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18080}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    cors = manager["route_config"]["virtual_hosts"][0]["typed_per_filter_config"][
        "envoy.filters.http.cors"
    ]
    assert {"exact": "http://localhost:5173"} in cors["allow_origin_string_match"]


def test_gateway_config_check_runs_envoy_validate(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run("gateway", "config", "--check")

    assert code == 0
    assert "envoy accepts" in capsys.readouterr().out


def test_a_bad_origin_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIS_GATEWAY_ORIGINS", "localhost:5173/")

    with pytest.raises(ValueError, match="HIS_GATEWAY_ORIGINS"):
        main(["gateway", "config"])
