"""`his mesh check`: render every overlay, validate strictly, lint, and try every drill.

One line per finding (file: object: problem; fix: ...), then what could not be checked and
why, then how many objects each schema set checked. Exit status 0 when clean, 1 with findings,
2 when the check could not run at all (no kubectl, unknown overlay, no usable Istio schema).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from his.mesh import drills, schema
from his.mesh.cluster import Cluster
from his.mesh.findings import Finding, grouped, one_per_patch
from his.mesh.istio_crds import SchemaUnavailable
from his.mesh.kustomize_lint import (
    Patch,
    kustomizations,
    lint_kustomize,
    patches_of,
    written_by,
)
from his.mesh.lint import lint
from his.mesh.render import KubectlMissing, RenderFailed, render
from his.mesh.sources import (
    FieldPath,
    Manifest,
    RootNotFound,
    Source,
    file_of,
    key,
    repository_root,
    scan,
)
from his.mesh.traffic_lint import route_values

MESH = "mesh/istio"
OVERLAYS = "deploy/kustomize/overlays"
# Under mesh/istio but deliberately not part of its kustomization (applied by hand or optional).
_NOT_RENDERED = ("mesh/istio/drills/", "mesh/istio/flagger/")


class CheckUnavailable(Exception):
    """The check cannot run here (kubectl missing, unknown overlay, the carried Istio schema
    missing or damaged); the message says why."""


@dataclass
class CheckReport:
    """Everything `his mesh check` found in one repository."""

    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rendered: dict[str, int] = field(default_factory=dict)  # tree → objects rendered
    # schema set (`Istio 1.28.0`) → distinct rendered objects validated against it
    schema_checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings


def overlays(root: Path) -> list[str]:
    """Names of the overlays under deploy/kustomize/overlays."""
    base = root / OVERLAYS
    return sorted(p.parent.name for p in base.glob("*/kustomization.yaml"))


def run_check(root: Path, overlays_wanted: Sequence[str] | None = None) -> CheckReport:
    """Check mesh/istio and the overlays (all, or the ones named). Raises CheckUnavailable."""
    known = overlays(root)
    chosen = list(overlays_wanted) if overlays_wanted else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise CheckUnavailable(
            f"unknown overlay {', '.join(unknown)}; overlays: {', '.join(known) or 'none'}"
        )
    try:
        # Before rendering: without its carried schemas the check cannot pass.
        schema.istio_release()
        schema.cnpg_release()
    except SchemaUnavailable as error:
        raise CheckUnavailable(str(error)) from error
    report = CheckReport()
    read = scan(root)
    files = read.files
    # kustomize's own message names no line: say which file does not parse, and where.
    found: set[Finding] = {
        Finding(file, "YAML", f"does not parse: {error}", "fix the indentation or quoting there")
        for file, error in read.unparsable.items()
    }
    trees = [MESH, *(f"{OVERLAYS}/{name}" for name in chosen)]
    # The same object appears in every overlay: each distinct rendering is validated once, and
    # a field of it is blamed on the patches that wrote it in any of the trees rendering it.
    rendered: dict[tuple[str, tuple[str, str, str]], tuple[Manifest, str, list[list[Patch]]]] = {}
    mesh_objects: list[Manifest] | None = None
    for tree in trees:
        try:
            objects = render(root / tree)
        except KubectlMissing as missing:
            raise CheckUnavailable(str(missing)) from missing
        except RenderFailed as failed:
            found.add(
                Finding(
                    tree,
                    "kustomization",
                    f"does not render: {failed}",
                    "fix the file kustomize names",
                )
            )
            continue
        report.rendered[tree] = len(objects)
        tree_kustomizations = kustomizations(root, tree)
        patches = patches_of(root, tree, tree_kustomizations)
        for obj in objects:
            identity = (json.dumps(obj, sort_keys=True, default=str), key(obj))
            rendered.setdefault(identity, (obj, tree, []))[2].append(patches)
        if tree == MESH:
            mesh_objects = objects
            found.update(_unlisted(files, objects))
        else:
            cluster = overlay_cluster(root, tree, objects, files, patches)
            found.update(lint(cluster))
            found.update(lint_kustomize(root, tree, objects, tree_kustomizations, cluster))
    sources = [
        Source(
            file_of(files, obj, first_tree),
            obj,
            functools.partial(_writers, obj, in_trees),
        )
        for obj, first_tree, in_trees in rendered.values()
    ]
    result = schema.validate(sources)
    found.update(result.findings)
    report.schema_checked = result.checked
    report.notes.extend(
        dict.fromkeys(
            f"not schema-checked: {u.file}: {u.subject} ({u.reason})" for u in result.unchecked
        )
    )
    if mesh_objects is not None:
        found.update(_drills(root, mesh_objects))
    # One mistake, one finding: the same problem at many places of one object is listed once,
    # and one patch's mistake about many objects is one finding listing them.
    report.findings = one_per_patch(grouped(found))
    return report


def overlay_cluster(
    root: Path,
    tree: str,
    objects: list[Manifest],
    files: dict[tuple[str, str, str], str],
    patches: list[Patch] | None = None,
) -> Cluster:
    """One rendered overlay for the lint: each object located in the file it is written in,
    and a field a kustomize patch wrote traced to that patch (the tree's patches, read when
    not given)."""
    return Cluster(
        objects,
        functools.partial(file_of, files, fallback=tree),
        patched_by=functools.partial(
            written_by, patches_of(root, tree) if patches is None else patches
        ),
        tree=tree,
    )


def _writers(manifest: Manifest, in_trees: list[list[Patch]], path: FieldPath) -> list[Patch]:
    """The patches that wrote the field at `path` of one rendering, in any tree rendering it."""
    found = (written_by(patches, manifest, path) for patches in in_trees)
    # Patches hold mappings (unhashable): one per place it is listed.
    return list({str(patch): patch for patch in found if patch is not None}.values())


def _unlisted(files: dict[tuple[str, str, str], str], rendered: list[Manifest]) -> list[Finding]:
    """Objects written under mesh/istio that its kustomization never renders (never applied)."""
    present = {key(obj) for obj in rendered}
    return [
        Finding(
            file,
            f"{kind} {namespace}/{name}",
            "is not rendered: the file is missing from "
            "mesh/istio/kustomization.yaml, so the cluster never gets it",
            f"list {file.removeprefix(MESH + '/')} under resources in {MESH}/kustomization.yaml",
        )
        for (kind, namespace, name), file in sorted(files.items())
        if file.startswith(MESH + "/")
        and not file.startswith(_NOT_RENDERED)
        and (kind, namespace, name) not in present
    ]


def _drills(root: Path, mesh_objects: list[Manifest]) -> list[Finding]:
    """Every drill applies to the VirtualService it names and leaves it valid."""
    try:
        loaded = drills.load(root)
    except drills.DrillError as error:
        return [
            Finding(drills.DRILLS, "drill", str(error), "write a list of JSON patch operations")
        ]
    problems: list[Finding] = []
    services = {key(obj): obj for obj in mesh_objects}
    for drill in loaded:
        target = services.get(("VirtualService", "his", drill.service))
        if target is None:
            problems.append(
                Finding(
                    drill.file,
                    f"drill {drill.name}",
                    f"no VirtualService his/{drill.service} to patch",
                    "put the drill under drills/<service>/ of a routed service",
                )
            )
            continue
        try:
            patched = drills.apply(target, drill.operations)
        except drills.DrillError as error:
            problems.append(
                Finding(
                    drill.file,
                    f"drill {drill.name}",
                    str(error),
                    "fix the patch (kubectl would refuse it too)",
                )
            )
            continue
        if not any("fault" in route for route in (patched.get("spec") or {}).get("http") or []):
            problems.append(
                Finding(
                    drill.file,
                    f"drill {drill.name}",
                    "injects no fault",
                    "add a fault (abort or delay) to a route",
                )
            )
        # Faults are only in drills: lint the patched routes as the cluster would get them.
        in_drill = Cluster([patched], functools.partial(file_of, {}, fallback=drill.file))
        problems.extend(route_values(in_drill))
        result = schema.validate([Source(drill.file, patched)])
        problems.extend(
            Finding(f.file, f"drill {drill.name}: {f.subject}", f.problem, f.fix)
            for f in result.findings
        )
    return problems


def command(args: argparse.Namespace) -> int:
    """The `his mesh check` command."""
    try:
        root = repository_root(args.root)
        report = run_check(root, args.overlay)
    except (RootNotFound, CheckUnavailable) as error:
        print(f"his mesh check: cannot run: {error}", file=sys.stderr)
        return 2
    for finding in report.findings:
        print(finding)
    for note in report.notes:
        print(f"note: {note}")
    trees = ", ".join(f"{tree} ({count} objects)" for tree, count in report.rendered.items())
    checked = ", ".join(f"{name} ({count})" for name, count in report.schema_checked.items())
    verdict = "ok" if report.ok else f"{len(report.findings)} finding(s)"
    print(f"his mesh check: {verdict}; rendered {trees}; schema-checked objects: {checked}")
    return 0 if report.ok else 1
