"""Running Debian's Prometheus tools (promtool, amtool) from tests, failing clearly without them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

_PACKAGE = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def run(tool: str, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `tool` with `args`; the test fails (not skips) when the tool is not installed."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"{tool} is not installed: apt-get install -y --no-install-recommends "
            f"{_PACKAGE[tool]} (.ci/run installs it; the SLO alerts are tested with it)"
        )
    return subprocess.run(
        [path, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
