"""One problem found in the policy: which file, which object, what is wrong and how to fix it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, order=True)
class Finding:
    """A single line of `his mesh check` output."""

    file: str  # path relative to the repository root, or the overlay when no file is known
    subject: str  # `Kind namespace/name`, plus the place inside it (`http[0].retries`)
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.subject}: {self.problem}; fix: {self.fix}"


def subject(manifest: dict[str, object], where: str = "") -> str:
    """`Kind namespace/name` of a manifest, with an optional place inside it."""
    metadata = manifest.get("metadata")
    meta = metadata if isinstance(metadata, dict) else {}
    namespace = meta.get("namespace")
    name = meta.get("name", "?")
    qualified = f"{namespace}/{name}" if namespace else str(name)
    text = f"{manifest.get('kind', '?')} {qualified}"
    return f"{text} {where}" if where else text


class Writer(Protocol):
    """What wrote a field into a rendered object other than the object's own file: a kustomize
    patch (`his.mesh.kustomize_lint.Patch`). Printed as where it is listed."""

    @property
    def written_in(self) -> str: ...


def located(
    file: str,
    manifest: dict[str, object],
    where: str,
    problem: str,
    fix: str,
    *,
    writers: Sequence[Writer] = (),
) -> list[Finding]:
    """The findings about one field: in the object's own file, or, when patches wrote the
    field, in each patch's file with the patch named (the file an SRE must edit)."""
    if not writers:
        return [Finding(file, subject(manifest, where), problem, fix)]
    return [
        Finding(
            writer.written_in, f"{subject(manifest, where)}, patched in by {writer}", problem, fix
        )
        for writer in writers
    ]


def grouped(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per mistake: findings that say the same problem and fix about the same
    object in the same file, at several places (every gateway route sharing one CORS anchor,
    every item a misspelt field was copied into), become one finding listing the places.

    The subject keeps the place the findings share (`corsPolicy.exposeHeaders`); the problem
    ends with how many places and which (`http[0] patient-reads, http[1] ...`). Sorted, so the
    same mistake seen in two overlays is the same finding.
    """
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for item in findings:
        thing, place = _split_subject(item.subject)
        groups.setdefault((item.file, thing, item.problem, item.fix), []).append(place)
    merged: list[Finding] = []
    for (file, thing, problem, fix), places in groups.items():
        unique = sorted(set(places), key=_natural)
        if len(unique) == 1:
            merged.append(Finding(file, f"{thing} {unique[0]}".rstrip(), problem, fix))
            continue
        where = _shared_tail(unique)
        heads = [p[: len(p) - len(where)].rstrip(" .") if where else p for p in unique]
        listed = ", ".join(heads)
        merged.append(
            Finding(
                file,
                f"{thing} {where}".rstrip(),
                f"{problem} (at {len(unique)} places: {listed})",
                fix,
            )
        )
    return sorted(merged)


_PATCHED = ", patched in by "


def one_per_patch(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per mistake in a patch: a patch applied to many objects (prod's resources
    patch to every Deployment) gives the same finding about each; they become one finding
    listing the objects. The object's own name in the problem (its HorizontalPodAutoscaler
    of the same name) reads `<each>`."""
    groups: dict[tuple[str, str, str, str, str, str], list[Finding]] = {}
    kept: list[Finding] = []
    for item in findings:
        head, sep, writer = item.subject.partition(_PATCHED)
        parts = head.split(" ", 2)
        if not sep or len(parts) < 2 or "/" not in parts[1]:
            kept.append(item)
            continue
        kind, qualified = parts[0], parts[1]
        namespace = qualified.partition("/")[0]
        place = parts[2] if len(parts) > 2 else ""
        problem = item.problem.replace(qualified + " ", f"{namespace}/<each> ")
        key = (item.file, kind, place, writer, problem, item.fix)
        groups.setdefault(key, []).append(item)
    for (file, kind, place, writer, problem, fix), items in groups.items():
        if len(items) == 1:
            kept.extend(items)
            continue
        names = sorted({i.subject.split(" ", 2)[1] for i in items}, key=_natural)
        where = f" {place}" if place else ""
        kept.append(
            Finding(
                file,
                f"{kind} {', '.join(names)} ({len(names)} objects){where}{_PATCHED}{writer}",
                problem,
                fix,
            )
        )
    return sorted(kept)


def _split_subject(text: str) -> tuple[str, str]:
    """`Kind namespace/name place` → (`Kind namespace/name`, `place`)."""
    parts = text.split(" ", 2)
    return " ".join(parts[:2]), parts[2] if len(parts) > 2 else ""


def _shared_tail(places: list[str]) -> str:
    """The end all places share, from a field boundary (` ` or `.`), never a whole place:
    `corsPolicy.exposeHeaders` of `http[0] patient-reads corsPolicy.exposeHeaders`, ...;
    `retries.perTryTimeout` of `spec.http[0].retries.perTryTimeout`, ..."""
    shortest = min(len(p) for p in places)
    size = 0
    while size < shortest and len({p[len(p) - size - 1] for p in places}) == 1:
        size += 1
    # Move the start right until every place has a separator just before it.
    while size > 0 and not all(len(p) > size and p[len(p) - size - 1] in " ." for p in places):
        size -= 1
    return places[0][len(places[0]) - size :] if size else ""


def _natural(text: str) -> list[int | str]:
    """`http[2]` before `http[10]`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
