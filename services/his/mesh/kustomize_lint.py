"""Lint of the Kustomize trees behind one overlay: what renders without an error but is wrong.

kustomize refuses a strategic-merge patch whose object is missing, but a patch with a `target`
selector that matches nothing is applied to nothing, silently: the overlay renders, and the
change the patch was written for (dev's small HPAs, prod's zone spread) is simply absent. Drills
(mesh/istio/drills) are applied by hand for a game day, never from a kustomization. And a
production overlay runs exactly the release it names: every image pinned by a version tag or a
digest, never `latest`, a branch name or no tag at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from his.mesh.cluster import Cluster, finding, suggest
from his.mesh.findings import Finding, subject
from his.mesh.sources import FieldPath, Manifest, documents, key, load_all

_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
DRILLS = "mesh/istio/drills"
# A release tag: 1.0.0, v2.3, 1.1.0-rc.1, 16.6 (the database's); or a digest.
_PINNED_TAG = re.compile(r"v?\d+(\.\d+)+([-+][0-9A-Za-z.-]+)?")
_POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet")
# istiod replaces `image: auto` of a pod injected with the gateway template (its own proxy image).
_INJECTED = "auto"


def _kustomization(directory: Path) -> Path | None:
    return next((directory / n for n in _NAMES if (directory / n).is_file()), None)


def _tree(root: Path, start: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every kustomization the overlay at `start` builds on: itself, its resources that are
    directories, and its components, each once."""
    seen: set[Path] = set()
    stack = [start]
    while stack:
        directory = stack.pop().resolve()
        if directory in seen or not directory.is_relative_to(root.resolve()):
            continue
        seen.add(directory)
        path = _kustomization(directory)
        if path is None:
            continue
        try:
            parsed = load_all(path.read_text(encoding="utf-8"))  # libyaml: read on every check
            document = (parsed[0] if parsed else None) or {}
        except yaml.YAMLError:
            continue  # the check names files that do not parse
        if not isinstance(document, dict):
            continue
        yield path, document
        for entry in [*(document.get("resources") or []), *(document.get("components") or [])]:
            candidate = directory / str(entry)
            if candidate.is_dir():
                stack.append(candidate)


Kustomizations = list[tuple[Path, dict[str, Any]]]


def kustomizations(root: Path, tree: str) -> Kustomizations:
    """The kustomization files the tree builds on, parsed once: for the lint and for
    `patches_of` alike."""
    return list(_tree(root, root / tree))


def _relative(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def lint_kustomize(
    root: Path,
    tree: str,
    objects: list[Manifest],
    read: Kustomizations | None = None,
    cluster: Cluster | None = None,
) -> list[Finding]:
    """Patches matching nothing, drills in a kustomization, unpinned images in production.
    `read`: the tree's kustomizations when already read; `cluster`: the rendered overlay, to
    blame an image written in an object (a CNPG Cluster's spec.imageName) on its file."""
    found: list[Finding] = []
    read = kustomizations(root, tree) if read is None else read
    for path, document in read:
        file = _relative(root, path)
        found.extend(_patches(file, document, objects, tree))
        found.extend(_drills(root, path, file, document))
    unmatched = list(_unmatched_images(root, read))
    found.extend(unmatched)
    if Path(tree).name.startswith("prod"):
        # An entry that matches no image leaves its image unpinned: that entry's finding says it.
        found.extend(
            f
            for f in _pinned(root, tree, objects, read, cluster)
            if not (unmatched and "is not pinned (no tag)" in f.problem)
        )
    return found


def _source_images(read: Kustomizations) -> set[str]:
    """The names (no tag, no digest) of the images the tree's resource files name, before any
    `images` transformer rewrites them."""
    names: set[str] = set()
    for path, document in read:
        for entry in document.get("resources") or []:
            file = path.parent / str(entry)
            if not file.is_file():
                continue
            for manifest in documents(file):
                for _, image in _images(manifest):
                    names.add(_image_name(image))
    return names


def _image_name(image: str) -> str:
    """`registry/his:1.0@sha256:...` → `registry/his`."""
    bare = image.partition("@")[0]
    head, _, tail = bare.rpartition("/")
    return f"{head}/{tail.partition(':')[0]}" if head else tail.partition(":")[0]


def _unmatched_images(root: Path, read: Kustomizations) -> Iterator[Finding]:
    """An `images` entry whose name matches no container image: kustomize ignores it silently,
    so the image it was meant for keeps its unpinned (or wrong) tag."""
    known = _source_images(read)
    if not known:
        return
    for path, document in read:
        for index, entry in enumerate(document.get("images") or []):
            name = str((entry or {}).get("name", "")) if isinstance(entry, Mapping) else ""
            if not name or name in known:
                continue
            yield Finding(
                _relative(root, path),
                f"kustomization images[{index}] {name}",
                f"name {name!r} matches no container image ({', '.join(sorted(known))}): "
                "kustomize ignores the entry, so the image it was meant for keeps the tag "
                "its resource file gives",
                f"set name to the image's name{suggest(name, sorted(known))}",
            )


# --- patches whose target selects nothing ------------------------------------------------


def selector_holds(selector: str, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector string (`a=b,c!=d,e,!f,g in (x,y),h notin (z)`)."""
    for raw in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        term = raw.strip()
        if not term:
            continue
        found = re.fullmatch(r"(\S+)\s+(in|notin)\s*\(([^)]*)\)", term)
        if found:
            key, operator, listed = found.groups()
            values = {v.strip() for v in listed.split(",")}
            if (labels.get(key) in values) != (operator == "in"):
                return False
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in re.split(r"==?", term, maxsplit=1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _matches(target: Mapping[str, Any], manifest: Manifest) -> bool:
    metadata = manifest.get("metadata") or {}
    group, _, version = str(manifest.get("apiVersion", "")).rpartition("/")
    fields = {
        "kind": str(manifest.get("kind", "")),
        "name": str(metadata.get("name", "")),
        "namespace": str(metadata.get("namespace", "")),
        "group": group,
        "version": version,
    }
    for field, value in fields.items():
        wanted = target.get(field)
        # kustomize matches these as anchored regular expressions.
        if wanted is not None and not re.fullmatch(str(wanted), value):
            return False
    for field, source in (("labelSelector", "labels"), ("annotationSelector", "annotations")):
        if target.get(field) is not None:
            values = {str(k): str(v) for k, v in (metadata.get(source) or {}).items()}
            if not selector_holds(str(target[field]), values):
                return False
    return True


def _entries(
    document: Mapping[str, Any], fields: tuple[str, ...]
) -> Iterator[tuple[str, int, Any]]:
    """The patch entries of a kustomization, each numbered within its own field (`patches[0]`,
    `patchesJson6902[0]`), as kustomize's users count them."""
    for field in fields:
        for index, entry in enumerate(document.get(field) or []):
            yield field, index, entry


def _patches(
    file: str, document: Mapping[str, Any], objects: list[Manifest], tree: str
) -> Iterator[Finding]:
    for field, index, entry in _entries(document, ("patches", "patchesJson6902")):
        target = (entry or {}).get("target") if isinstance(entry, Mapping) else None
        if not isinstance(target, Mapping):
            continue  # a strategic-merge patch: kustomize itself refuses one that matches nothing
        if any(_matches(target, m) for m in objects):
            continue
        label = (entry or {}).get("path") or "(inline patch)"
        shown = ", ".join(f"{k}: {v}" for k, v in target.items())
        yield Finding(
            file,
            f"kustomization {field}[{index}] {label}",
            f"its target ({shown}) matches no object rendered in {tree}: kustomize applies "
            "the patch to nothing and says nothing",
            "fix the target (kind, name, labelSelector) so it selects the objects the patch "
            "is for, or remove the patch",
        )


# --- which patch put a field into a rendered object ----------------------------------------


@dataclass(frozen=True)
class Patch:
    """One patch of a kustomization: where it is listed, the file holding it (None when it is
    written inline), its target, and its content (strategic-merge documents or JSON 6902 ops)."""

    kustomization: str  # the kustomization file listing it
    entry: str  # `patches[0]`
    file: str | None
    target: Mapping[str, Any] | None
    content: tuple[Any, ...] = ()

    @property
    def written_in(self) -> str:
        """The file to open to see the patch: its own, or the kustomization for an inline one."""
        return self.file or self.kustomization

    def __str__(self) -> str:
        shown = f" ({self.file})" if self.file else " (inline)"
        return f"{self.kustomization} {self.entry}{shown}"


def patches_of(root: Path, tree: str, read: Kustomizations | None = None) -> list[Patch]:
    """Every patch of the kustomizations the tree builds on (`read`: them, when already read),
    the overlay's first. A patch file that does not parse is left out (kustomize refuses it)."""
    found: list[Patch] = []
    for path, document in kustomizations(root, tree) if read is None else read:
        fields = ("patches", "patchesJson6902", "patchesStrategicMerge")
        for name, index, entry in _entries(document, fields):
            text, file = "", None
            if isinstance(entry, str):  # patchesStrategicMerge: a path or an inline document
                candidate = path.parent / entry
                file, text = (entry, "") if candidate.is_file() else (None, entry)
            elif isinstance(entry, Mapping):
                file = str(entry["path"]) if entry.get("path") else None
                text = str(entry.get("patch") or "")
            if file is not None:
                resolved = path.parent / file
                if not resolved.is_file() or not resolved.resolve().is_relative_to(root.resolve()):
                    continue
                text = resolved.read_text(encoding="utf-8")
                file = _relative(root, resolved)
            try:
                content = tuple(d for d in load_all(text) if d is not None)
            except yaml.YAMLError:
                continue  # kustomize refuses it and says so
            target = entry.get("target") if isinstance(entry, Mapping) else None
            found.append(
                Patch(
                    _relative(root, path),
                    f"{name}[{index}]",
                    file,
                    target if isinstance(target, Mapping) else None,
                    content,
                )
            )
    return found


def written_by(patches: list[Patch], manifest: Manifest, path: FieldPath) -> Patch | None:
    """The patch that wrote the field at `path` of the rendered `manifest`, if one did: of the
    patches targeting the object whose content writes that very path (not merely the same
    field name elsewhere in the object), the one kustomize applied last. The object itself
    (an empty path) is never a patch's."""
    if not path:
        return None
    for patch in _last_applied_first(patches):
        if applies_to(patch, manifest) and any(
            _writes(document, manifest, list(path)) for document in patch.content
        ):
            return patch
    return None


def _last_applied_first(patches: list[Patch]) -> Iterator[Patch]:
    """`patches_of` lists the overlay's kustomization first, then what it builds on; kustomize
    applies a kustomization's own patches after those of its resources and components, and
    within one kustomization in the order listed. So: the overlay's, last listed first, then
    the next kustomization's."""
    by_file: dict[str, list[Patch]] = {}
    for patch in patches:
        by_file.setdefault(patch.kustomization, []).append(patch)
    for listed in by_file.values():
        yield from reversed(listed)


def applies_to(patch: Patch, manifest: Manifest) -> bool:
    """Whether kustomize applies the patch to the object: its target selects it, or (a
    strategic-merge patch without one) a document of the patch names its kind and name."""
    if patch.target is not None:
        return _matches(patch.target, manifest)
    # A strategic-merge patch names its object itself.
    kind, _, name = key(manifest)
    return any(
        isinstance(doc, Mapping) and key(dict(doc))[0::2] == (kind, name) for doc in patch.content
    )


def _writes(document: Any, rendered: Any, path: list[int | str]) -> bool:
    """Whether one document of a patch writes the field at `path`: a JSON 6902 operation list
    whose add/replace/copy/move lands on the path or on an object holding it, or a
    strategic-merge document holding the path."""
    if isinstance(document, list):
        return any(_operation_writes(op, rendered, path) for op in document)
    return _merge_writes(document, rendered, path)


def _operation_writes(operation: Any, rendered: Any, path: list[int | str]) -> bool:
    if not isinstance(operation, Mapping) or not isinstance(operation.get("path"), str):
        return False
    if operation.get("op") not in ("add", "replace", "copy", "move"):
        return False
    target = _pointer(str(operation["path"]), rendered)
    if target is None or path[: len(target)] != target:
        return False
    if operation.get("op") in ("copy", "move"):
        return True  # the value comes from elsewhere in the object: all of it is this op's
    return _holds(operation.get("value"), path[len(target) :])


def _pointer(text: str, rendered: Any) -> list[int | str] | None:
    """A JSON pointer (`/spec/http/3/fault`) as a field path of the rendered object: digits
    index a list, `-` (append) the list's last item."""
    if not text.startswith("/"):
        return None
    parts: list[int | str] = []
    node = rendered
    for raw in text[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        part: int | str = token
        if isinstance(node, list):
            if token == "-":  # noqa: S105 - JSON pointer's "end of the list", not a secret
                part = len(node) - 1
            elif token.isdigit():
                part = int(token)
            else:
                return None
        parts.append(part)
        node = _child(node, part)
    return parts


def _child(node: Any, part: int | str) -> Any:
    if isinstance(part, int):
        return node[part] if isinstance(node, list) and 0 <= part < len(node) else None
    return node.get(part) if isinstance(node, Mapping) else None


def _holds(value: Any, path: list[int | str]) -> bool:
    """Whether a value an operation writes holds the rest of the path."""
    for part in path:
        value = _child(value, part)
        if value is None:
            return False
    return True


def _merge_writes(document: Any, rendered: Any, path: list[int | str]) -> bool:
    """Whether a strategic-merge document holds the field at `path` of the rendered object.
    A list item is the patch's when the patch has an item of the same `name` (the merge key of
    containers, ports, routes), or when the patch's list is as long as the rendered one
    (a list the patch replaced whole, as kustomize does for custom resources)."""
    node, seen = document, rendered
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or not isinstance(seen, list) or part >= len(seen):
                return False
            item = seen[part]
            name = item.get("name") if isinstance(item, Mapping) else None
            same = [i for i in node if isinstance(i, Mapping) and name and i.get("name") == name]
            if same:
                node = same[0]
            elif len(node) == len(seen):
                node = node[part]
            else:
                return False
            seen = item
        else:
            if not isinstance(node, Mapping) or part not in node:
                return False
            node, seen = node[part], _child(seen, part)
    return True


# --- drills are applied by hand, never from a kustomization -----------------------------------


def _drills(root: Path, path: Path, file: str, document: Mapping[str, Any]) -> Iterator[Finding]:
    drills = (root / DRILLS).resolve()
    listed: list[tuple[str, str]] = [
        (field, str(entry))
        for field in ("resources", "components", "patchesStrategicMerge")
        for entry in document.get(field) or []
    ]
    for entry in document.get("patches") or []:
        if isinstance(entry, Mapping) and entry.get("path"):
            listed.append(("patches", str(entry["path"])))
    for field, entry in listed:
        if (path.parent / entry).resolve().is_relative_to(drills):
            yield Finding(
                file,
                f"kustomization {field} {entry}",
                "applies a drill from a kustomization: its fault hits real calls whenever "
                "the tree is applied, not only during a game day",
                f"remove it; apply the drill by hand (kubectl patch ... --patch-file {entry})",
            )


# --- production runs pinned releases -----------------------------------------------------


def _images(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """(place, image) of every container of a pod-owning object (and a CNPG Cluster)."""
    spec = manifest.get("spec") or {}
    if manifest.get("kind") == "Cluster" and spec.get("imageName"):
        yield "spec.imageName", str(spec["imageName"])
    if manifest.get("kind") not in _POD_KINDS:
        return
    pod = (spec.get("template") or {}).get("spec") or {}
    for part in ("initContainers", "containers"):
        for index, container in enumerate(pod.get(part) or []):
            if isinstance(container, Mapping) and container.get("image"):
                where = f"{part}[{index}] {container.get('name', '')}".rstrip()
                yield where, str(container["image"])


def pinned(image: str) -> bool:
    """Whether an image reference names one release: a digest, or a version tag."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    return bool(_PINNED_TAG.fullmatch(tag))


@dataclass(frozen=True)
class _ImageEntry:
    """One `images` entry of a kustomization, and the image it makes of a container's."""

    file: str
    index: int
    name: str
    made: str  # newName (or name) with newTag: what the containers it matches then run


def _image_entries(root: Path, tree: str, read: Kustomizations) -> list[_ImageEntry]:
    """The tree's `images` entries with a newTag, its own kustomization's first (the outermost
    transformer decides what is rendered)."""
    overlay = (root / tree).resolve()
    ordered = sorted(read, key=lambda item: item[0].parent.resolve() != overlay)
    found: list[_ImageEntry] = []
    for path, document in ordered:
        for index, entry in enumerate(document.get("images") or []):
            if isinstance(entry, Mapping) and entry.get("newTag") is not None:
                name = str(entry.get("name", ""))
                made = f"{entry.get('newName') or name}:{entry['newTag']}"
                found.append(_ImageEntry(_relative(root, path), index, name, made))
    return found


_UNPINNED = "each pull may run a different build, and a rollback cannot name the old one"


def _pinned(
    root: Path,
    tree: str,
    objects: list[Manifest],
    read: Kustomizations,
    cluster: Cluster | None,
) -> Iterator[Finding]:
    """One finding per mistake: an `images` entry whose newTag is no release, once with every
    container it reaches; an image written unpinned in an object, on that object."""
    overlay = _kustomization(root / tree)
    file = _relative(root, overlay) if overlay is not None else tree
    entries = _image_entries(root, tree, read)
    reached: dict[_ImageEntry, list[str]] = {}
    for manifest in objects:
        for where, image in _images(manifest):
            if image == _INJECTED or pinned(image):
                continue
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            state = f"image {image!r} is not pinned ({'tag ' + repr(tag) if tag else 'no tag'})"
            if where == "spec.imageName":
                # kustomize's `images` rewrites container images only, never spec.imageName:
                # the tag is changed where the Cluster (or the patch writing it) says it.
                problem = f"{state}: {_UNPINNED}; kustomize's images[] does not rewrite it"
                fix = (
                    "tag spec.imageName with a full PostgreSQL version "
                    "(ghcr.io/cloudnative-pg/postgresql:16.6) or a digest"
                )
                if cluster is None:
                    yield Finding(file, subject(manifest, where), problem, fix)
                else:
                    yield finding(
                        cluster, manifest, where, problem, fix, paths=[("spec", "imageName")]
                    )
                continue
            # Entries making the same image (his and his-canary both at `main`) each get it.
            made_by = [e for e in entries if e.made == image]
            for entry in made_by:
                reached.setdefault(entry, []).append(subject(manifest))
            if made_by:
                continue
            yield Finding(
                file,
                subject(manifest, where),
                f"{state}: {_UNPINNED}",
                "set images[].newTag to a release version (or images[].digest) in this "
                "overlay's kustomization",
            )
    for entry, places in reached.items():
        tag = entry.made.rpartition(":")[2]
        yield Finding(
            entry.file,
            f"kustomization images[{entry.index}] {entry.name}",
            f"image {entry.made!r} is not pinned (tag {tag!r}): {_UNPINNED}; "
            f"it is the image of {', '.join(sorted(set(places)))}",
            "set newTag to a release version (e.g. 1.0.0), or replace it by digest: sha256:...",
        )
