"""Logging in to the local identity provider from the command line (`his token`, demo, export).

Development only. Staff log in with their own password and, for clinical and administrator
roles, a TOTP code. Locally those are known: the bootstrap administrator's are derived from the
development seed (his.iam.dev_credentials), and the staff `his up --demo` (or a benchmark)
enrolled are kept in `<data_dir>/secrets/staff-credentials.json` (0600), from which the TOTP code
of the moment is computed.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from his.iam import dev_credentials
from his.iam.v1 import iam_service_pb2 as iam_pb
from his.local_secrets import FILE, local_secrets
from his_client import HisClients
from his_client.config import ClientConfig

STAFF_FILE = "staff-credentials.json"


@dataclass(frozen=True)
class KnownCredential:
    """A staff member's development password and TOTP secret."""

    password: str
    totp_secret: str


def _data_dir(data_dir: Path | None) -> Path:
    return data_dir or Path(os.environ.get("HIS_DATA_DIR") or ".his")


def local_login_possible(data_dir: Path | None = None) -> bool:
    """Whether there is a development credential to log in with: `his up` has run in this data
    directory (its secrets exist) or the environment carries them."""
    in_env = os.environ.get("HIS_IAM_DEV_CREDENTIAL") and os.environ.get(
        "HIS_SERVICE_CREDENTIAL_KEY"
    )
    return bool(in_env) or (_data_dir(data_dir) / "secrets" / FILE).is_file()


def staff_credentials_path(data_dir: Path) -> Path:
    """Where the development credentials of enrolled staff are kept."""
    return data_dir / "secrets" / STAFF_FILE


def _stored(data_dir: Path) -> dict[str, dict[str, str]]:
    path = staff_credentials_path(data_dir)
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def save_credentials(data_dir: Path, credentials: Mapping[str, KnownCredential]) -> None:
    """Add (or replace) staff members' development credentials in the private file."""
    stored = _stored(data_dir)
    stored.update(
        {
            username: {"password": known.password, "totp_secret": known.totp_secret}
            for username, known in credentials.items()
        }
    )
    path = staff_credentials_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(stored, handle, indent=1, sort_keys=True)
    # Replaced in one step: a concurrent reader sees the old file or the new one.
    temporary.replace(path)


def known_credential(username: str, data_dir: Path | None = None) -> KnownCredential | None:
    """The development credential of `username`, if this machine knows it."""
    directory = _data_dir(data_dir)
    if username == (os.environ.get("HIS_IAM_BOOTSTRAP_ADMIN") or "admin"):
        seed = local_secrets(directory).dev_credential
        return KnownCredential(
            dev_credentials.password(seed, username), dev_credentials.totp_secret(seed, username)
        )
    entry = _stored(directory).get(username)
    if entry is None:
        return None
    return KnownCredential(entry["password"], entry["totp_secret"])


async def issue_token(
    username: str, *, data_dir: Path | None = None, config: ClientConfig | None = None
) -> str:
    """A token for `username` from the local iam (found through `config`, default the
    environment's), with their development password and current TOTP code."""
    known = known_credential(username, data_dir)
    if known is None:
        raise LookupError(
            f"no development credential is known for {username!r} here: enrol them first "
            "(`his up --demo` enrols the demo staff)"
        )
    async with HisClients(config or ClientConfig.from_env(os.environ)) as his:
        reply = await his.iam.IssueToken(
            iam_pb.IssueTokenRequest(
                username=username,
                credential=known.password,
                totp_code=dev_credentials.totp_code(known.totp_secret),
            ),
            timeout=10.0,
        )
    return reply.access_token


class SecondAdministratorNeeded(RuntimeError):
    """The enrolment needs a second administrator's approval and none was given."""


async def enrol(
    admin: HisClients,
    staff: str,
    username: str,
    *,
    data_dir: Path | None = None,
) -> KnownCredential:
    """Enrol a staff member (`staff/{id}`) through the public rpcs, as an administrator's
    clients, with their development password; keep the credential for `issue_token`. When the
    enrolment needs a second administrator (a re-enrolment, or a clinical or administrator role),
    this raises SecondAdministratorNeeded (the demo has one administrator); the half-made
    enrolment it created stays on record, unusable without a second administrator's half, until
    it expires or a newer one retires it; it has retired the staff member's earlier open codes
    (a new code always does), while their credential, if any, stays as it was."""
    directory = _data_dir(data_dir)
    seed = local_secrets(directory).dev_credential
    enrolment = await admin.iam.CreateStaffEnrolment(
        iam_pb.CreateStaffEnrolmentRequest(parent=staff), timeout=10.0
    )
    if enrolment.approval_required:
        raise SecondAdministratorNeeded(
            f"enrolling {username!r} needs a second administrator (ApproveStaffEnrolment "
            f"of {enrolment.name})"
        )
    password = dev_credentials.password(seed, username)
    enrolled = await admin.iam.CompleteStaffEnrolment(
        iam_pb.CompleteStaffEnrolmentRequest(
            username=username,
            enrolment_code=enrolment.enrolment_code,
            password=password,
        ),
        timeout=10.0,
    )
    known = KnownCredential(password, enrolled.totp_secret)
    save_credentials(directory, {username: known})
    return known
