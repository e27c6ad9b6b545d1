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


def edit(root: Path, file: str, old: str, new: str, count: int = 1) -> None:
    """Replace `old` (which must be there) in one file of a policy copy: one seeded mistake."""
    path = root / file
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {file}: the test no longer seeds its mistake"
    path.write_text(text.replace(old, new, count), encoding="utf-8")
