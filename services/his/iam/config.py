"""Settings of the iam service (`HIS_IAM_*`, plus the shared `HIS_AUTH_*` names of the issuer)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from his.base.env import ConfigError, integer, switch

# The longest token lifetime the contract allows (IssueTokenResponse.expire_time: at most 12 h).
MAX_TOKEN_TTL_S = 12 * 3600
_USERNAME = re.compile(r"[a-z][a-z0-9._-]{2,63}")


@dataclass(frozen=True)
class SignInConfig:
    """Patient sign-in by phone and one-time code (`HIS_IAM_SIGN_IN_*`).

    Limits are counted in the database over a sliding window, so every iam replica sees the same
    counts. A phone number may ask for `starts_per_phone` codes and a source (the caller's
    address) for `starts_per_source` per window; `failures_per_phone` wrong codes for a number,
    or `failures_per_source` from one source, refuse every completion (even with the right code)
    until the oldest of them is a window old. A source is shared by everyone behind one NAT (a
    hospital's Wi-Fi), hence its higher limits.
    """

    enabled: bool = True
    # How long a code lives, and a patient token.
    code_ttl_s: int = 300
    token_ttl_s: int = 1800
    window_s: int = 900
    starts_per_phone: int = 5
    starts_per_source: int = 200
    failures_per_phone: int = 5
    failures_per_source: int = 100
    # The key of the keyed hashes of codes and phone numbers (HMAC-SHA256); every replica needs
    # the same one. Empty: derived from the first signing key (which the replicas share already).
    hash_key: bytes = field(default=b"", repr=False)
    # Who delivers codes: `local` (the his up log and `<data_dir>/sign-in-codes.log`). A
    # production deployment plugs an SMS gateway's sender into IamService.
    sender: str = "local"

    def __post_init__(self) -> None:
        if not 10 <= self.code_ttl_s <= 3600:
            raise ConfigError("HIS_IAM_SIGN_IN_CODE_TTL_S must be 10 to 3600 seconds")
        if not 60 <= self.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ConfigError(f"HIS_IAM_PATIENT_TOKEN_TTL_S must be 60 to {MAX_TOKEN_TTL_S}")
        if not 60 <= self.window_s <= 24 * 3600:
            raise ConfigError("HIS_IAM_SIGN_IN_WINDOW_S must be 60 to 86400 seconds")
        limits = (
            self.starts_per_phone,
            self.starts_per_source,
            self.failures_per_phone,
            self.failures_per_source,
        )
        if min(limits) < 1:
            raise ConfigError("HIS_IAM_SIGN_IN_* limits must be at least 1")
        if self.sender != "local":
            raise ConfigError("HIS_IAM_SIGN_IN_SENDER must be 'local' (others are plugged in code)")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SignInConfig:
        """Read HIS_IAM_PATIENT_SIGN_IN, HIS_IAM_SIGN_IN_* and HIS_IAM_PATIENT_TOKEN_TTL_S.

        In the mesh (HIS_MESH=istio) the local sender is refused: it writes every code to the
        pod's log, where whoever reads logs could sign in as any patient whose number they
        know, and no patient would ever get a text. Sign-in stays off there until an SMS
        gateway's sender is plugged in."""
        config = cls(
            enabled=switch(env, "HIS_IAM_PATIENT_SIGN_IN", default=True),
            code_ttl_s=integer(env, "HIS_IAM_SIGN_IN_CODE_TTL_S", 300),
            token_ttl_s=integer(env, "HIS_IAM_PATIENT_TOKEN_TTL_S", 1800),
            window_s=integer(env, "HIS_IAM_SIGN_IN_WINDOW_S", 900),
            starts_per_phone=integer(env, "HIS_IAM_SIGN_IN_STARTS_PER_PHONE", 5),
            starts_per_source=integer(env, "HIS_IAM_SIGN_IN_STARTS_PER_SOURCE", 200),
            failures_per_phone=integer(env, "HIS_IAM_SIGN_IN_FAILURES_PER_PHONE", 5),
            failures_per_source=integer(env, "HIS_IAM_SIGN_IN_FAILURES_PER_SOURCE", 100),
            hash_key=(env.get("HIS_IAM_SIGN_IN_KEY") or "").encode(),
            sender=(env.get("HIS_IAM_SIGN_IN_SENDER") or "local").strip(),
        )
        in_mesh = (env.get("HIS_MESH") or "").strip().lower() == "istio"
        if in_mesh and config.enabled and config.sender == "local":
            raise ConfigError(
                "HIS_IAM_PATIENT_SIGN_IN is on with the local sender, which writes codes to the "
                "log: with HIS_MESH=istio plug in an SMS gateway's sender or set "
                "HIS_IAM_PATIENT_SIGN_IN=off"
            )
        return config


@dataclass(frozen=True)
class StaffLoginConfig:
    """Staff passwords, TOTP and their lockout (`HIS_IAM_LOGIN_*`, `HIS_IAM_ENROLMENT_TTL_S`).

    Failed logins and failed enrolments are counted in the database over a sliding window (every
    replica sees the same counts): `failures_per_user` for one username, or `failures_per_source`
    from one source (the caller's address, as for patient sign-in), lock every login of that
    username or from that source, even with the right password, until the oldest failure is a
    window old. A source is shared by everyone behind one NAT (a ward's workstations), hence its
    higher limit.
    """

    window_s: int = 900
    failures_per_user: int = 5
    failures_per_source: int = 50
    # How long an enrolment code works.
    enrolment_ttl_s: int = 24 * 3600
    # The key of the enrolment code and username hashes and of the TOTP secrets' encryption; every
    # replica needs the same one, and it must outlive signing key rotations. Empty: derived from
    # the first signing key (development: rotating that key voids every TOTP secret).
    credential_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not 60 <= self.window_s <= 24 * 3600:
            raise ConfigError("HIS_IAM_LOGIN_WINDOW_S must be 60 to 86400 seconds")
        if min(self.failures_per_user, self.failures_per_source) < 1:
            raise ConfigError("HIS_IAM_LOGIN_FAILURES_PER_* must be at least 1")
        if not 60 <= self.enrolment_ttl_s <= 30 * 24 * 3600:
            raise ConfigError("HIS_IAM_ENROLMENT_TTL_S must be 60 seconds to 30 days")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StaffLoginConfig:
        """Read HIS_IAM_LOGIN_*, HIS_IAM_ENROLMENT_TTL_S and HIS_IAM_CREDENTIAL_KEY."""
        return cls(
            window_s=integer(env, "HIS_IAM_LOGIN_WINDOW_S", 900),
            failures_per_user=integer(env, "HIS_IAM_LOGIN_FAILURES_PER_USER", 5),
            failures_per_source=integer(env, "HIS_IAM_LOGIN_FAILURES_PER_SOURCE", 50),
            enrolment_ttl_s=integer(env, "HIS_IAM_ENROLMENT_TTL_S", 24 * 3600),
            credential_key=(env.get("HIS_IAM_CREDENTIAL_KEY") or "").encode(),
        )


@dataclass(frozen=True)
class IamConfig:
    """How the local identity provider signs tokens, who may log in, and break-the-glass limits."""

    # PEM files of RSA private keys: the first signs, the others are only published in the JWKS
    # (retired keys whose tokens may still be alive). Empty: a development key is generated once
    # into `<data_dir>/secrets/iam-signing-key.pem`.
    signing_key_paths: tuple[Path, ...] = ()
    issuer: str = "https://iam.his.local"
    audience: str = "his"
    # Short: a deactivated staff member's tokens outlive the deactivation by at most this much
    # (the documented revocation bound; README "Security").
    token_ttl_s: int = 900
    # Development only (refused with HIS_MESH=istio): the seed of the bootstrap administrator's
    # known development password and TOTP secret (his.iam.dev_credentials). Empty: none.
    dev_credential: str = field(default="", repr=False)
    # Services log in as `service:{name}` with HMAC-SHA256(this key, name). Only iam holds the
    # key; every other service is handed its own result (ADR 0007). Empty: no service login.
    service_credential_key: bytes = field(default=b"", repr=False)
    # Off in production (an external identity provider): IssueToken and GetJwks are UNIMPLEMENTED.
    local_provider: bool = True
    emergency_default_s: int = 3600
    emergency_max_s: int = 4 * 3600
    emergency_min_s: int = 60
    # An ADMINISTRATOR created before the first token is issued when no staff member exists at
    # all (the first login of a new installation); empty: none.
    bootstrap_admin: str = "admin"
    # Where local secrets live (HIS_DATA_DIR, as for embedded PostgreSQL), and the local
    # sender's file of sign-in codes.
    data_dir: Path = Path(".his")
    sign_in: SignInConfig = SignInConfig()
    login: StaffLoginConfig = StaffLoginConfig()

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

    @property
    def sign_in_codes_path(self) -> Path:
        """Where the local sender appends the sign-in codes it "sends"."""
        return sign_in_codes_path(self.data_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IamConfig:
        """Read HIS_IAM_*, HIS_AUTH_ISSUER, HIS_AUTH_AUDIENCE, HIS_SERVICE_CREDENTIAL_KEY,
        HIS_DATA_DIR and HIS_MESH (a development credential is refused in the mesh)."""
        paths = tuple(
            Path(part.strip())
            for part in (env.get("HIS_IAM_SIGNING_KEYS") or "").split(",")
            if part.strip()
        )
        dev_credential = env.get("HIS_IAM_DEV_CREDENTIAL") or ""
        in_mesh = (env.get("HIS_MESH") or "").strip().lower() == "istio"
        if dev_credential and in_mesh:
            raise ConfigError(
                "HIS_IAM_DEV_CREDENTIAL gives the bootstrap administrator a known development "
                "password: refused with HIS_MESH=istio"
            )
        login = StaffLoginConfig.from_env(env)
        local_provider = switch(env, "HIS_IAM_LOCAL_PROVIDER", default=True)
        if in_mesh and local_provider and not login.credential_key:
            # Derived from the signing key, the TOTP secrets' key would change with the first
            # key rotation, and every clinician and administrator would be locked out for good.
            raise ConfigError(
                "HIS_IAM_CREDENTIAL_KEY is required with HIS_MESH=istio while iam issues staff "
                "tokens (HIS_IAM_LOCAL_PROVIDER on): it must outlive signing-key rotations"
            )
        return cls(
            signing_key_paths=paths,
            issuer=env.get("HIS_AUTH_ISSUER") or "https://iam.his.local",
            audience=env.get("HIS_AUTH_AUDIENCE") or "his",
            token_ttl_s=integer(env, "HIS_IAM_TOKEN_TTL_S", 900),
            dev_credential=dev_credential,
            service_credential_key=(env.get("HIS_SERVICE_CREDENTIAL_KEY") or "").encode(),
            local_provider=local_provider,
            emergency_default_s=integer(env, "HIS_IAM_EMERGENCY_DEFAULT_S", 3600),
            emergency_max_s=integer(env, "HIS_IAM_EMERGENCY_MAX_S", 4 * 3600),
            emergency_min_s=integer(env, "HIS_IAM_EMERGENCY_MIN_S", 60),
            bootstrap_admin=env.get("HIS_IAM_BOOTSTRAP_ADMIN", "admin").strip(),
            data_dir=Path(env.get("HIS_DATA_DIR") or ".his"),
            sign_in=SignInConfig.from_env(env),
            login=login,
        )


def sign_in_codes_path(data_dir: Path) -> Path:
    """The local sender's file of sign-in codes under the `his up` state directory."""
    return data_dir / "sign-in-codes.log"
