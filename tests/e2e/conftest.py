"""Fixtures of the end-to-end tests, which run `his up` on the fixed local ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from his.base.catalog import implemented


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh HIS_DATA_DIR; the fixed local ports must be free (is another `his up` running?)."""
    for entry in implemented():
        for port in (entry.port, entry.metrics_port):
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("::1", port)) == 0:
                    pytest.fail(f"port {port} is in use: stop the other `his up` first")
    yield tmp_path / "his"
