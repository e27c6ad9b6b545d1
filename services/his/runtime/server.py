"""The one server bootstrap every service uses: grpc.aio on [::]:port with health, reflection,
interceptors, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from his.runtime import shared_policy
from his.runtime.access import Access
from his.runtime.audit_trail import AUDIT, AuditTrail, audit_delivery
from his.runtime.authn import AuthenticationInterceptor
from his.runtime.config import ServiceConfig
from his.runtime.database import Database
from his.runtime.database import translate_error as translate_database_error
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import DatabaseHealth, Health
from his.runtime.interceptors import AdmissionInterceptor, ErrorInterceptor, ObservingInterceptor
from his.runtime.logs import configure_logging
from his.runtime.metrics import MetricsEndpoint, ServerMetrics
from his.runtime.outbox import Outbox
from his.runtime.policy import PolicyEngine
from his.runtime.relay import Deliver, Relay
from his.runtime.schema_version import at_head
from his.runtime.security import jwks_source, own_token_source, peer_binding
from his.runtime.telemetry import make_tracer_provider, shut_down
from his.runtime.tokens import TokenVerifier
from his.runtime.trace_context import TraceContextInterceptor
from his_client.clients import HisClients
from his_client.errors import translate_error as translate_upstream_error

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)


# After the drain: how long no new call must have been refused before grpc is stopped, and how
# long to wait for such a quiet spell at most (callers that keep coming are then cut off). 50 ms
# was too short on a starved event loop (two test workers on two cores): grpc had received a call
# the runtime had not seen yet, and cancelled it.
_QUIET_S = 0.2
_QUIET_MAX_S = 1.0
# How long the last spans may take to leave on shutdown (a stuck collector must not hold the pod).
_TRACE_FLUSH_S = 2.0
# How long a stopping service keeps delivering its outbox (the rest waits for the next start).
_RELAY_FLUSH_S = 1.0


@dataclass(frozen=True)
class ServiceSpec:
    """What a service contributes to the runtime: its name, its gRPC service and its servicer."""

    # Short name, as in the catalog and the database schema ("patient").
    name: str
    # Full gRPC service name ("his.patient.v1.PatientService"), used for health and reflection.
    grpc_service: str
    # The generated `add_<Service>Servicer_to_server` function.
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    # Builds the servicer from the running service's shared pieces.
    make_servicer: Callable[[ServiceResources], Any]
    # The outbox destinations of its domain events besides audit (destination -> deliverer),
    # built from the service's clients; the relay delivers them (scheduling: check-ins to emr).
    deliverers: Callable[[HisClients], Mapping[str, Deliver]] | None = None
    # A server the service runs beside its gRPC server in the same process (iam: its key set over
    # HTTP), given the servicer it serves beside; started once the gRPC server is and closed after
    # it; it may decide not to run (None).
    companion: Callable[[ServiceResources, Any], Awaitable[Companion | None]] | None = None


class Companion(Protocol):
    """A server started beside a service's gRPC server (ServiceSpec.companion)."""

    async def aclose(self) -> None:
        """Stop serving and free what it holds."""


@dataclass(frozen=True)
class ServiceResources:
    """Shared pieces a servicer is built from."""

    config: ServiceConfig
    database: Database
    # Typed stubs of the other services, with deadlines, safe retries and breakers.
    clients: HisClients
    # Authorization (policy as code), break-the-glass grants and the audit trail.
    access: Access
    # The service's transactional outbox, for its domain events (None for the audit service).
    outbox: Outbox | None = None
    # What the servicer needs done when the service stops, after the last call (its own
    # background tasks, such as audit's checkpoint timer); awaited in order.
    stop_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass
class RunningService:
    """A started server: where it listens and how to stop it."""

    spec: ServiceSpec
    config: ServiceConfig
    server: grpc.aio.Server
    port: int
    database: Database
    health: Health
    database_health: DatabaseHealth
    admission: AdmissionInterceptor
    metrics: ServerMetrics
    metrics_endpoint: MetricsEndpoint | None
    clients: HisClients
    # None unless a collector is configured (HIS_OTLP_ENDPOINT): then no span is recorded.
    tracer_provider: TracerProvider | None
    audit: AuditTrail | None = None
    relay: Relay | None = None
    migration: asyncio.Task[None] | None = None
    companion: Companion | None = None
    stop_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        """`localhost:<port>`, for clients on this machine."""
        return f"localhost:{self.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """Readiness NOT_SERVING → drain delay (still serving, while load balancers notice) →
        refuse new calls with UNAVAILABLE and let every admitted call finish → stop.

        New calls are refused by the runtime before grpc's own stop: grpc cancels the calls it
        has received but not yet handed to a handler, and under load there always are some;
        refusing first lets them be answered (UNAVAILABLE, retryable) instead of CANCELLED.
        """
        grace = self.config.server.grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        if self.config.server.drain_delay_s:
            await asyncio.sleep(self.config.server.drain_delay_s)
        if self.migration is not None:
            self.migration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.migration
        started = time.monotonic()
        self.admission.close()
        if not await self.admission.drained(grace):
            log.warning(
                "calls still in flight after the grace period; cancelling them",
                extra={"fields": {"in_flight": self.admission.in_flight}},
            )
        left = grace - (time.monotonic() - started)
        await self.admission.quiet(_QUIET_S, at_most_s=min(_QUIET_MAX_S, left))
        await self.server.stop(max(grace - (time.monotonic() - started), 0.0))
        if self.companion is not None:
            await self.companion.aclose()
        for hook in self.stop_hooks:
            await hook()
        if self.audit is not None:
            await self.audit.close()
        if self.relay is not None:
            # What is left waits in the outbox for the next start or another replica.
            await self.relay.stop(flush_s=_RELAY_FLUSH_S)
        await self.database_health.stop()
        await self.clients.close()
        await self.database.dispose()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        await shut_down(self.tracer_provider, _TRACE_FLUSH_S)


def _outbox(
    spec: ServiceSpec,
    config: ServiceConfig,
    database: Database,
    clients: HisClients,
    metrics: ServerMetrics,
) -> tuple[Outbox | None, AuditTrail | None, Relay | None]:
    """The service's outbox, the audit trail writing into it and the relay shipping it.

    The audit service does not audit through itself; every other service does, unless security
    is off for a benchmark. The relay runs when there is anywhere to deliver to."""
    if spec.name == "audit":
        return None, None, None
    outbox = Outbox(database, spec.name)
    audit: AuditTrail | None = None
    deliverers: dict[str, Deliver] = {}
    if config.auth.enabled:
        audit = AuditTrail(outbox, spec.name, registry=metrics.registry)
        deliverers[AUDIT] = audit_delivery(clients)
    if spec.deliverers is not None:
        deliverers.update(spec.deliverers(clients))
    relay = Relay(outbox, database, deliverers, registry=metrics.registry) if deliverers else None
    return outbox, audit, relay


async def start(
    spec: ServiceSpec, config: ServiceConfig, database_url: str, *, migrate: bool = False
) -> RunningService:
    """Build and start one service on its configured port (0 = any free port).

    With `migrate`, the schema is checked and migrated in the background, the server listening
    meanwhile (retried until the database lets it): liveness is SERVING at once, readiness only
    once migrated, and calls before that are refused UNAVAILABLE `SERVICE_STARTING`.
    Whatever was set up before a failure (a port in use, say) is torn down again.
    """
    database = Database(database_url, config.database, application_name=f"his-{spec.name}")
    metrics = ServerMetrics.create()
    tracer_provider = make_tracer_provider(config.telemetry)
    clients = HisClients(
        config.clients,
        registry=metrics.registry,
        tracer_provider=tracer_provider,
        token=own_token_source(config.auth, spec.name, lambda: clients.iam),
    )
    interceptors: list[grpc.aio.ServerInterceptor] = [
        _tracing_interceptor(tracer_provider),
        ObservingInterceptor(metrics),
        admission := AdmissionInterceptor(
            config.server.max_concurrent_rpcs, domain=f"{spec.name}.his", open_=not migrate
        ),
        # Inside error mapping, so a refused token becomes a proper UNAUTHENTICATED status.
        ErrorInterceptor(f"{spec.name}.his", (translate_database_error, translate_upstream_error)),
    ]
    if config.auth.enabled:
        verifier = TokenVerifier(config.auth, jwks_source(config.auth, lambda: clients.iam))
        interceptors.append(AuthenticationInterceptor(verifier, peers=peer_binding(config.auth)))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 0),
            # Keepalive so idle connections through proxies and the mesh are not silently dropped.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    outbox, audit, relay = _outbox(spec, config, database, clients, metrics)
    access = Access(enabled=config.auth.enabled, policy=_policy(), audit=audit, clients=clients)
    health = Health((spec.grpc_service,))
    database_health = DatabaseHealth(database, health, metrics, migrated=not migrate)
    metrics_endpoint: MetricsEndpoint | None = None
    migration: asyncio.Task[None] | None = None
    companion: Companion | None = None
    stop_hooks: list[Callable[[], Awaitable[None]]] = []
    try:
        resources = ServiceResources(config, database, clients, access, outbox, stop_hooks)
        servicer = spec.make_servicer(resources)
        spec.add_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (
                spec.grpc_service,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        # Raises RuntimeError when the port is taken.
        port = server.add_insecure_port(f"{config.server.host}:{config.server.port}")
        if migrate:
            # Begun before the first ping, so that the schema check's connection (the pool's
            # first, kept for the first call) is opened while the ping's is: both mostly wait
            # on PostgreSQL starting a backend.
            migration = asyncio.create_task(
                _migrate_until_done(spec.name, database_url, database, database_health, admission),
                name="migrate",
            )
        await database_health.check_once()
        database_health.start()
        if config.server.metrics_port >= 0:
            metrics_endpoint = metrics.serve(config.server.metrics_port)
        await server.start()
        if spec.companion is not None:
            companion = await spec.companion(resources, servicer)
    except BaseException:
        if migration is not None:
            migration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await migration
        await server.stop(0)
        for hook in stop_hooks:
            await hook()
        await database_health.stop()
        await clients.close()
        await database.dispose()
        await shut_down(tracer_provider, _TRACE_FLUSH_S)
        raise
    running = RunningService(
        spec=spec,
        config=config,
        server=server,
        port=port,
        database=database,
        health=health,
        database_health=database_health,
        admission=admission,
        metrics=metrics,
        metrics_endpoint=metrics_endpoint,
        clients=clients,
        tracer_provider=tracer_provider,
        audit=audit,
        relay=relay,
        migration=migration,
        companion=companion,
        stop_hooks=stop_hooks,
    )
    if relay is not None:
        relay.start()
    return running


def _tracing_interceptor(tracer_provider: TracerProvider | None) -> grpc.aio.ServerInterceptor:
    """OpenTelemetry's span per call when spans go somewhere; else only the trace id."""
    if tracer_provider is None:
        return TraceContextInterceptor()
    from opentelemetry.instrumentation.grpc import aio_server_interceptor  # noqa: PLC0415

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider
    )
    return interceptor


async def _migrate_until_done(
    service: str,
    url: str,
    database: Database,
    readiness: DatabaseHealth,
    admission: AdmissionInterceptor,
) -> None:
    """Migrate the schema, retrying with capped backoff while the database refuses; then open.

    A database outage at start-up is not a crash: the pod stays alive and unready until the
    database is back, instead of restart-looping (and re-running start-up) all through it.
    """
    delay = 0.5
    while True:
        try:
            if not await at_head(database, service):
                # Alembic (and mako, and every dialect's DDL) only when there is work: ~0.4 s of
                # start-up that serving never needs once the schema is at head.
                from his.runtime.migrations import upgrade  # noqa: PLC0415

                await asyncio.to_thread(upgrade, service, url)
            break
        except Exception as error:
            log.warning(
                "migration failed; retrying",
                extra={"fields": {"error": type(error).__name__, "retry_in_s": delay}},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    log.info("schema migrated")
    admission.open()
    await readiness.migrated()


def _policy() -> PolicyEngine:
    """The policies, compiled once per process and shared by every service it runs (`his serve`
    begins compiling them on a thread before it imports this module)."""
    return shared_policy.engine()


def run(spec: ServiceSpec, config: ServiceConfig) -> None:
    """The life of a service process (`his serve <service>`): until SIGTERM or SIGINT."""
    configure_logging(config.telemetry)
    embedded: EmbeddedPostgres | None = None
    url = config.database.url
    if url is None:
        embedded = EmbeddedPostgres(config.database.data_dir / "pgdata")
        url = embedded.start()
    try:
        # uvloop: the event loop and the database driver's socket I/O in C. Measured with two
        # patient processes side by side under the same load: ~13 % less CPU a GetPatient call.
        import uvloop  # noqa: PLC0415 (only a serving process needs it)

        uvloop.run(_serve_until_signalled(spec, config, url))
    finally:
        if embedded is not None:
            embedded.stop()


async def _serve_until_signalled(spec: ServiceSpec, config: ServiceConfig, url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = await start(spec, config, url, migrate=config.server.migrate)
    # What start-up built lives as long as the process: out of the collector's sight for good
    # (`his serve` ran the imports with the collector off; see his.cli).
    gc.freeze()
    gc.enable()
    log.info(
        "serving",
        extra={
            "fields": {
                "grpc_service": spec.grpc_service,
                "port": running.port,
                "metrics_port": running.metrics_endpoint.port if running.metrics_endpoint else None,
                "database": "up" if running.database_health.up else "down",
                "migrating": running.migration is not None and not running.migration.done(),
            }
        },
    )
    await stop.wait()
    log.info("shutting down", extra={"fields": {"grace_s": config.server.grace_s}})
    await running.stop()
    log.info("stopped")
