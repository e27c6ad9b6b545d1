"""`his canary`: move a service's traffic between its stable and canary subsets, step by step.

The weights live in the service's VirtualService and in the mobile gateway's routes; both are
edited in place with a ruamel round trip (comments, order, quotes and anchors kept) and written
only after `his mesh check` passed on a copy of the repository holding the edit.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from his.base.canary_plan import PLAN
from his.base.canary_plan import PLAN_TEXT as _PLAN_TEXT
from his.base.catalog import lookup
from his.mesh.contracts import host
from his.mesh.render import KubectlMissing
from his.mesh.routes import istio_host, route_label
from his.mesh.sources import RootNotFound, repository_root

VIRTUAL_SERVICES = "mesh/istio/virtual-services"
GATEWAY_ROUTES = "mesh/istio/gateway/routes.yaml"
# The check runs on a copy of these trees (the edit must not touch the real files first).
_COPIED = ("mesh", "deploy")


class CanaryError(Exception):
    """The command cannot go on; `status` is its exit status (2 usage, 1 refused)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def round_trip_yaml() -> YAML:
    """The ruamel set-up that reproduces the policy files byte for byte when nothing changes."""
    handler = YAML()
    handler.preserve_quotes = True
    handler.width = 4096  # never fold the long uri regexes
    handler.indent(mapping=2, sequence=4, offset=2)
    return handler


def dump(documents: list[Any]) -> str:
    """The text of a file's documents, as round_trip_yaml writes them."""
    out = io.StringIO()
    round_trip_yaml().dump_all(documents, out)
    return out.getvalue()


@dataclass
class Split:
    """One weighted route: its stable and canary destination entries (edited in place)."""

    file: str
    route: str
    stable: dict[str, Any]
    canary: dict[str, Any]

    @property
    def weights(self) -> tuple[int, int]:
        return int(self.stable.get("weight") or 0), int(self.canary.get("weight") or 0)

    def describe(self) -> str:
        stable, canary = self.weights
        return f"{self.file}  {self.route}: stable {stable}, canary {canary}"


@dataclass
class PolicyFile:
    """A file holding split routes of the service, parsed for a round trip."""

    path: Path
    relative: str
    documents: list[Any]
    splits: list[Split] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    """What one route's weights were and become."""

    file: str
    route: str
    old: tuple[int, int]
    new: tuple[int, int]

    def __str__(self) -> str:
        return (
            f"{self.file}  {self.route}: stable {self.old[0]} → {self.new[0]}, "
            f"canary {self.old[1]} → {self.new[1]}"
        )


def names_service(destination_host: str, service: str, namespace: str) -> bool:
    """Whether a destination host (short, `svc.ns`, or FQDN) is the service's own host."""
    return istio_host(destination_host, namespace) == host(service)


def splits(documents: list[Any], service: str, file: str) -> Iterator[Split]:
    """Routes sending the service's host to exactly its stable and its canary subset.

    Routes with one destination (the x-canary override) or other hosts are left alone.
    """
    for document in documents:
        if not isinstance(document, Mapping) or document.get("kind") != "VirtualService":
            continue
        namespace = str((document.get("metadata") or {}).get("namespace") or "")
        for index, route in enumerate((document.get("spec") or {}).get("http") or []):
            entries = (route or {}).get("route") or []
            by_subset = {
                (entry.get("destination") or {}).get("subset"): entry
                for entry in entries
                if isinstance(entry, dict)
                and names_service(
                    str((entry.get("destination") or {}).get("host", "")), service, namespace
                )
            }
            if len(entries) == 2 and set(by_subset) == {"stable", "canary"}:
                # Named as `his mesh check` and `his mesh explain` name routes: index, then name.
                label = route_label(index, route)
                yield Split(file, label, by_subset["stable"], by_subset["canary"])


def load(root: Path, service: str) -> list[PolicyFile]:
    """The service's VirtualService file and the gateway routes, with their split routes."""
    handler = round_trip_yaml()
    found: list[PolicyFile] = []
    for relative in (f"{VIRTUAL_SERVICES}/{service}.yaml", GATEWAY_ROUTES):
        path = root / relative
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        documents = list(handler.load_all(text))
        # A file the round trip would reformat is edited by hand, not rewritten wholesale.
        if dump(documents) != text:
            raise CanaryError(
                f"{relative}: rewriting it would change more than the weights (its layout "
                "differs from 2-space mappings, sequences indented 4 with offset 2); "
                "edit the weights by hand"
            )
        policy = PolicyFile(path, relative, documents)
        policy.splits = list(splits(documents, service, relative))
        if policy.splits:
            found.append(policy)
    if not found:
        raise CanaryError(
            f"no route of {service} splits between subsets stable and canary in "
            f"{VIRTUAL_SERVICES}/{service}.yaml or {GATEWAY_ROUTES}"
        )
    return found


def current_weight(routes: list[Split]) -> int:
    """The canary weight every route shares; CanaryError (exit 1) listing them if they differ."""
    weights = {split.weights[1] for split in routes}
    if len(weights) != 1:
        listing = "\n".join(f"  {split.describe()}" for split in routes)
        raise CanaryError(
            "the routes disagree on the canary weight; set one with "
            f"`his canary <service> set <weight>` or `rollback`:\n{listing}",
            status=1,
        )
    return weights.pop()


def target_weight(action: str, weight: int | None, routes: list[Split]) -> int | None:
    """The canary weight the action asks for, or None when there is nothing to do."""
    if action == "rollback":
        return 0
    if action == "set":
        if weight not in PLAN:
            raise CanaryError(f"weight {weight} is not a step of the plan {_PLAN_TEXT}")
        return weight
    now = current_weight(routes)
    later = [step for step in PLAN if step > now]
    return later[0] if later else None


def edit(files: list[PolicyFile], weight: int) -> list[Change]:
    """Set canary `weight` and stable 100 - `weight` on every split route, in memory."""
    changes: list[Change] = []
    for policy in files:
        for split in policy.splits:
            new = (100 - weight, weight)
            if split.weights != new:
                changes.append(Change(split.file, split.route, split.weights, new))
                split.stable["weight"] = new[0]
                split.canary["weight"] = new[1]
    return changes


def basic_problems(texts: Mapping[str, str], service: str, weight: int) -> list[str]:
    """What can be checked without rendering: the edit parses back and the weights are right."""
    problems: list[str] = []
    for relative, text in texts.items():
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            problems.append(f"{relative}: does not parse after the edit: {error}")
            continue
        for split in splits(documents, service, relative):
            stable, canary = split.weights
            if stable + canary != 100 or canary != weight:
                problems.append(
                    f"{relative}  {split.route}: weights {stable} + {canary} after the edit, "
                    f"expected {100 - weight} + {weight}"
                )
    return problems


def full_check(root: Path, texts: Mapping[str, str]) -> list[str] | None:
    """Findings of `his mesh check` on a copy holding the edit; None when kubectl is missing."""
    from his.mesh.check import CheckUnavailable, run_check  # noqa: PLC0415 - written alongside

    with tempfile.TemporaryDirectory(prefix="his-canary-") as scratch:
        copy = Path(scratch)
        for tree in _COPIED:
            if (root / tree).is_dir():
                shutil.copytree(root / tree, copy / tree)
        for relative, text in texts.items():
            (copy / relative).write_text(text, encoding="utf-8")
        try:
            report = run_check(copy)
        except KubectlMissing:
            return None
        except CheckUnavailable as error:
            if isinstance(error.__cause__, KubectlMissing):
                return None
            raise CanaryError(f"cannot run his mesh check: {error}") from error
    return [str(finding) for finding in report.findings]


def write(root: Path, texts: Mapping[str, str]) -> None:
    """Replace each file atomically (temp file in the same directory, then os.replace)."""
    for relative, text in texts.items():
        path = root / relative
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
                out.write(text)
            shutil.copymode(path, temporary)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def status(files: list[PolicyFile]) -> int:
    """Print every split route and the weight they share (or that they disagree)."""
    routes = [split for policy in files for split in policy.splits]
    for split in routes:
        print(split.describe())
    canaries = {split.weights[1] for split in routes}
    if len(canaries) == 1:
        print(f"canary weight {canaries.pop()}% (plan {_PLAN_TEXT})")
    else:
        print(f"the routes disagree on the canary weight (plan {_PLAN_TEXT})")
    return 0


def change(root: Path, service: str, action: str, weight: int | None) -> int:
    """set / promote / rollback: edit, validate on a copy, then write."""
    files = load(root, service)
    routes = [split for policy in files for split in policy.splits]
    target = target_weight(action, weight, routes)
    if target is None:
        print(
            f"{service} is fully promoted: the canary takes 100% on every route. The next "
            "release makes v2 the stable Deployment; once stable runs it, `his canary "
            f"{service} rollback` returns the weights to stable 100 for the next canary."
        )
        return 0
    changes = edit(files, target)
    if not changes:
        print(f"nothing to change: every route of {service} already sends {target}% to canary")
        return 0
    touched = {change.file for change in changes}
    texts = {p.relative: dump(p.documents) for p in files if p.relative in touched}
    problems = basic_problems(texts, service, target)
    if problems:
        raise CanaryError("the edit would be wrong; nothing written:\n" + "\n".join(problems), 1)
    findings = full_check(root, texts)
    if findings:
        listing = "\n".join(findings)
        raise CanaryError(
            f"his mesh check fails with the edit; nothing written:\n{listing}\n"
            "(findings may predate this change: `his mesh check` shows the repository's own)",
            status=1,
        )
    write(root, texts)
    for done in changes:
        print(done)
    if findings is None:
        print(
            "warning: kubectl is missing, so the full `his mesh check` was skipped; only "
            "parsing and weights were checked. Run `his mesh check` where kubectl exists."
        )
    print(f"{service}: canary weight {target}% (plan {_PLAN_TEXT})")
    return 0


def contract_only(root: Path, service: str, action: str) -> int:
    """A service no server implements yet: say so; show its routes, never move its weights."""
    said = (
        f"{service} is contract-only: its API is defined (protos/his/{service}/v1) but no "
        "server implements it yet, so it has no stable or canary pods to move calls between"
    )
    if action != "status":
        raise CanaryError(f"{said}; nothing changed", status=1)
    print(said)
    try:
        files = load(root, service)
    except CanaryError as error:
        print(error)
        return 0
    return status(files)


def command(args: argparse.Namespace) -> int:
    """The `his canary` command."""
    try:
        entry = lookup(args.service)
        root = repository_root(args.root)
        if not entry.implemented:
            return contract_only(root, args.service, args.action)
        if args.action == "status":
            return status(load(root, args.service))
        return change(root, args.service, args.action, getattr(args, "weight", None))
    except (RootNotFound, ValueError) as error:
        print(f"his canary: {error}", file=sys.stderr)
        return 2
    except CanaryError as error:
        print(f"his canary: {error}", file=sys.stderr)
        return error.status
