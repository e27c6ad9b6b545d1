"""OpenTelemetry tracing: spans and an exporter only when a collector is configured.

Trace ids are made even with no exporter, so every log line can carry one: the server's
TraceContextInterceptor and the SDK's traceparent interceptor need only the OpenTelemetry API.
The SDK (and psutil, which its resource detection imports) is imported only when
`HIS_OTLP_ENDPOINT` is set, so a service without a collector does not pay for it at start-up.
A broken or missing exporter logs a warning and the service starts anyway: telemetry must never
stop patient care.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from opentelemetry import trace

from his.runtime.config import TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)


def make_tracer_provider(config: TelemetryConfig) -> TracerProvider | None:
    """A tracer provider exporting over OTLP when an endpoint is configured; None otherwise (or
    when the exporter cannot be set up): then no span is recorded, trace ids still travel."""
    if not config.otlp_endpoint:
        return None
    # Imported here: ~0.1 s of start-up that a service without a collector never needs.
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # No atexit hook: it flushes without a bound, and a collector that does not answer kept the
    # process alive ~20 s after "stopped" (past a pod's grace). `shut_down` is bounded instead.
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}), shutdown_on_exit=False
    )
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        )
    except Exception as error:  # any failure here must not stop start-up
        log.warning("tracing exporter disabled", extra={"fields": {"error": type(error).__name__}})
        return None
    return provider


def current_trace_id() -> str:
    """The trace id of the active span as 32 hex digits, or '' outside any span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def current_span_id() -> str:
    """The span id of the active span as 16 hex digits, or '' outside any span."""
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.is_valid else ""


async def shut_down(provider: TracerProvider | None, timeout_s: float) -> None:
    """Flush and stop the provider's exporters, waiting at most `timeout_s`: spans still unsent
    then are dropped (a warning says so) rather than holding up the process's exit."""
    if provider is None:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            provider.shutdown()
        finally:
            # The loop may be gone when a stuck exporter finally gives up.
            if not loop.is_closed():
                loop.call_soon_threadsafe(finish)

    # A daemon thread, not the loop's executor: asyncio.run waits for executor threads at exit.
    threading.Thread(target=run, name="otel-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout_s)
    except TimeoutError:
        log.warning("trace export did not finish in time; unsent spans dropped")
