"""Whether a service's schema is at its newest migration, without importing Alembic.

Start-up asks this first: when the schema is at head (every start but the first after a
release), serving needs none of Alembic's ~0.4 s of imports. The revisions are read from the
migration files themselves (`revision = "…"`, `down_revision = "…"`), so there is no second list
to keep.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

from sqlalchemy import text

from his.runtime.database import Database

_REVISION = re.compile(r'^revision(?::\s*str)?\s*=\s*"([^"]+)"', re.MULTILINE)
_DOWN = re.compile(r'^down_revision(?::[^=]+)?=\s*(?:"([^"]+)"|None)', re.MULTILINE)


@cache
def head_revision(service: str) -> str | None:
    """The newest revision of `service`'s migrations (None when the history is not one line)."""
    spec = importlib.util.find_spec(f"his.{service}")
    if spec is None or spec.origin is None:
        return None
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (Path(spec.origin).parent / "migrations" / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN.search(source)
        if revision is None or down is None:
            continue
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    return next(iter(heads)) if len(heads) == 1 else None


async def at_head(database: Database, service: str) -> bool:
    """Whether the schema's recorded revision is the newest one (False when unsure)."""
    head = head_revision(service)
    if head is None:
        return False
    try:
        async with database.read() as session:
            current = await session.scalar(
                text(f'SELECT version_num FROM "{service}".alembic_version')  # noqa: S608
            )
    except Exception:
        return False
    return bool(current == head)
