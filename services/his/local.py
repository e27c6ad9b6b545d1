"""`his up`: the whole hospital on one machine — embedded PostgreSQL plus one process per service.

Each service runs as its own process exactly as in a container (`his serve <name>`), so what works
here works in Kubernetes. This process supervises them: health-waits, prints where everything
listens, and on Ctrl-C stops them gracefully and then stops PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from his.base.catalog import ServiceEntry, implemented
from his.local_secrets import LocalSecrets, local_secrets
from his.login import issue_token
from his.runtime.config import DatabaseConfig, TelemetryConfig
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING, wait_for_status
from his.runtime.logs import configure_logging
from his.runtime.migrations import upgrade
from his_client import HisClients, static_token

log = logging.getLogger("his.up")

START_TIMEOUT_S = 60.0
_PER_SERVICE = frozenset({"HIS_PORT", "HIS_HOST", "HIS_METRICS_PORT"})
STOP_TIMEOUT_S = 15.0


def _database_url(config: DatabaseConfig) -> tuple[str, EmbeddedPostgres | None]:
    if config.url:
        return config.url, None
    embedded = EmbeddedPostgres(config.data_dir / "pgdata")
    return embedded.start(), embedded


@contextlib.contextmanager
def database_url(config: DatabaseConfig) -> Iterator[str]:
    """The configured database, or embedded PostgreSQL started for as long as it is needed."""
    url, embedded = _database_url(config)
    try:
        yield url
    finally:
        if embedded is not None:
            embedded.stop()


def migrate_all(services: list[str]) -> None:
    """Migrate the named services' schemas (embedded PostgreSQL unless HIS_DATABASE_URL is set)."""
    url, embedded = _database_url(DatabaseConfig.from_env(os.environ))
    try:
        for name in services:
            upgrade(name, url)
            print(f"migrated {name}")
    finally:
        if embedded is not None:
            embedded.stop()


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `his up` itself dies, so no service outlives it."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _spawn(entry: ServiceEntry, url: str, secrets: LocalSecrets) -> subprocess.Popen[bytes]:
    # Per-process settings of the caller's shell must not reach every service (two would bind
    # one port); each service takes its own from the catalog.
    inherited = {k: v for k, v in os.environ.items() if k not in _PER_SERVICE}
    env = dict(
        inherited,
        **secrets.env(),
        HIS_DATABASE_URL=url,
        HIS_MIGRATE="0",
        HIS_LOG_FORMAT="text",
    )
    return subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "his.cli", "serve", entry.name],
        env=env,
        # Own process group: Ctrl-C reaches only `his up`, which then stops services in order.
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )


async def _wait_serving(entry: ServiceEntry, process: subprocess.Popen[bytes]) -> None:
    def exited() -> str | None:
        code = process.poll()
        return None if code is None else f"{entry.name} exited with code {code}"

    try:
        await wait_for_status(
            f"localhost:{entry.port}",
            entry.grpc_service,
            SERVING,
            timeout_s=START_TIMEOUT_S,
            gave_up=exited,
        )
    except TimeoutError as error:
        raise RuntimeError(str(error)) from None


# Demo data sets in dependency order: staff and departments, then patients, then bookings.
DEMO_ORDER = ("iam", "patient", "scheduling")


async def _load_demo(entries: tuple[ServiceEntry, ...], data_dir: Path) -> None:
    """Each implemented service's `demo.load`, as the staff member its module names (`USER`)."""
    names = {entry.name for entry in entries}
    for name in [n for n in DEMO_ORDER if n in names] + sorted(names - set(DEMO_ORDER)):
        try:
            demo = importlib.import_module(f"his.{name}.demo")
        except ModuleNotFoundError:
            continue
        token = await issue_token(demo.USER, data_dir=data_dir)
        async with HisClients(token=static_token(token)) as his:
            print(f"demo data: {await demo.load(his)}", flush=True)


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop services in reverse start order, each drained before the next: callers (scheduling)
    stop before what they call (patient), so their in-flight calls can still finish."""
    for name, process in reversed(processes.items()):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning(
                "service did not stop in time; killing", extra={"fields": {"service": name}}
            )
            process.kill()
            process.wait()


def up(*, demo: bool) -> int:
    """Run until Ctrl-C (or SIGTERM); returns the exit code."""
    configure_logging(TelemetryConfig(service_name="his-up", log_format="text"))
    config = DatabaseConfig.from_env(os.environ)
    entries = implemented()
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    secrets = local_secrets(config.data_dir)
    url, embedded = _database_url(config)
    where = embedded.data_dir if embedded else "HIS_DATABASE_URL"
    print(f"postgresql    {'embedded, data in ' + str(where) if embedded else where}")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        for entry in entries:
            upgrade(entry.name, url)
        for entry in entries:
            processes[entry.name] = _spawn(entry, url, secrets)
        for entry in entries:
            asyncio.run(_wait_serving(entry, processes[entry.name]))
        if demo:
            asyncio.run(_load_demo(entries, config.data_dir))
        _print_table(entries)
        print("\nHIS Mesh is up. Press Ctrl-C to stop.", flush=True)
        while not stop_requested:
            exited = [name for name, p in processes.items() if p.poll() is not None]
            if exited:
                print(f"his up: {', '.join(exited)} exited unexpectedly; stopping", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    except RuntimeError as error:
        print(f"his up: {error}", file=sys.stderr)
        code = 1
    finally:
        print("\nstopping services ...", flush=True)
        _stop(processes)
        if embedded is not None:
            with contextlib.suppress(Exception):
                embedded.stop()
        print("stopped.", flush=True)
    return code


def _print_table(entries: tuple[ServiceEntry, ...]) -> None:
    print(f"\n{'service':<12} {'gRPC (health SERVING)':<24} {'metrics':<30} service name")
    for entry in entries:
        print(
            f"{entry.name:<12} {'localhost:' + str(entry.port):<24} "
            f"{'http://localhost:' + str(entry.metrics_port) + '/metrics':<30} {entry.grpc_service}"
        )
