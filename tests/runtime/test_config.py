"""Configuration comes from HIS_* variables with safe defaults and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from his.base.env import ConfigError
from his.runtime.config import load


def test_defaults_work_locally_with_an_empty_environment() -> None:
    config = load("patient", {})
    assert config.server.port == 50051
    assert config.server.metrics_port == 9051
    assert config.server.host == "[::]"
    assert config.database.url is None
    assert config.database.data_dir == Path(".his")
    assert config.telemetry.otlp_endpoint is None


def test_environment_overrides_each_setting() -> None:
    config = load(
        "patient",
        {
            "HIS_PORT": "6000",
            "HIS_METRICS_PORT": "-1",
            "HIS_DATABASE_URL": "postgresql://u:p@db:5432/his",
            "HIS_GRACE_S": "2.5",
            "HIS_LOG_FORMAT": "json",
            "HIS_MIGRATE": "0",
        },
    )
    assert config.server.port == 6000
    assert config.server.metrics_port == -1
    assert config.server.grace_s == 2.5
    assert config.server.migrate is False
    assert config.database.url == "postgresql://u:p@db:5432/his"
    assert config.telemetry.log_format == "json"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("HIS_PORT", "fifty", "HIS_PORT must be an integer"),
        ("HIS_PORT", "-5", "HIS_PORT must be >= 0"),
        ("HIS_GRACE_S", "-1", "HIS_GRACE_S must not be negative"),
        ("HIS_LOG_FORMAT", "xml", "HIS_LOG_FORMAT must be one of"),
        ("HIS_DB_POOL_SIZE", "0", "HIS_DB_POOL_SIZE must be >= 1"),
    ],
)
def test_bad_values_name_the_variable(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load("patient", {key: value})


def test_unknown_service_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known services: patient, scheduling"):
        load("radiology", {})
