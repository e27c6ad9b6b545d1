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

from his.base.catalog import lookup
from his.base.env import ConfigError, choice, integer, number
from his.runtime.peer_identity import DEFAULT_PREFIX as DEFAULT_PEER_PREFIX
from his.runtime.pseudonyms import ResearchConfig
from his.runtime.secret_files import json_once
from his_client.config import ClientConfig

if TYPE_CHECKING:
    from his.runtime.fieldcrypt import CryptoConfig


@dataclass(frozen=True)
class DatabaseConfig:
    """Where the service's PostgreSQL is and how many connections it may hold."""

    # Any PostgreSQL: postgresql://user:pass@host:5432/db. Unset means embedded PostgreSQL.
    url: str | None = None
    # Where embedded PostgreSQL keeps its data between runs (HIS_DATA_DIR/pgdata).
    data_dir: Path = Path(".his")
    # Connections the process may open, `connections` in all: SQLAlchemy's pool (sessions: the
    # ORM's transactions and queries) holds pool_size and opens up to max_overflow more; the
    # driver's pool (his.runtime.driver_pool: the hot paths on asyncpg) up to driver_pool_size.
    pool_size: int = 5
    max_overflow: int = 5
    driver_pool_size: int = 10
    # How long a call waits for a free connection of either pool (then RESOURCE_EXHAUSTED).
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
            pool_size=integer(env, "HIS_DB_POOL_SIZE", 5, minimum=1),
            max_overflow=integer(env, "HIS_DB_MAX_OVERFLOW", 5),
            driver_pool_size=integer(env, "HIS_DB_DRIVER_POOL_SIZE", 10, minimum=1),
            pool_timeout_s=number(env, "HIS_DB_POOL_TIMEOUT_S", 3.0),
            health_interval_s=number(env, "HIS_DB_HEALTH_INTERVAL_S", 1.0),
            health_timeout_s=number(env, "HIS_DB_HEALTH_TIMEOUT_S", 2.0),
            statement_timeout_ms=integer(env, "HIS_DB_STATEMENT_TIMEOUT_MS", 5000, minimum=1),
        )

    @property
    def connections(self) -> int:
        """The most connections one process opens: both pools full (health pings aside, one at a
        time). Deploy sizes PostgreSQL's max_connections from this figure per pod."""
        return self.pool_size + self.max_overflow + self.driver_pool_size


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
            port=integer(env, "HIS_PORT", port),
            metrics_port=integer(env, "HIS_METRICS_PORT", metrics_port, minimum=-1),
            grace_s=number(env, "HIS_GRACE_S", 10.0),
            drain_delay_s=number(env, "HIS_DRAIN_DELAY_S", 0.0),
            max_concurrent_rpcs=integer(env, "HIS_MAX_CONCURRENT_RPCS", 1000, minimum=1),
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
            log_format=choice(env, "HIS_LOG_FORMAT", "auto", ("auto", "json", "text")),
            log_level=choice(env, "HIS_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            otlp_endpoint=env.get("HIS_OTLP_ENDPOINT") or None,
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
    # ... or a login at iam as `service:<name>` with this service's own credential, which is
    # good for this one service only (iam derives it from a key only iam holds; ADR 0007).
    service_credential: str = field(default="", repr=False)
    # The mTLS principal prefix a service token must come from (`<prefix><service>`, read from
    # the sidecar's x-forwarded-client-cert); empty: not checked (outside the mesh).
    service_peer_prefix: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthConfig:
        """Read HIS_SECURITY, HIS_AUTH_* and HIS_SERVICE_* settings."""
        enabled = choice(env, "HIS_SECURITY", "on", ("on", "off")) == "on"
        in_mesh = env.get("HIS_MESH") == "istio"
        if not enabled and in_mesh:
            raise ConfigError("HIS_SECURITY=off is for benchmarks; refused with HIS_MESH=istio")
        jwks_file = env.get("HIS_AUTH_JWKS_FILE")
        token_file = env.get("HIS_SERVICE_TOKEN_FILE")
        return cls(
            enabled=enabled,
            issuer=env.get("HIS_AUTH_ISSUER") or "https://iam.his.local",
            audience=env.get("HIS_AUTH_AUDIENCE") or "his",
            jwks_file=Path(jwks_file) if jwks_file else None,
            jwks_url=env.get("HIS_AUTH_JWKS_URL") or None,
            jwks_refresh_s=number(env, "HIS_AUTH_JWKS_REFRESH_S", 30.0),
            jwks_max_age_s=number(env, "HIS_AUTH_JWKS_MAX_AGE_S", 300.0),
            leeway_s=number(env, "HIS_AUTH_LEEWAY_S", 30.0),
            service_token_file=Path(token_file) if token_file else None,
            service_credential=env.get("HIS_SERVICE_CREDENTIAL") or "",
            service_peer_prefix=_service_peers(env, in_mesh=in_mesh),
        )


def _service_peers(env: Mapping[str, str], *, in_mesh: bool) -> str:
    """HIS_AUTH_SERVICE_PEERS: the SPIFFE prefix of the services' mTLS principals, or `off`.

    Default: Istio's `spiffe://cluster.local/ns/his/sa/` in the mesh, off elsewhere (no sidecar
    vouches for the caller there). Off is refused in the mesh: a service token copied out of a pod
    would then work from any other pod.
    """
    raw = (env.get("HIS_AUTH_SERVICE_PEERS") or "").strip()
    if raw == "off":
        if in_mesh:
            raise ConfigError("HIS_AUTH_SERVICE_PEERS=off is refused with HIS_MESH=istio")
        return ""
    if not raw:
        return DEFAULT_PEER_PREFIX if in_mesh else ""
    if not raw.startswith("spiffe://") or not raw.endswith("/sa/"):
        raise ConfigError(
            "HIS_AUTH_SERVICE_PEERS must be spiffe://<trust domain>/ns/<namespace>/sa/ or off, "
            f"got {raw!r}"
        )
    return raw


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
    _own_credential_only(service, source)
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


# The one service that holds the key every service credential is derived from (ADR 0007).
CREDENTIAL_ISSUER = "iam"


def _own_credential_only(service: str, env: Mapping[str, str]) -> None:
    """Refuse to start a service holding the service credential key: with it, it could derive
    every other service's credential and log in as audit or iam (issue 17)."""
    if service != CREDENTIAL_ISSUER and env.get("HIS_SERVICE_CREDENTIAL_KEY"):
        raise ConfigError(
            f"HIS_SERVICE_CREDENTIAL_KEY is for {CREDENTIAL_ISSUER} alone; give {service} its own "
            "HIS_SERVICE_CREDENTIAL (HMAC-SHA256 of its name under that key, hex) instead"
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
    from his.runtime.fieldcrypt import CryptoConfig  # noqa: PLC0415  (fieldcrypt → database → config)

    return CryptoConfig.from_env(env)


def _research(env: Mapping[str, str]) -> ResearchConfig:
    return ResearchConfig.from_env(env)
