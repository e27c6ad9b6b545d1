"""Shared fixtures of the mesh tool tests: the repository, a disposable copy of its policy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from his.mesh import render as render_module
from his.mesh.render import KubectlMissing, kubectl
from tests.mesh.rendering import Renderer

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


@pytest.fixture
def exported_copy(tmp_path: Path) -> Path:
    """The repository as git would hand it out (`git archive`), with nothing beside it: the
    tracked files as they are in the working tree (`git stash create`, else HEAD), no .venv, no
    untracked file, no folder of this machine. A file the change forgot to `git add` is missing
    here, as it would be in a fresh clone."""
    git, tar = shutil.which("git"), shutil.which("tar")
    if git is None or tar is None or not (REPOSITORY / ".git").exists():
        pytest.skip("skipped: not a git checkout with git and tar (the test exports it with them)")

    def run(*args: str, stdin: bytes | None = None) -> bytes:
        done = subprocess.run(args, cwd=REPOSITORY, input=stdin, capture_output=True, check=True)
        return done.stdout

    tree = run(git, "stash", "create").decode().strip() or "HEAD"
    copy = tmp_path / "export"
    copy.mkdir()
    run(tar, "-x", "-C", str(copy), stdin=run(git, "archive", tree))
    return copy


def his_in(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`his <args>` run inside `copy` with the copy's own code (its services/ and clients/python
    first on the path, ahead of the installed package) and the copy as working directory."""
    path = os.pathsep.join(str(copy / tree) for tree in ("services", "clients/python"))
    return subprocess.run(
        [sys.executable, "-m", "his.cli", *args],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="session", autouse=True)
def _render_only_when_needed() -> Iterator[Renderer]:
    """Every render of the mesh tests goes through tests/mesh/rendering.py: the repository's
    trees are rendered by kubectl once, a copy with a plain resource edited is spliced, the rest
    rendered by kubectl and cached by content (HIS_MESH_TEST_RENDER=kubectl turns it off)."""
    original = render_module.render
    renderer = Renderer(REPOSITORY, original)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in list(sys.modules.items()):
            if name.startswith(("his.mesh.", "tests.mesh.")) and (
                getattr(module, "render", None) is original
            ):
                patch.setattr(module, "render", renderer)
        yield renderer
    stats = os.environ.get("HIS_MESH_TEST_RENDER_STATS")
    if stats:  # a file to write how each render was made (kubectl, spliced, ...)
        Path(stats).write_text(json.dumps(renderer.counts) + "\n", encoding="utf-8")
