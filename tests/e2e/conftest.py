"""Fixtures of the end-to-end tests, which run `his up` on the fixed local ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from his.base.catalog import implemented
from his.gateway.config import GatewayConfig


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh HIS_DATA_DIR; the fixed local ports must be free (is another `his up` running?)."""
    gateway = GatewayConfig()
    ports = [p for e in implemented() for p in (e.port, e.metrics_port, e.http_port) if p]
    for port in (*ports, gateway.port, gateway.admin_port, gateway.app_port):
        # The gateway's ports are on 127.0.0.1 only; the services' on every address.
        for family, host in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                if sock.connect_ex((host, port)) == 0:
                    pytest.fail(f"port {port} is in use: stop the other `his up` first")
    yield tmp_path / "his"
