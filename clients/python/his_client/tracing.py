"""Outbound calls carry the caller's trace (W3C `traceparent`), with or without client spans.

With no trace collector (the default), a span per outbound call would go nowhere; what the
services rely on is the trace id travelling on, so one booking is one trace across scheduling and
patient, on every log line and audit event. `TraceparentInterceptor` sends the current span's
context as `traceparent` (and `tracestate` when there is one) — what OpenTelemetry's gRPC client
instrumentation sends, minus the span. Only when spans are recorded (a tracer provider given, or
one set globally) is that instrumentation used; it is imported then and not before: wrapt,
importlib.metadata and packaging cost ~0.1 s of every process's start-up otherwise.

All HIS rpcs are unary (no `stream` in protos/), so a unary-unary interceptor covers them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace

from his_client.call_details import with_metadata

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


class TraceparentInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current span's context to every outbound call, making no span of its own."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return await continuation(client_call_details, request)
        header = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        added = [(TRACEPARENT, header)]
        if context.trace_state:
            added.append((TRACESTATE, context.trace_state.to_header()))
        details = with_metadata(client_call_details, (TRACEPARENT, TRACESTATE), added)
        return await continuation(details, request)


def tracing_interceptors(
    tracer_provider: trace.TracerProvider | None,
) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that pass the trace on: OpenTelemetry's client spans when a provider is
    given or set globally, else `TraceparentInterceptor` (same header, no span)."""
    if tracer_provider is None and isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    ):
        return [TraceparentInterceptor()]
    from opentelemetry.instrumentation.grpc import aio_client_interceptors  # noqa: PLC0415

    return list(aio_client_interceptors(tracer_provider=tracer_provider))  # type: ignore[no-untyped-call]
