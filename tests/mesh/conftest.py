"""Shared fixtures of the mesh tool tests: the repository, a disposable copy of its policy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from his.mesh.render import KubectlMissing, kubectl

REPOSITORY = Path(__file__).resolve().parents[2]


def _kubectl_missing() -> str:
    try:
        kubectl()
    except KubectlMissing as missing:
        return str(missing)
    return ""


KUBECTL_MISSING = _kubectl_missing()
# Rendering needs kubectl; say so plainly instead of failing on a machine without it.
needs_kubectl = pytest.mark.skipif(
    bool(KUBECTL_MISSING), reason=f"skipped: {KUBECTL_MISSING} (his mesh check renders with it)"
)


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    """A copy of mesh/ and deploy/ to seed mistakes into; the repository stays untouched."""
    for tree in ("mesh", "deploy"):
        shutil.copytree(REPOSITORY / tree, tmp_path / tree)
    return tmp_path
