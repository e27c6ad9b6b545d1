"""Secrets of a local hospital (`his up`): generated once into `<HIS_DATA_DIR>/secrets/`.

In Kubernetes these come from Secrets through the environment and this module is never used.
Locally, `his up` hands each service it starts its own share (`LocalSecrets.env`), and
`his token` derives the development credentials it logs in with from them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from his.runtime.config import CREDENTIAL_ISSUER
from his.runtime.secret_files import json_once
from his_client.credentials import service_credential

FILE = "local.json"


@dataclass(frozen=True)
class LocalSecrets:
    """The development seed (the bootstrap administrator's and the demo staff's known passwords
    and TOTP secrets are derived from it: his.iam.dev_credentials) and the key of the service
    credentials. Both are iam's alone: every other service is handed only its own credential
    (ADR 0007)."""

    dev_credential: str
    service_credential_key: str

    def service_credential(self, service: str) -> str:
        """`service`'s own credential: good for logging in as it and as nothing else."""
        return service_credential(self.service_credential_key.encode(), service)

    def env(self, service: str) -> dict[str, str]:
        """The HIS_* variables that carry one service's secrets to it: its own credential, and
        for iam (which checks every login) the development password and the credential key."""
        env = {"HIS_SERVICE_CREDENTIAL": self.service_credential(service)}
        if service == CREDENTIAL_ISSUER:
            env["HIS_IAM_DEV_CREDENTIAL"] = self.dev_credential
            env["HIS_SERVICE_CREDENTIAL_KEY"] = self.service_credential_key
        return env


def local_secrets(data_dir: Path, env: Mapping[str, str] | None = None) -> LocalSecrets:
    """The environment's secrets when set, else those in the data directory (made once, 0600)."""
    source = os.environ if env is None else env
    if source.get("HIS_IAM_DEV_CREDENTIAL") and source.get("HIS_SERVICE_CREDENTIAL_KEY"):
        return LocalSecrets(source["HIS_IAM_DEV_CREDENTIAL"], source["HIS_SERVICE_CREDENTIAL_KEY"])
    stored = json_once(
        data_dir / "secrets" / FILE,
        lambda: {
            "dev_credential": secrets.token_urlsafe(12),
            "service_credential_key": secrets.token_urlsafe(32),
        },
    )
    return LocalSecrets(str(stored["dev_credential"]), str(stored["service_credential_key"]))
