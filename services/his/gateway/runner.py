"""One running local gateway: the web app's static server and Envoy, generated and started.

`his up` runs one (and restarts Envoy if it dies); tests run one in front of their session
services. Envoy's log (warnings and the access log) goes to a file of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from his.gateway import envoy
from his.gateway.config import GatewayConfig
from his.gateway.envoy_config import LocalAddresses, bootstrap
from his.gateway.policy import GATEWAY_DIR, PolicyError
from his.gateway.policy import load as load_policy
from his.gateway.web_app import WebApp
from his.runtime.documents_http import DocumentServer

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def services_trust(
    env: Mapping[str, str],
) -> tuple[str | None, tuple[str, ...] | None] | None:
    """The issuer (and audience) the services were told to trust when it is not the mesh's
    default (HIS_AUTH_ISSUER, HIS_AUTH_AUDIENCE): the gateway must check tokens as they do."""
    issuer = (env.get("HIS_AUTH_ISSUER") or "").strip()
    audience = (env.get("HIS_AUTH_AUDIENCE") or "").strip()
    if not issuer and not audience:
        return None
    return issuer or None, (audience,) if audience else None


def repository_root(start: Path | None = None) -> Path:
    """The checkout whose mesh/istio/gateway the gateway is generated from: the working
    directory or a parent of it, else the checkout this package was installed from (editable)."""
    here = (start or Path.cwd()).resolve()
    package_checkout = Path(__file__).resolve().parents[3]
    for candidate in (here, *here.parents, package_checkout):
        if (candidate / GATEWAY_DIR).is_dir():
            return candidate
    raise PolicyError(f"no {GATEWAY_DIR} in {here}, its parents or {package_checkout}")


@dataclass
class LocalGateway:
    """Envoy on `config.port` in front of the services at `addresses`, and the web app."""

    config: GatewayConfig
    addresses: LocalAddresses
    root: Path
    # Where the generated bootstrap and Envoy's log go.
    work_dir: Path
    # (issuer, audiences) the local services trust when they differ from the mesh's
    # RequestAuthentication (tests' own issuer); None: the mesh's, as `his up` runs them.
    trust: tuple[str | None, tuple[str, ...] | None] | None = None
    # Run in the child before Envoy starts (`his up`: die with the parent).
    preexec_fn: Callable[[], None] | None = None
    # Envoy's log (warnings and the access log); default: envoy.log in `work_dir`.
    log_file: Path | None = None
    process: asyncio.subprocess.Process | None = None
    _spawning: asyncio.Future[asyncio.subprocess.Process] | None = None
    _app_server: DocumentServer | None = None
    _log: IO[bytes] | None = None

    @property
    def bootstrap_path(self) -> Path:
        """The generated Envoy bootstrap."""
        return self.work_dir / "envoy.json"

    @property
    def log_path(self) -> Path:
        """Envoy's own log: warnings and one access-log line per request."""
        return self.log_file or self.work_dir / "envoy.log"

    @property
    def app_dir(self) -> Path:
        """The web app build served (relative settings are taken from the repository root)."""
        return (
            self.config.app_dir
            if self.config.app_dir.is_absolute()
            else (self.root / self.config.app_dir)
        )

    def configuration(self) -> dict[str, Any]:
        """Envoy's bootstrap from mesh/istio/gateway, the local addresses and the trust."""
        policy = load_policy(self.root)
        if self.trust is not None:
            issuer, audiences = self.trust
            policy = dataclasses.replace(
                policy, issuer=issuer or policy.issuer, audiences=audiences or policy.audiences
            )
        return bootstrap(
            policy, self.config, self.addresses, ipv6_loopback=ipv6_loopback_available()
        )

    def generate(self) -> Path:
        """Write Envoy's bootstrap (`configuration`) where Envoy is started from."""
        return envoy.write_bootstrap(self.configuration(), self.bootstrap_path)

    async def start(self) -> None:
        """Generate, serve the web app, start Envoy and wait until it is ready."""
        self.generate()
        if self._app_server is None:
            app = WebApp(self.app_dir)
            self._app_server = await DocumentServer(
                app.resolve,
                host="127.0.0.1",
                port=self.config.app_port,
                name="web-app",
                blocking=True,
            ).start()
        await self.spawn()

    async def spawn(self) -> None:
        """Start Envoy on the generated bootstrap and wait until it is ready."""
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        # Shielded: a stop that cancels the start still finds the process it must end.
        self._spawning = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *envoy.command(self.bootstrap_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        )
        self.process = await asyncio.shield(self._spawning)
        await self._wait_ready()

    def exited(self) -> str | None:
        """Why waiting for Envoy is pointless (it ended), or None."""
        code = None if self.process is None else self.process.returncode
        return None if code is None else f"envoy exited with code {code} (see {self.log_path})"

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            if (why := self.exited()) is not None:
                raise RuntimeError(why)
            if await _get_status(self.config.admin_port, "/ready") == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"envoy not ready after {READY_TIMEOUT_S:g}s (see {self.log_path})")

    async def stop(self) -> None:
        """Stop Envoy (SIGTERM, then SIGKILL) and the web app's server."""
        if self._spawning is not None:
            with contextlib.suppress(Exception):
                self.process = await self._spawning
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._app_server is not None:
            await self._app_server.aclose()
            self._app_server = None
        if self._log is not None:
            self._log.close()
            self._log = None


def ipv6_loopback_available() -> bool:
    """Whether this machine has ::1 to listen on (containers may have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _get_status(port: int, path: str) -> int | None:
    """The status of a GET on 127.0.0.1:`port` (Envoy's admin), or None when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 2.0)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
