"""Embedded PostgreSQL 16 through pgserver, for `his up`, `his serve` and the tests.

The data directory survives restarts (default `.his/pgdata` under the working directory, or
`$HIS_DATA_DIR/pgdata`). The server listens on a unix socket only, never on a network port.

Several processes may hold a handle on one server; the last one to let go stops it. pgserver keeps
the holders' pids in `pgdata/.handle_pids.json` and remembers the postmaster it saw at start, which
goes wrong twice: a holder that died without letting go (kill -9) stays listed forever, so nobody
is ever "last"; and after the server was restarted (by `restart` here, by `his migrate`, by hand)
the remembered postmaster is dead, so the last holder "stops" a dead process and leaves the running
one behind. `stop` therefore does the release itself: it forgets dead holders and stops whatever
server `postmaster.pid` names now.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# PostgreSQL's default of 100 connections is fewer than the local hospital may hold: nine services
# at up to DatabaseConfig.connections (20) each, plus migrations, tools and test pools.
MAX_CONNECTIONS = 400


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR
        # (containers, CI) that warns and falls back to /tmp, which is what we want anyway.
        warnings.simplefilter("ignore")
        import pgserver  # noqa: PLC0415

    return pgserver


def _fast_stop(data_dir: Path, user: str | None) -> None:
    """`pg_ctl stop -m fast`: sessions are ended, the data is safe."""
    _pgserver()
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # noqa: PLC0415

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM (PostgreSQL's smart shutdown), SIGKILL if it is still there after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


class EmbeddedPostgres:
    """A handle on the embedded server in one data directory; several processes may share it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None  # pgserver.PostgresServer, imported lazily

    @property
    def url(self) -> str:
        """The `postgresql://` URL of the running server (unix socket)."""
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return str(self._server.get_uri())

    @property
    def log_file(self) -> Path:
        """PostgreSQL's own log (pgserver starts the server with `-l pgdata/log`)."""
        return self.data_dir / "log"

    def start(self) -> str:
        """Initialise the data directory if new, start the server if not running; return its URL."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        pgserver = _pgserver()
        try:
            # cleanup_mode="stop": the server stops when the last process holding a handle exits.
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        except BaseException:
            # Interrupted (Ctrl-C reaches pg_ctl too) or failed after pg_ctl may have started the
            # server: take down what was started unless another process holds it.
            self._release(None)
            raise
        self._ensure_max_connections()
        log.info("embedded postgresql ready", extra={"fields": {"data_dir": str(self.data_dir)}})
        return self.url

    def _ensure_max_connections(self) -> None:
        """Raise max_connections to MAX_CONNECTIONS (ALTER SYSTEM, kept in the data directory)
        and restart once; only when nobody else holds the server: a restart ends their sessions."""
        psql = [str(_pgserver().postgres_server.POSTGRES_BIN_PATH / "psql"), "-tAX", self.url, "-c"]
        current = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [*psql, "SHOW max_connections"], check=True, capture_output=True, text=True, timeout=30
        ).stdout.strip()
        if int(current) >= MAX_CONNECTIONS:
            return
        holders = _pgserver().postgres_server.DiskList(self.data_dir / ".handle_pids.json").get()
        if any(p != os.getpid() and _alive(p) for p in holders):
            log.warning(
                "embedded postgresql keeps its connection limit while others hold it",
                extra={"fields": {"max_connections": int(current)}},
            )
            return
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [*psql, f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.kill()
        self.restart()

    def stop(self) -> None:
        """Let go of the server; stop it if no other live process holds a handle on it."""
        server, self._server = self._server, None
        if server is not None:
            atexit.unregister(server._cleanup)  # pgserver's own release would trust stale state
            self._release(server)

    def pid(self) -> int | None:
        """The pid of the postmaster running on this data directory now, or None."""
        info = _pgserver().postgres_server.PostmasterInfo.read_from_pgdata(self.data_dir)
        return int(info.pid) if info is not None and info.is_running() else None

    def _release(self, server: Any) -> None:
        if not self.data_dir.is_dir():
            return  # nothing was ever started here
        postgres_server = _pgserver().postgres_server
        holders = postgres_server.DiskList(self.data_dir / ".handle_pids.json")
        with postgres_server.PostgresServer._lock:
            instance = postgres_server.PostgresServer._instances.pop(self.data_dir, None)
            if instance is not None:  # e.g. one whose start failed: its exit hook would log late
                atexit.unregister(instance._cleanup)
            others = [p for p in holders.get() if p != os.getpid() and _alive(p)]
            holders.put(others)
            if others:
                log.info("embedded postgresql left running", extra={"fields": {"holders": others}})
                return
            self._stop_server(None if server is None else server.system_user)

    def _stop_server(self, user: str | None) -> None:
        """Stop the server postmaster.pid names now (fast: sessions are ended, data is safe)."""
        pid = self.pid()
        if pid is None:
            return
        try:
            _fast_stop(self.data_dir, user)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            _terminate(pid)
        log.info("embedded postgresql stopped", extra={"fields": {"pid": pid}})

    # The two methods below exist for failure tests and `his up`'s watch on the server: take the
    # database away and bring it back while services keep running.
    def kill(self) -> None:
        """Stop the server immediately (fast shutdown), whoever else holds a handle."""
        _fast_stop(self.data_dir, self._require().system_user)

    def restart(self) -> None:
        """Start the server again after `kill` (or after it died), with the same socket and data."""
        server = self._require()
        with server._lock:
            server.ensure_postgres_running()

    def _require(self) -> Any:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return self._server
