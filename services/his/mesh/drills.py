"""Game-day drills: RFC 6902 JSON patches of one VirtualService each, under mesh/istio/drills/.

A drill lives at `drills/<service>/<name>.yaml` and patches VirtualService `his/<service>`, the
way `kubectl -n his patch virtualservice <service> --type json --patch-file <file>` will.
Applying them here lets `his mesh check` prove every drill still fits the routes it faults and
lets `his mesh explain --drill` show the call under the drill.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from his.mesh.sources import Manifest

DRILLS = "mesh/istio/drills"


class DrillError(Exception):
    """A drill that does not apply: the message names the operation and why."""


@dataclass(frozen=True)
class Drill:
    """One drill file: its name (`patient/unavailable`), file, target and operations."""

    name: str
    file: str
    service: str
    operations: list[dict[str, Any]]


def load(root: Path) -> list[Drill]:
    """Every drill of the repository, sorted by name. Malformed files raise DrillError."""
    found: list[Drill] = []
    base = root / DRILLS
    for path in sorted(base.glob("*/*.yaml")):
        relative = path.relative_to(root).as_posix()
        try:
            operations = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise DrillError(f"{relative}: not YAML: {error}") from error
        if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
            raise DrillError(f"{relative}: a drill is a list of JSON patch operations")
        name = path.relative_to(base).with_suffix("").as_posix()
        found.append(Drill(name, relative, path.parent.name, operations))
    return found


def find(root: Path, name: str) -> Drill:
    """The drill called `name` (`patient/unavailable`), or DrillError listing the known ones."""
    drills = load(root)
    for drill in drills:
        if drill.name == name:
            return drill
    known = ", ".join(d.name for d in drills) or "none"
    raise DrillError(f"no drill {name!r}; known drills: {known}")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise DrillError(f"path {path!r} is not a JSON pointer (must start with /)")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _step(container: Any, token: str, path: str) -> Any:
    if isinstance(container, dict):
        if token not in container:
            raise DrillError(f"{path}: no {token!r} there")
        return container[token]
    if isinstance(container, list):
        if not token.isdigit() or int(token) >= len(container):
            raise DrillError(f"{path}: index {token} out of range ({len(container)} items)")
        return container[int(token)]
    raise DrillError(f"{path}: cannot descend into a {type(container).__name__}")


def apply(manifest: Manifest, operations: list[dict[str, Any]]) -> Manifest:
    """A copy of `manifest` with the operations applied (add, replace, remove, test)."""
    document = copy.deepcopy(manifest)
    for number, operation in enumerate(operations, 1):
        op, path = operation.get("op"), operation.get("path")
        if not isinstance(path, str):
            raise DrillError(f"operation {number}: no path")
        tokens = _pointer(path)
        if not tokens:
            raise DrillError(f"operation {number}: patching the whole object is not a drill")
        parent: Any = document
        for token in tokens[:-1]:
            parent = _step(parent, token, path)
        last = tokens[-1]
        if op == "test":
            actual = _step(parent, last, path)
            if actual != operation.get("value"):
                raise DrillError(
                    f"operation {number}: test {path} expected {operation.get('value')!r}, "
                    f"found {actual!r}: the routes changed, update the drill"
                )
        elif op == "add":
            if isinstance(parent, list):
                at = len(parent) if last == "-" else int(last) if last.isdigit() else -1
                if not 0 <= at <= len(parent):
                    raise DrillError(f"operation {number}: {path}: bad index {last}")
                parent.insert(at, copy.deepcopy(operation.get("value")))
            elif isinstance(parent, dict):
                parent[last] = copy.deepcopy(operation.get("value"))
            else:
                raise DrillError(f"operation {number}: {path}: parent is not an object or list")
        elif op == "replace":
            _step(parent, last, path)
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(operation.get("value"))
            else:
                parent[last] = copy.deepcopy(operation.get("value"))
        elif op == "remove":
            _step(parent, last, path)
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        else:
            raise DrillError(f"operation {number}: op {op!r} is not used by drills")
    return document
