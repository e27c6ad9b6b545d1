"""`his up` gives each service its own credential (issue 17, ADR 0007): the key they derive from is
made once under the data directory (mode 0600) and handed to iam alone."""

from __future__ import annotations

import stat
from pathlib import Path

from his.base.catalog import implemented
from his.local import service_env
from his.local_secrets import FILE, local_secrets
from his_client.credentials import service_credential

SERVICES = sorted(entry.name for entry in implemented())
SHELL = {
    "PATH": "/usr/bin",
    # Credentials in the caller's shell must not reach every service.
    "HIS_SERVICE_CREDENTIAL_KEY": "from-the-shell",
    "HIS_SERVICE_CREDENTIAL": "from-the-shell",
    "HIS_IAM_DEV_CREDENTIAL": "from-the-shell",
}


def test_the_key_is_made_once_under_the_data_directory_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    first = local_secrets(tmp_path, env={})
    again = local_secrets(tmp_path, env={})

    path = tmp_path / "secrets" / FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert again == first
    assert len(first.service_credential_key) >= 32


def test_each_service_is_started_with_its_own_credential_and_only_iam_with_the_key(
    tmp_path: Path,
) -> None:
    secrets = local_secrets(tmp_path, env={})

    envs = {name: service_env(SHELL, secrets, name, "postgresql://x") for name in SERVICES}

    credentials = {name: env["HIS_SERVICE_CREDENTIAL"] for name, env in envs.items()}
    assert len(set(credentials.values())) == len(SERVICES)
    key = secrets.service_credential_key.encode()
    for name, env in envs.items():
        assert credentials[name] == service_credential(key, name)
        assert "from-the-shell" not in env.values()
        if name == "iam":
            assert env["HIS_SERVICE_CREDENTIAL_KEY"] == secrets.service_credential_key
            assert env["HIS_IAM_DEV_CREDENTIAL"] == secrets.dev_credential
        else:
            assert "HIS_SERVICE_CREDENTIAL_KEY" not in env
            assert "HIS_IAM_DEV_CREDENTIAL" not in env
