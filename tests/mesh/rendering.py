"""Rendering for the mesh tests: `kubectl kustomize` only when the seeded edit needs it.

Most seeded mistakes edit one plain resource file (a VirtualService, a NetworkPolicy, a
Service) of a copy of the repository, and `kubectl kustomize` of an overlay costs 1-2 s. Such a
file's objects come out of kustomize exactly as written when no transformer touches them, so
the copy's render is the repository's render (made once per session by kubectl) with those
objects replaced by the edited file's documents. Everything else goes to kubectl, and what it
renders is cached by the content of every file the tree reads.

A render is spliced only when all of this holds, else kubectl renders it:
- every kustomization of the tree uses only fields read here (resources, components, patches,
  images, generators), and every file the tree reads is known;
- every changed file the tree reads is a resource file (not a kustomization, patch or
  generator input) that parses, has no duplicate key, and holds the same objects (apiVersion,
  kind, namespace, name) in the same order as in the repository;
- each of its objects came out of the repository's render exactly as written;
- no patch targets an edited object, no `images` transformer can reach one (no `image` field),
  no generator's hashed name can be referenced by one;
- the edit changes no labels or annotations mapping (kustomize writes their values as strings,
  `inject: false` as "false", where PyYAML keeps a bool or an int);
- the lines the edit added hold none of the scalars YAML 1.1 (PyYAML) and YAML 1.2 (kustomize)
  read differently (yes/no/on/off, 0-prefixed octals, 1:30, merge keys, `=`), and no null.

`HIS_MESH_TEST_RENDER=kubectl` turns all of this off (every render by kubectl);
`HIS_MESH_TEST_RENDER=verify` splices and also renders with kubectl, failing on any difference
(how the splice was shown equal to kubectl on every render of the suite).
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from his.mesh.kustomize_lint import Patch, applies_to, patches_of
from his.mesh.sources import Manifest, key, load_all

Render = Callable[[Path], list[Manifest]]
MODE = os.environ.get("HIS_MESH_TEST_RENDER", "splice")

_KNOWN_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "metadata",
        "resources",
        "components",
        "patches",
        "patchesStrategicMerge",
        "patchesJson6902",
        "images",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
    }
)
_KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Plain scalars YAML 1.1 and 1.2 read differently, a merge key, a null; in added lines only.
_HAZARD = re.compile(
    r"(?:^|[\s:\-\[{,])(?:yes|no|on|off|y|n|null|~|0[0-7]+|\d+:[0-5]\d|=)\s*(?:$|[,\]}#])"
    r"|<<\s*:",
    re.IGNORECASE,
)


@dataclass
class Inputs:
    """What one tree reads: its kustomizations, its resource files, its other files."""

    known: bool = True  # False: a field or reference this module does not follow
    kustomizations: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    resources: set[Path] = field(default_factory=set)
    others: set[Path] = field(default_factory=set)
    patches: list[Patch] = field(default_factory=list)  # every patch of the kustomizations

    @property
    def files(self) -> set[Path]:
        return {path for path, _ in self.kustomizations} | self.resources | self.others


def inputs(root: Path, tree: Path) -> Inputs:
    """Every file `kubectl kustomize tree` reads, as far as the fields above say."""
    found = Inputs()
    seen: set[Path] = set()
    stack = [tree.resolve()]
    while stack:
        directory = stack.pop()
        if directory in seen:
            continue
        seen.add(directory)
        path = next((directory / n for n in _KUSTOMIZATIONS if (directory / n).is_file()), None)
        if path is None or not directory.is_relative_to(root.resolve()):
            found.known = False
            continue
        try:
            parsed = load_all(path.read_text(encoding="utf-8"))
            document = (parsed[0] if parsed else None) or {}
        except yaml.YAMLError:
            found.known = False
            continue
        if not isinstance(document, dict) or set(document) - _KNOWN_FIELDS:
            found.known = False
            continue
        found.kustomizations.append((path, document))
        for entry in [*(document.get("resources") or []), *(document.get("components") or [])]:
            target = (directory / str(entry)).resolve()
            if target.is_dir():
                stack.append(target)
            elif target.is_file():
                found.resources.add(target)
            else:
                found.known = False  # a URL or a missing file: kustomize says what it makes of it
        for reference in _other_references(document):
            target = (directory / reference).resolve()
            if target.is_file():
                found.others.add(target)
            else:
                found.known = False
    if found.known:
        tree_name = tree.resolve().relative_to(root.resolve()).as_posix()
        found.patches = patches_of(root, tree_name, found.kustomizations)
    return found


def _other_references(document: Mapping[str, Any]) -> Iterator[str]:
    for entry in document.get("patches") or []:
        if isinstance(entry, Mapping) and entry.get("path"):
            yield str(entry["path"])
    for entry in document.get("patchesJson6902") or []:
        if isinstance(entry, Mapping) and entry.get("path"):
            yield str(entry["path"])
    for entry in document.get("patchesStrategicMerge") or []:
        if isinstance(entry, str) and "\n" not in entry:
            yield entry
    for generator in [
        *(document.get("configMapGenerator") or []),
        *(document.get("secretGenerator") or []),
    ]:
        for name in ("files", "envs"):
            for item in generator.get(name) or []:
                yield str(item).rpartition("=")[2]
        if generator.get("env"):
            yield str(generator["env"])


# libyaml's parser when PyYAML has it (the constructor below is Python either way).
_SAFE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeys(_SAFE):  # type: ignore[valid-type,misc]
    """PyYAML keeps the last of two equal keys; kustomize refuses the file."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        if len(keys) != len({str(k) for k in keys}):
            raise yaml.constructor.ConstructorError(None, None, "duplicate key", node.start_mark)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _objects(text: str) -> list[Manifest] | None:
    try:
        documents = list(yaml.load_all(text, Loader=_UniqueKeys))
    except yaml.YAMLError:
        return None
    if not all(isinstance(d, dict) or d is None for d in documents):
        return None
    return [d for d in documents if d is not None]


def _identity(manifest: Manifest) -> tuple[str, ...]:
    return (str(manifest.get("apiVersion", "")), *key(manifest))


def _has(value: Any, wanted: Callable[[Any, Any], bool]) -> bool:
    if isinstance(value, Mapping):
        return any(wanted(k, v) or _has(v, wanted) for k, v in value.items())
    if isinstance(value, list):
        return any(_has(item, wanted) for item in value)
    return False


class Renderer:
    """The repository's renders (kubectl, once), splices, and a cache of kubectl renders."""

    def __init__(self, repository: Path, kubectl_render: Render) -> None:
        self.repository = repository.resolve()
        self.kubectl_render = kubectl_render
        self.pristine: dict[str, tuple[list[Manifest], Inputs]] = {}
        self.cache: dict[tuple[str, str], list[Manifest]] = {}
        self.counts = {"kubectl": 0, "spliced": 0, "unchanged": 0, "cached": 0}

    def __call__(self, directory: Path) -> list[Manifest]:
        if MODE == "kubectl" or os.environ.get("HIS_KUBECTL"):
            return self.kubectl_render(directory)  # tests of a missing kubectl see it missing
        root = self._root(directory)
        if root is None:
            return self.kubectl_render(directory)
        tree = directory.resolve().relative_to(root).as_posix()
        base, base_inputs = self._pristine(tree)
        copy_inputs = inputs(root, root / tree)
        result = self._splice(root, tree, base, base_inputs, copy_inputs)
        if result is None:
            return self._kubectl(root, tree, copy_inputs)
        if MODE == "verify":
            real = self.kubectl_render(directory)
            assert real == result, f"splice differs from kubectl for {directory}"
        return result

    def _root(self, directory: Path) -> Path | None:
        for candidate in (directory.resolve(), *directory.resolve().parents):
            if (candidate / "mesh/istio/kustomization.yaml").is_file():
                return candidate
        return None

    def _pristine(self, tree: str) -> tuple[list[Manifest], Inputs]:
        if tree not in self.pristine:
            objects = self.kubectl_render(self.repository / tree)
            self.counts["kubectl"] += 1
            self.pristine[tree] = (objects, inputs(self.repository, self.repository / tree))
        return self.pristine[tree]

    def _kubectl(self, root: Path, tree: str, read: Inputs) -> list[Manifest]:
        digest = hashlib.sha256()
        for path in sorted(read.files) if read.known else sorted(root.rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
        cache_key = (tree, digest.hexdigest())
        if cache_key in self.cache:
            self.counts["cached"] += 1
        else:
            self.cache[cache_key] = self.kubectl_render(root / tree)  # RenderFailed propagates
            self.counts["kubectl"] += 1
        return copy.deepcopy(self.cache[cache_key])

    def _splice(
        self, root: Path, tree: str, base: list[Manifest], was: Inputs, now: Inputs
    ) -> list[Manifest] | None:
        """The copy's render from the repository's, or None when kubectl must render it."""
        if root == self.repository:
            self.counts["unchanged"] += 1
            return copy.deepcopy(base)
        if not (was.known and now.known):
            return None
        relative = {p.relative_to(root) for p in now.files}
        if relative != {p.relative_to(self.repository) for p in was.files}:
            return None  # the tree reads other files now (a kustomization was edited)
        changed = [
            r
            for r in sorted(relative)
            if (root / r).read_bytes() != (self.repository / r).read_bytes()
        ]
        if not changed:
            self.counts["unchanged"] += 1
            return copy.deepcopy(base)
        resources = {p.relative_to(root) for p in now.resources}
        replaced: dict[tuple[str, ...], Manifest] = {}
        for relative_path in changed:
            if relative_path not in resources:
                return None  # a kustomization, a patch or a generator input
            edited = self._spliceable(root, relative_path, base, was)
            if edited is None:
                return None
            replaced.update(edited)
        self.counts["spliced"] += 1
        return [copy.deepcopy(replaced.get(_identity(obj), obj)) for obj in base]

    def _spliceable(
        self, root: Path, relative: Path, base: list[Manifest], was: Inputs
    ) -> dict[tuple[str, ...], Manifest] | None:
        old_text = (self.repository / relative).read_text(encoding="utf-8")
        new_text = (root / relative).read_text(encoding="utf-8")
        old, new = _objects(old_text), _objects(new_text)
        if old is None or new is None:
            return None
        if [_identity(d) for d in old] != [_identity(d) for d in new]:
            return None
        rendered = {_identity(obj): obj for obj in base}
        if any(rendered.get(_identity(d)) != d for d in old):
            return None  # a transformer changed it, or it is not rendered at all
        added = [
            line[1:]
            for line in difflib.ndiff(old_text.splitlines(), new_text.splitlines())
            if line.startswith("+ ")
        ]
        if any(_HAZARD.search(line.split("#", 1)[0]) for line in added if line.strip()):
            return None
        if [_label_maps(d) for d in old] != [_label_maps(d) for d in new]:
            return None  # kustomize writes label and annotation values as strings; PyYAML does not
        for document in new:
            if _has(document, lambda _k, v: v is None):
                return None
            if _reached(document, was):
                return None
        return {_identity(d): d for d in new}


def _label_maps(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every labels and annotations mapping of a document (metadata's, a pod template's, a
    selector's), with where it is: an edit changing one is rendered by kubectl."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        for name, item in value.items():
            where = f"{path}.{name}"
            if name in ("labels", "annotations"):
                found.append((where, item))
            found.extend(_label_maps(item, where))
    elif isinstance(value, list):
        for number, item in enumerate(value):
            found.extend(_label_maps(item, f"{path}[{number}]"))
    return found


def _reached(document: Manifest, was: Inputs) -> bool:
    """Whether a transformer of the tree may change `document`: a patch the product's own
    kustomize_lint says applies to it, an images transformer, a generated name."""
    if any(applies_to(patch, document) for patch in was.patches):
        return True
    for _path, kustomization in was.kustomizations:
        if kustomization.get("images") and _has(document, lambda k, _v: k == "image"):
            return True
        generated = [
            *(kustomization.get("configMapGenerator") or []),
            *(kustomization.get("secretGenerator") or []),
        ]
        names = frozenset(str(g.get("name")) for g in generated)
        if names and _has(document, functools.partial(_names_one_of, names)):
            return True
    return False


def _names_one_of(names: frozenset[str], _key: Any, value: Any) -> bool:
    return isinstance(value, str) and value in names
