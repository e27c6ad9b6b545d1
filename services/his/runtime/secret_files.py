"""Local development secrets on disk: made once, private, and the same for racing processes.

Only for a developer's machine (`his up`, `his serve` without configured keys); in Kubernetes
secrets come from the environment and nothing here runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def write_once(path: Path, content: bytes) -> None:
    """Create `path` (mode 0600, its directory 0700) holding `content`, unless it exists.

    The content is written under a temporary name and hard-linked into place: a reader never
    sees half a file, and of processes starting together exactly one wins — all use its file.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def json_once(path: Path, make: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON document at `path`, made by `make()` and written once if there is none yet."""
    if not path.exists():
        write_once(path, json.dumps(make()).encode())
    return dict(json.loads(path.read_text(encoding="utf-8")))
