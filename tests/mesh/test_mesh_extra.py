"""The mesh tools' dependencies are an extra (`his-mesh[mesh]`): the services never import them,
and without them `his mesh`/`his canary` say which extra to install instead of a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from his.cli import MESH_EXTRA_MODULES
from tests.mesh.conftest import REPOSITORY

# Importing any of these raises ModuleNotFoundError, as in the service image.
_BLOCK = f"import sys\nfor name in {MESH_EXTRA_MODULES!r}:\n    sys.modules[name] = None\n"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPOSITORY,
    )


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["mesh", "check"], "his mesh check"),
        (["mesh", "explain", "patient", "GetPatient"], "his mesh explain"),
        (["canary", "patient", "status"], "his canary"),
    ],
)
def test_without_the_extra_the_mesh_commands_name_it(argv: list[str], command: str) -> None:
    done = _python(f"from his.cli import main\nmain({argv!r})")
    assert done.returncode == 2, done.stderr
    assert f"{command}: yaml is not installed" in done.stderr
    assert "install the mesh extra: pip install 'his-mesh[mesh]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_services_run_without_the_mesh_extra() -> None:
    code = (
        "import importlib\n"
        "import his.cli, his.runtime.server\n"
        "from his.base.catalog import CATALOG\n"
        "for entry in CATALOG:\n"
        "    if entry.implemented:\n"
        "        importlib.import_module(entry.module + '.spec')\n"
        "print('ok')\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
