"""What the web client's end-to-end tests need beside `his up`: the npm package, its built app,
Node, Debian's chromium and a place for screenshots. Each is checked with a message that says how
to get it: a missing piece fails the test, it never skips it (`.ci/run` installs all of them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "clients" / "web"
APP_DIST = WEB / "app" / "dist"
CHROMIUM = Path("/usr/bin/chromium")
# The flags of a quiet, headless, offline browser: no sandbox (CI runs as root), no GPU, no QUIC,
# nothing fetched from the browser vendor's servers.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts_dir() -> Path:
    """Where failure screenshots go: `test-artifacts/web/` in the repository, or
    `$HIS_TEST_ARTIFACTS/web/`."""
    base = Path(os.environ.get("HIS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    path = base / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_node_modules() -> str:
    """The path of `node`, once the package's dependencies are installed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: apt-get install -y nodejs npm (.ci/run does)")
    if not (WEB / "node_modules" / ".installed").exists():
        pytest.fail(f"{WEB}/node_modules is missing: run `make web` (npm ci in clients/web)")
    return node


def require_built_app() -> None:
    """The app's build exists and is newer than every source it is built from."""
    index = APP_DIST / "index.html"
    if not index.exists():
        pytest.fail(f"{index} is missing: run `make web`")
    built = index.stat().st_mtime
    sources = [
        path
        for folder in (WEB / "src", WEB / "app")
        for path in folder.rglob("*")
        if path.is_file() and APP_DIST not in path.parents
    ]
    stale = [str(path.relative_to(ROOT)) for path in sources if path.stat().st_mtime > built]
    if stale:
        pytest.fail(f"the built app is older than {stale[:3]}: run `make web`")


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    return CHROMIUM
