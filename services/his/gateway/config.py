"""Settings of the local mobile gateway (`HIS_GATEWAY_*`, `HIS_WEB_APP_*`) that `his up` runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from his.base.env import ConfigError, integer, switch

# The patient web app's build output, relative to the repository root (clients/web builds it).
DEFAULT_APP_DIR = Path("clients/web/app/dist")


@dataclass(frozen=True)
class GatewayConfig:
    """Where the local gateway listens and what it serves besides the rpcs."""

    enabled: bool = True
    # The browser's one origin: rpcs (gRPC-web) and the web app. Loopback unless asked otherwise
    # (HIS_GATEWAY_HOST=0.0.0.0 to try the app from a phone on the same network).
    host: str = "127.0.0.1"
    port: int = 8080
    # Envoy's admin interface: always on 127.0.0.1 (it can stop the proxy and dump its config).
    admin_port: int = 9901
    # The static server of the web app behind the gateway (127.0.0.1 only).
    app_port: int = 8081
    # The built web app; relative paths are taken from the repository root.
    app_dir: Path = DEFAULT_APP_DIR
    # Origins allowed by CORS besides the VirtualService's (a dev server, e.g.
    # http://localhost:5173); the app served by the gateway itself needs none (same origin).
    extra_origins: tuple[str, ...] = ()
    # Sign-in calls let through per minute, per sign-in rpc, for the whole gateway: a flood
    # guard sized for a morning rush of patients (10 a second), not the abuse limit, which is
    # iam's, per phone number and per source address.
    sign_in_per_minute: int = 600

    def __post_init__(self) -> None:
        if self.sign_in_per_minute < 1:
            raise ConfigError("HIS_GATEWAY_SIGN_IN_PER_MINUTE must be at least 1")
        for origin in self.extra_origins:
            if not origin.startswith(("http://", "https://")) or origin.endswith("/"):
                raise ConfigError(
                    f"HIS_GATEWAY_ORIGINS: {origin!r} is not an origin (scheme://host[:port])"
                )

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the app."""
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::", "[::]") else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewayConfig:
        """Read HIS_GATEWAY, HIS_GATEWAY_HOST, _PORT, _ADMIN_PORT, _ORIGINS,
        _SIGN_IN_PER_MINUTE, HIS_WEB_APP_PORT and HIS_WEB_APP_DIR."""
        return cls(
            enabled=switch(env, "HIS_GATEWAY", default=True),
            host=(env.get("HIS_GATEWAY_HOST") or "127.0.0.1").strip(),
            port=integer(env, "HIS_GATEWAY_PORT", 8080),
            admin_port=integer(env, "HIS_GATEWAY_ADMIN_PORT", 9901),
            app_port=integer(env, "HIS_WEB_APP_PORT", 8081),
            app_dir=Path(env.get("HIS_WEB_APP_DIR") or DEFAULT_APP_DIR),
            extra_origins=tuple(
                o.strip() for o in (env.get("HIS_GATEWAY_ORIGINS") or "").split(",") if o.strip()
            ),
            sign_in_per_minute=integer(env, "HIS_GATEWAY_SIGN_IN_PER_MINUTE", 600, minimum=1),
        )
