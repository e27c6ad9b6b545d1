"""Logging in to the local identity provider from the command line (`his token`, demo, export)."""

from __future__ import annotations

import os
from pathlib import Path

from his.iam.v1 import iam_service_pb2 as iam_pb
from his.local_secrets import FILE, local_secrets
from his_client import HisClients
from his_client.config import ClientConfig


def _data_dir(data_dir: Path | None) -> Path:
    return data_dir or Path(os.environ.get("HIS_DATA_DIR") or ".his")


def local_login_possible(data_dir: Path | None = None) -> bool:
    """Whether there is a development credential to log in with: `his up` has run in this data
    directory (its secrets exist) or the environment carries them."""
    in_env = os.environ.get("HIS_IAM_DEV_CREDENTIAL") and os.environ.get(
        "HIS_SERVICE_CREDENTIAL_KEY"
    )
    return bool(in_env) or (_data_dir(data_dir) / "secrets" / FILE).is_file()


async def issue_token(
    username: str, *, data_dir: Path | None = None, config: ClientConfig | None = None
) -> str:
    """A token for `username` from the local iam (found through `config`, default the
    environment's), with the development credential."""
    credential = local_secrets(_data_dir(data_dir)).dev_credential
    async with HisClients(config or ClientConfig.from_env(os.environ)) as his:
        reply = await his.iam.IssueToken(
            iam_pb.IssueTokenRequest(username=username, credential=credential), timeout=10.0
        )
    return reply.access_token
