"""Settings of the iam service (`HIS_IAM_*`, plus the shared `HIS_AUTH_*` names of the issuer)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from his.base.env import ConfigError

# The longest token lifetime the contract allows (IssueTokenResponse.expire_time: at most 12 h).
MAX_TOKEN_TTL_S = 12 * 3600
_USERNAME = re.compile(r"[a-z][a-z0-9._-]{2,63}")


@dataclass(frozen=True)
class IamConfig:
    """How the local identity provider signs tokens, who may log in, and break-the-glass limits."""

    # PEM files of RSA private keys: the first signs, the others are only published in the JWKS
    # (retired keys whose tokens may still be alive). Empty: a development key is generated once
    # into `<data_dir>/secrets/iam-signing-key.pem`.
    signing_key_paths: tuple[Path, ...] = ()
    issuer: str = "https://iam.his.local"
    audience: str = "his"
    token_ttl_s: int = 3600
    # The one development password every staff member logs in with. Empty: no staff login.
    dev_credential: str = field(default="", repr=False)
    # Services log in as `service:{name}` with HMAC-SHA256(this key, name). Empty: no service login.
    service_credential_key: bytes = field(default=b"", repr=False)
    # Off in production (an external identity provider): IssueToken and GetJwks are UNIMPLEMENTED.
    local_provider: bool = True
    emergency_default_s: int = 3600
    emergency_max_s: int = 4 * 3600
    emergency_min_s: int = 60
    # An ADMINISTRATOR created before the first token is issued when no staff member exists at
    # all (the first login of a new installation); empty: none.
    bootstrap_admin: str = "admin"
    # Where local secrets live (HIS_DATA_DIR, as for embedded PostgreSQL).
    data_dir: Path = Path(".his")

    def __post_init__(self) -> None:
        if not 1 <= self.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ConfigError(f"HIS_IAM_TOKEN_TTL_S must be 1 to {MAX_TOKEN_TTL_S} seconds")
        if not 1 <= self.emergency_min_s <= self.emergency_default_s <= self.emergency_max_s:
            raise ConfigError(
                "emergency access durations must satisfy 1 <= HIS_IAM_EMERGENCY_MIN_S <= "
                "HIS_IAM_EMERGENCY_DEFAULT_S <= HIS_IAM_EMERGENCY_MAX_S"
            )
        if self.bootstrap_admin and not _USERNAME.fullmatch(self.bootstrap_admin):
            raise ConfigError(
                "HIS_IAM_BOOTSTRAP_ADMIN must be a username (3 to 64 of a-z, 0-9, '.', '_', '-', "
                "starting with a letter) or empty"
            )

    @property
    def generated_key_path(self) -> Path:
        """Where the development signing key is kept when no key is configured."""
        return self.data_dir / "secrets" / "iam-signing-key.pem"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IamConfig:
        """Read HIS_IAM_*, HIS_AUTH_ISSUER, HIS_AUTH_AUDIENCE, HIS_SERVICE_CREDENTIAL_KEY and
        HIS_DATA_DIR."""
        paths = tuple(
            Path(part.strip())
            for part in (env.get("HIS_IAM_SIGNING_KEYS") or "").split(",")
            if part.strip()
        )
        return cls(
            signing_key_paths=paths,
            issuer=env.get("HIS_AUTH_ISSUER") or "https://iam.his.local",
            audience=env.get("HIS_AUTH_AUDIENCE") or "his",
            token_ttl_s=_int(env, "HIS_IAM_TOKEN_TTL_S", 3600),
            dev_credential=env.get("HIS_IAM_DEV_CREDENTIAL") or "",
            service_credential_key=(env.get("HIS_SERVICE_CREDENTIAL_KEY") or "").encode(),
            local_provider=_switch(env, "HIS_IAM_LOCAL_PROVIDER", default=True),
            emergency_default_s=_int(env, "HIS_IAM_EMERGENCY_DEFAULT_S", 3600),
            emergency_max_s=_int(env, "HIS_IAM_EMERGENCY_MAX_S", 4 * 3600),
            emergency_min_s=_int(env, "HIS_IAM_EMERGENCY_MIN_S", 60),
            bootstrap_admin=env.get("HIS_IAM_BOOTSTRAP_ADMIN", "admin").strip(),
            data_dir=Path(env.get("HIS_DATA_DIR") or ".his"),
        )


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None


def _switch(env: Mapping[str, str], key: str, *, default: bool) -> bool:
    raw = (env.get(key) or "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{key} must be on or off, got {raw!r}")
