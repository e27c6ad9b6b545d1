"""Configuration from `HIS_*` environment variables into frozen dataclasses, loaded once.

Every setting has a default that works on a developer machine; containers override through the
environment (ConfigMaps and Secrets in Kubernetes). Nothing else in the code reads the environment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from his.runtime.catalog import CATALOG, lookup
from his.runtime.secret_files import json_once

if TYPE_CHECKING:
    from his.runtime.fieldcrypt import CryptoConfig
    from his.runtime.pseudonyms import ResearchConfig


class ConfigError(ValueError):
    """A `HIS_*` variable holds a value the service cannot use."""


def _int(env: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{key} must not be negative, got {value}")
    return value


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(key) or default
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class DatabaseConfig:
    """Where the service's PostgreSQL is and how many connections it may hold."""

    # Any PostgreSQL: postgresql://user:pass@host:5432/db. Unset means embedded PostgreSQL.
    url: str | None = None
    # Where embedded PostgreSQL keeps its data between runs (HIS_DATA_DIR/pgdata).
    data_dir: Path = Path(".his")
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout_s: float = 3.0
    # How often the health watcher pings the database, and how long one ping may take.
    health_interval_s: float = 1.0
    health_timeout_s: float = 2.0
    # Per-statement limit so a stuck query cannot hold a call past any sane deadline.
    statement_timeout_ms: int = 5000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DatabaseConfig:
        """Read HIS_DATABASE_URL, HIS_DATA_DIR and the HIS_DB_* pool settings."""
        return cls(
            url=env.get("HIS_DATABASE_URL") or None,
            data_dir=Path(env.get("HIS_DATA_DIR") or ".his"),
            pool_size=_int(env, "HIS_DB_POOL_SIZE", 10, minimum=1),
            max_overflow=_int(env, "HIS_DB_MAX_OVERFLOW", 10),
            pool_timeout_s=_float(env, "HIS_DB_POOL_TIMEOUT_S", 3.0),
            health_interval_s=_float(env, "HIS_DB_HEALTH_INTERVAL_S", 1.0),
            health_timeout_s=_float(env, "HIS_DB_HEALTH_TIMEOUT_S", 2.0),
            statement_timeout_ms=_int(env, "HIS_DB_STATEMENT_TIMEOUT_MS", 5000, minimum=1),
        )


# The gRPC health name the liveness probe asks: SERVING while the process serves, whatever the
# database does (his.runtime.health). Every other name is readiness.
LIVENESS = "liveness"


@dataclass(frozen=True)
class ServerConfig:
    """How the gRPC server listens and shuts down."""

    host: str = "[::]"
    port: int = 50051
    # Prometheus metrics over HTTP; 0 picks a free port, -1 turns the endpoint off.
    metrics_port: int = 9051
    # SIGTERM: how long in-flight calls may take to finish before they are cancelled.
    grace_s: float = 10.0
    # SIGTERM: how long to report NOT_SERVING before refusing calls, so load balancers move away.
    drain_delay_s: float = 0.0
    # Calls beyond this many in flight are refused with RESOURCE_EXHAUSTED instead of queueing.
    max_concurrent_rpcs: int = 1000
    # Run the service's migrations before serving (under an advisory lock, so replicas can race).
    migrate: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, port: int, metrics_port: int) -> ServerConfig:
        """Read HIS_HOST, HIS_PORT, HIS_METRICS_PORT, HIS_GRACE_S, HIS_DRAIN_DELAY_S, ..."""
        return cls(
            host=env.get("HIS_HOST") or "[::]",
            port=_int(env, "HIS_PORT", port),
            metrics_port=_int(env, "HIS_METRICS_PORT", metrics_port, minimum=-1),
            grace_s=_float(env, "HIS_GRACE_S", 10.0),
            drain_delay_s=_float(env, "HIS_DRAIN_DELAY_S", 0.0),
            max_concurrent_rpcs=_int(env, "HIS_MAX_CONCURRENT_RPCS", 1000, minimum=1),
            migrate=(env.get("HIS_MIGRATE", "1") not in ("0", "false", "no")),
        )


@dataclass(frozen=True)
class TelemetryConfig:
    """Logs, traces and the names they carry."""

    service_name: str = "his"
    # "json" for containers, "text" for a terminal; "auto" picks by whether stderr is a TTY.
    log_format: str = "auto"
    log_level: str = "INFO"
    # OTLP/gRPC collector, e.g. http://otel-collector:4317. Unset: no exporter (ids still made).
    otlp_endpoint: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, service_name: str) -> TelemetryConfig:
        """Read HIS_LOG_FORMAT, HIS_LOG_LEVEL and HIS_OTLP_ENDPOINT."""
        return cls(
            service_name=service_name,
            log_format=_choice(env, "HIS_LOG_FORMAT", "auto", ("auto", "json", "text")),
            log_level=_choice(env, "HIS_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            otlp_endpoint=env.get("HIS_OTLP_ENDPOINT") or None,
        )


@dataclass(frozen=True)
class ClientConfig:
    """How this process calls other services (the `his_client` SDK)."""

    # service name → host:port. Locally the catalog's ports; in Kubernetes `HIS_<SERVICE>_ADDR`
    # such as `patient.his.svc.cluster.local:50051`.
    addresses: Mapping[str, str] = field(default_factory=dict)
    # "none": the SDK retries idempotent calls itself; "istio": the mesh retries, never the SDK.
    mesh: str = "none"
    # Deadline of a call when the caller gives none (inside a server: never past the caller's own).
    default_timeout_s: float = 5.0
    # Attempts in all (first try + retries) for idempotent calls failing with UNAVAILABLE.
    max_attempts: int = 3
    # Full-jitter exponential backoff between attempts: random in [0, min(cap, base * 2^n)].
    backoff_base_s: float = 0.05
    backoff_max_s: float = 1.0
    # Circuit breaker per upstream: opens after this many consecutive failures ...
    breaker_fail_max: int = 5
    # ... and lets a trial call through after this many seconds.
    breaker_reset_s: float = 10.0

    @property
    def retries_enabled(self) -> bool:
        """Client retries are off inside the mesh: it retries once per call, never both."""
        return self.mesh != "istio" and self.max_attempts > 1

    def address(self, service: str) -> str:
        """Where `service` listens."""
        return self.addresses.get(service) or f"localhost:{lookup(service).port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientConfig:
        """Read HIS_MESH, HIS_<SERVICE>_ADDR and the HIS_CLIENT_* settings."""
        return cls(
            addresses={
                entry.name: env.get(f"HIS_{entry.name.upper()}_ADDR") or f"localhost:{entry.port}"
                for entry in CATALOG
            },
            mesh=_choice(env, "HIS_MESH", "none", ("none", "istio")),
            default_timeout_s=_float(env, "HIS_CLIENT_TIMEOUT_S", 5.0),
            max_attempts=_int(env, "HIS_CLIENT_MAX_ATTEMPTS", 3, minimum=1),
            backoff_base_s=_float(env, "HIS_CLIENT_BACKOFF_BASE_S", 0.05),
            backoff_max_s=_float(env, "HIS_CLIENT_BACKOFF_MAX_S", 1.0),
            breaker_fail_max=_int(env, "HIS_CLIENT_BREAKER_FAIL_MAX", 5, minimum=1),
            breaker_reset_s=_float(env, "HIS_CLIENT_BREAKER_RESET_S", 10.0),
        )


@dataclass(frozen=True)
class AuthConfig:
    """How callers prove who they are (bearer JWTs) and how this service proves who it is."""

    # Off only for benchmarks that measure what security costs; refused inside the mesh.
    enabled: bool = True
    issuer: str = "https://iam.his.local"
    audience: str = "his"
    # Where the token-signing public keys come from: a JWKS file, a JWKS URL (an external identity
    # provider), or, when neither is set, the local iam service's GetJwks.
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # How often the key set may be fetched again when a token names an unknown key id.
    jwks_refresh_s: float = 30.0
    # How old the key set may get before it is fetched again anyway (a withdrawn key stops
    # verifying tokens within this time).
    jwks_max_age_s: float = 300.0
    # Clock skew tolerated on `exp`/`iat`/`nbf`.
    leeway_s: float = 30.0
    # This service's own token: a file kept fresh by the platform (Kubernetes projected token)...
    service_token_file: Path | None = None
    # ... or, locally, a login at iam with a credential derived from this shared key.
    service_credential_key: bytes = field(default=b"", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthConfig:
        """Read HIS_SECURITY, HIS_AUTH_* and HIS_SERVICE_* settings."""
        enabled = _choice(env, "HIS_SECURITY", "on", ("on", "off")) == "on"
        if not enabled and env.get("HIS_MESH") == "istio":
            raise ConfigError("HIS_SECURITY=off is for benchmarks; refused with HIS_MESH=istio")
        jwks_file = env.get("HIS_AUTH_JWKS_FILE")
        token_file = env.get("HIS_SERVICE_TOKEN_FILE")
        return cls(
            enabled=enabled,
            issuer=env.get("HIS_AUTH_ISSUER") or "https://iam.his.local",
            audience=env.get("HIS_AUTH_AUDIENCE") or "his",
            jwks_file=Path(jwks_file) if jwks_file else None,
            jwks_url=env.get("HIS_AUTH_JWKS_URL") or None,
            jwks_refresh_s=_float(env, "HIS_AUTH_JWKS_REFRESH_S", 30.0),
            jwks_max_age_s=_float(env, "HIS_AUTH_JWKS_MAX_AGE_S", 300.0),
            leeway_s=_float(env, "HIS_AUTH_LEEWAY_S", 30.0),
            service_token_file=Path(token_file) if token_file else None,
            service_credential_key=(env.get("HIS_SERVICE_CREDENTIAL_KEY") or "").encode(),
        )


@dataclass(frozen=True)
class ServiceConfig:
    """Everything one service process needs, built once in `load`."""

    name: str
    server: ServerConfig
    database: DatabaseConfig
    telemetry: TelemetryConfig
    clients: ClientConfig = field(default_factory=ClientConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # Key for opaque page tokens, so a client cannot forge a cursor into someone else's filter
    # (HIS_PAGE_TOKEN_KEY; required in the mesh, made once per data directory locally).
    page_token_key: bytes = field(default=b"his-test-page-token-key-not-for-use", repr=False)
    # Keys of encrypted identifiers and their blind indexes (HIS_CRYPTO_*).
    crypto: CryptoConfig = field(default_factory=lambda: _crypto({}))
    # The key of research pseudonyms (HIS_RESEARCH_PSEUDONYM_KEY), for de-identified exports.
    research: ResearchConfig = field(default_factory=lambda: _research({}))
    # The HIS_* variables this config was built from, for settings only one service has (its
    # own frozen dataclass reads them, e.g. `IamConfig.from_env(config.environment)`).
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)


def load(service: str, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Build the configuration of `service` from the environment (or a given mapping)."""
    source = os.environ if env is None else env
    entry = lookup(service)
    return ServiceConfig(
        name=service,
        server=ServerConfig.from_env(source, port=entry.port, metrics_port=entry.metrics_port),
        database=DatabaseConfig.from_env(source),
        telemetry=TelemetryConfig.from_env(source, service_name=f"his-{service}"),
        clients=ClientConfig.from_env(source),
        auth=AuthConfig.from_env(source),
        page_token_key=_page_token_key(source),
        crypto=_crypto(source),
        research=_research(source),
        environment={k: v for k, v in source.items() if k.startswith("HIS_")},
    )


PAGE_TOKEN_KEY_MIN_BYTES = 32


def _page_token_key(env: Mapping[str, str]) -> bytes:
    """HIS_PAGE_TOKEN_KEY; in the mesh it must be set, locally one is made once per data
    directory. Never a constant: with a known key anyone could forge a cursor."""
    raw = env.get("HIS_PAGE_TOKEN_KEY") or ""
    if raw:
        if len(raw.encode()) < PAGE_TOKEN_KEY_MIN_BYTES:
            raise ConfigError(
                f"HIS_PAGE_TOKEN_KEY must be at least {PAGE_TOKEN_KEY_MIN_BYTES} bytes "
                "(e.g. openssl rand -base64 32)"
            )
        return raw.encode()
    if env.get("HIS_MESH") == "istio":
        raise ConfigError("HIS_PAGE_TOKEN_KEY is required with HIS_MESH=istio")
    path = Path(env.get("HIS_DATA_DIR") or ".his") / "secrets" / "page-tokens.json"
    stored = json_once(path, lambda: {"page_token_key": secrets.token_urlsafe(32)})
    return str(stored["page_token_key"]).encode()


def _crypto(env: Mapping[str, str]) -> CryptoConfig:
    from his.runtime.fieldcrypt import CryptoConfig  # noqa: PLC0415  (fieldcrypt imports config)

    return CryptoConfig.from_env(env)


def _research(env: Mapping[str, str]) -> ResearchConfig:
    from his.runtime.pseudonyms import ResearchConfig  # noqa: PLC0415  (pseudonyms imports config)

    return ResearchConfig.from_env(env)
