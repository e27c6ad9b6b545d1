"""`make buf-breaking` compares the protos with those last landed; a breaking change fails it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
BUF = REPOSITORY / ".tools/node_modules/.bin/buf"

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf is not installed (make install)")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _make(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "--no-print-directory", f"BUF={BUF}", "buf-breaking", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clean repository on main holding this Makefile, buf.yaml and protos: as CI sees it."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("Makefile", "buf.yaml"):
        shutil.copy(REPOSITORY / name, root / name)
    shutil.copytree(REPOSITORY / "protos", root / "protos")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "landed")
    return root


def _land(root: Path, message: str) -> None:
    """Land the working tree's change on main as a merge of a branch, the way main is updated."""
    _git(root, "checkout", "-q", "-b", "change")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", message)
    _git(root, "checkout", "-q", "main")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "merge", "-q", "--no-ff", "change")


def test_a_removed_field_landed_on_main_fails_the_check(clone: Path) -> None:
    proto = clone / "protos/his/billing/v1/billing_service.proto"
    text = proto.read_text(encoding="utf-8")
    assert "  string request_id = 2;\n" in text
    proto.write_text(text.replace("  string request_id = 2;\n", "", 1), encoding="utf-8")
    _land(clone, "remove a field")

    result = _make(clone)

    assert result.returncode != 0
    assert 'with name "request_id"' in result.stdout + result.stderr
    assert "was deleted" in result.stdout + result.stderr


def test_a_compatible_change_landed_on_main_passes(clone: Path) -> None:
    proto = clone / "protos/his/billing/v1/billing_service.proto"
    proto.write_text(proto.read_text(encoding="utf-8") + "\n// A comment.\n", encoding="utf-8")
    _land(clone, "a comment")

    result = _make(clone)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no breaking change against HEAD^1" in result.stdout


def test_a_breaking_change_on_a_branch_fails_against_the_merge_base(clone: Path) -> None:
    proto = clone / "protos/his/billing/v1/billing_service.proto"
    proto.write_text(
        proto.read_text(encoding="utf-8").replace("  string request_id = 2;\n", "", 1),
        encoding="utf-8",
    )
    _git(clone, "checkout", "-q", "-b", "feature")
    _git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "remove")

    assert _make(clone).returncode != 0
