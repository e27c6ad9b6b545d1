"""Embedded PostgreSQL 16 through pgserver, for `his up`, `his serve` and the tests.

The data directory survives restarts (default `.his/pgdata` under the working directory, or
`$HIS_DATA_DIR/pgdata`). The server listens on a unix socket only, never on a network port.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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

    def start(self) -> str:
        """Initialise the data directory if new, start the server if not running; return its URL."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR
            # (containers, CI) that warns and falls back to /tmp, which is what we want anyway.
            warnings.simplefilter("ignore")
            import pgserver  # noqa: PLC0415
        # cleanup_mode="stop": the server stops when the last process holding a handle exits.
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        log.info("embedded postgresql ready", extra={"fields": {"data_dir": str(self.data_dir)}})
        return self.url

    def stop(self) -> None:
        """Stop the server if this is the last handle on it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    # The two methods below exist for failure tests: take the database away and bring it back
    # while services keep running.
    def kill(self) -> None:
        """Stop the server immediately (fast shutdown), whoever else holds a handle."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # noqa: PLC0415

        server = self._require()
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=server.system_user)

    def restart(self) -> None:
        """Start the server again after `kill`, with the same socket and data."""
        server = self._require()
        with server._lock:
            server.ensure_postgres_running()

    def _require(self) -> Any:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return self._server
