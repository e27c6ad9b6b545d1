"""Secrets of a local hospital (`his up`): generated once into `<HIS_DATA_DIR>/secrets/`.

In Kubernetes these come from Secrets through the environment and this module is never used.
Locally, `his up` hands them to every service it starts, and `his token` logs in with them.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FILE = "local.json"


@dataclass(frozen=True)
class LocalSecrets:
    """The development password of every staff member and the key services log in with."""

    dev_credential: str
    service_credential_key: str

    def env(self) -> dict[str, str]:
        """The HIS_* variables that carry these secrets to a service."""
        return {
            "HIS_IAM_DEV_CREDENTIAL": self.dev_credential,
            "HIS_SERVICE_CREDENTIAL_KEY": self.service_credential_key,
        }


def local_secrets(data_dir: Path, env: Mapping[str, str] | None = None) -> LocalSecrets:
    """The environment's secrets when set, else those in the data directory (made once, 0600)."""
    source = os.environ if env is None else env
    if source.get("HIS_IAM_DEV_CREDENTIAL") and source.get("HIS_SERVICE_CREDENTIAL_KEY"):
        return LocalSecrets(source["HIS_IAM_DEV_CREDENTIAL"], source["HIS_SERVICE_CREDENTIAL_KEY"])
    path = data_dir / "secrets" / FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        made = {
            "dev_credential": secrets.token_urlsafe(12),
            "service_credential_key": secrets.token_urlsafe(32),
        }
        # Written under a temporary name and renamed, so a reader never sees half a file.
        temporary = path.with_name(f".{FILE}.{os.getpid()}")
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(made, f)
        os.replace(temporary, path)
    stored = json.loads(path.read_text(encoding="utf-8"))
    return LocalSecrets(str(stored["dev_credential"]), str(stored["service_credential_key"]))
