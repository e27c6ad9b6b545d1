"""One problem found in the policy: which file, which object, what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


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
