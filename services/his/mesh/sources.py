"""The YAML files of the repository, and which file each rendered object came from.

`kubectl kustomize` forgets where an object was written; findings must name the file an SRE
edits, so every manifest under mesh/ and deploy/ is indexed by kind, namespace and name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from his.mesh.findings import Writer

# The two trees the checks cover, relative to the repository root.
TREES = ("mesh/istio", "deploy/kustomize")

Manifest = dict[str, Any]
FieldPath = Sequence[int | str]  # `spec.http[3].fault` as ("spec", "http", 3, "fault")
# The kustomize patches that wrote the field at a path of a rendered object (none: its file).
WrittenBy = Callable[[FieldPath], Sequence[Writer]]


def _no_patch(path: FieldPath) -> Sequence[Writer]:
    return ()


@dataclass(frozen=True)
class Source:
    """One YAML document, the file it is written in (relative to the repository root), and
    which patches wrote which of its fields when it is a rendered object."""

    file: str
    manifest: Manifest
    written_by: WrittenBy = field(default=_no_patch, compare=False)


def key(manifest: Manifest) -> tuple[str, str, str]:
    """(kind, namespace, name) of a manifest."""
    metadata = manifest.get("metadata") or {}
    return (
        str(manifest.get("kind", "")),
        str(metadata.get("namespace") or ""),
        str(metadata.get("name") or ""),
    )


# libyaml's safe loader when PyYAML was built with it: the check parses every file and every
# rendered overlay, and the pure-Python loader is most of its time.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(text: str) -> list[Any]:
    """Every document of a YAML text, parsed safely. Raises yaml.YAMLError."""
    return list(yaml.load_all(text, Loader=_LOADER))


def documents(path: Path) -> Iterator[Manifest]:
    """The mapping documents of one YAML file (empty documents skipped)."""
    for document in load_all(path.read_text(encoding="utf-8")):
        if isinstance(document, dict):
            yield document


@dataclass
class Scan:
    """Every YAML file of the trees read once: where each object is written, and what does
    not parse (file → the parser's message)."""

    files: dict[tuple[str, str, str], str] = field(default_factory=dict)
    unparsable: dict[str, str] = field(default_factory=dict)


def scan(root: Path) -> Scan:
    """Read the trees: (kind, namespace, name) → file, and the files that do not parse.

    Kustomization files are read for their syntax but hold no object of their own. When the
    same object is written twice (a canary Deployment in two components), the first file wins.
    """
    found = Scan()
    for tree in TREES:
        for path in sorted((root / tree).rglob("*.yaml")):
            relative = path.relative_to(root).as_posix()
            try:
                manifests = [m for m in documents(path)]
            except yaml.YAMLError as error:
                found.unparsable[relative] = " ".join(str(error).split())
                continue
            if path.name in ("kustomization.yaml", "kustomization.yml"):
                continue
            for manifest in manifests:
                if "apiVersion" in manifest and "kind" in manifest:
                    found.files.setdefault(key(manifest), relative)
    return found


def file_of(files: dict[tuple[str, str, str], str], manifest: Manifest, fallback: str) -> str:
    """The file a rendered object was written in, or `fallback` (the overlay) when unknown."""
    return files.get(key(manifest), fallback)


class RootNotFound(Exception):
    """Neither the given path nor any parent of the working directory holds mesh/istio."""


def repository_root(given: str | Path | None = None) -> Path:
    """The repository whose mesh/ and deploy/ the tools work on.

    `--root` when given; else the working directory or the nearest parent holding
    mesh/istio/kustomization.yaml (SREs run the tools from anywhere inside their checkout).
    """
    marker = Path("mesh/istio/kustomization.yaml")
    if given is not None:
        root = Path(given).resolve()
        if not (root / marker).is_file():
            raise RootNotFound(f"{root} holds no {marker}")
        return root
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / marker).is_file():
            return candidate
    raise RootNotFound(
        f"no {marker} in {here} or its parents; run inside the repository or pass --root"
    )
