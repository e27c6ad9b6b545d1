"""Server interceptors, outermost first: tracing → metrics + access log → error mapping.

Only unary-unary handlers are wrapped; streaming handlers (health Watch, reflection) pass through.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from grpc.aio import AbortError

from his.base import deadline
from his.base.errors import HisError, Unavailable, internal_status, to_status
from his.runtime.metrics import ServerMetrics
from his.runtime.request_guard import check_request, tolerant
from his.runtime.telemetry import current_trace_id

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Translate = Callable[[BaseException], HisError | None]

access_log = logging.getLogger("his.access")
_HEALTH = "grpc.health.v1.Health"
error_log = logging.getLogger("his.errors")


# Subscripted only for the type checker: grpc's runtime classes are not generic.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]


def wrap_unary(
    handler: Handler | None,
    wrap: Callable[[Behavior], Behavior],
    *,
    deserializer: Callable[[bytes], Any] | None = None,
) -> Handler | None:
    """`handler` with its unary-unary behavior wrapped (and, if given, its request deserializer
    replaced); streaming handlers are returned as they are."""
    if handler is None or handler.request_streaming or handler.response_streaming:
        return handler
    behavior = cast(Behavior, handler.unary_unary)
    return grpc.unary_unary_rpc_method_handler(
        wrap(behavior),
        request_deserializer=deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# Wrapped handlers kept per interceptor; methods are few, the bound guards against a flood of
# made-up method names (unknown methods are never kept: their handler is None).
_WRAPPED_LIMIT = 1_000


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler once, not on every call.

    grpc asks every interceptor for the handler of every call, and gets the same handler for a
    method each time from the one below; re-wrapping it per call built closures and handler
    objects for nothing. Subclasses say how to wrap in `wrap_handler`.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler | None]] = {}

    def wrap_handler(self, handler: Handler | None, method: str) -> Handler | None:
        """The handler to serve `method` with, given the handler below (None: unknown)."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return self.wrap_handler(None, method)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap_handler(handler, method)
        if len(self._wrapped) >= _WRAPPED_LIMIT:
            self._wrapped.clear()
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _split_method(full_method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` → (`pkg.Service`, `Method`)."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return service, method


class ObservingInterceptor(WrappingInterceptor):
    """RED metrics and exactly one access-log line per call, with its trace id and no payload."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap_handler(self, handler: Handler | None, full_method: str) -> Handler | None:
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler  # no label for a made-up method name: it would be a new series
        service, method = _split_method(full_method)
        metrics = self._metrics
        labels = ("unary", service, method)
        started_total = metrics.started.labels(*labels)
        handling_seconds = metrics.handling_seconds.labels(*labels)
        # By code, made at a code's first use (a series appears when it has something to say).
        handled: dict[grpc.StatusCode, Any] = {}
        # Probes hit health every few seconds; they would drown the real calls.
        level = logging.DEBUG if service == _HEALTH else logging.INFO
        name = f"{service}/{method}"

        def wrap(inner: Behavior) -> Behavior:
            async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started_total.inc()
                metrics.in_flight.inc()
                started = time.perf_counter()
                code = grpc.StatusCode.OK
                # Outbound calls made while serving this one inherit its deadline (his_client).
                token = deadline.enter(context.time_remaining())
                try:
                    response = await inner(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    deadline.leave(token)
                    elapsed = time.perf_counter() - started
                    metrics.in_flight.dec()
                    code = _as_status_code(code)
                    counter = handled.get(code)
                    if counter is None:
                        counter = handled[code] = metrics.handled.labels(*labels, code.name)
                    counter.inc()
                    handling_seconds.observe(elapsed)
                    if access_log.isEnabledFor(level):
                        access_log.log(
                            level,
                            "rpc",
                            extra={
                                "fields": {
                                    "method": name,
                                    "code": code.name,
                                    "duration_ms": round(elapsed * 1000, 3),
                                }
                            },
                        )

            return observed

        return wrap_unary(handler, wrap)


class AdmissionInterceptor(WrappingInterceptor):
    """Decides whether a call may start: refuses calls beyond `limit` in flight with
    RESOURCE_EXHAUSTED instead of queueing them, calls before the schema is migrated and calls
    after the drain with UNAVAILABLE (both retryable, on another replica).

    Health checks are always admitted: a busy server is not a dead one, and probes that fail at
    peak load would take every replica out of rotation exactly when all are needed.
    """

    def __init__(self, limit: int, *, domain: str, open_: bool = True) -> None:
        super().__init__()
        self._limit = limit
        self._domain = domain
        self._in_flight = 0
        self._refusal: tuple[str, str] | None = (
            None if open_ else ("SERVICE_STARTING", "the service is starting; retry shortly")
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_refusal = 0.0

    @property
    def in_flight(self) -> int:
        """Calls admitted and not finished (health checks not counted)."""
        return self._in_flight

    def open(self) -> None:
        """Admit calls (the schema is ready)."""
        self._refusal = None

    def close(self) -> None:
        """Refuse every new call from now on: the server is shutting down."""
        self._refusal = ("SHUTTING_DOWN", "the server is shutting down; retry another replica")

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no admitted call is in flight; False if `timeout_s` passed first."""
        try:
            async with asyncio.timeout(max(timeout_s, 0)):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def quiet(self, period_s: float, *, at_most_s: float) -> None:
        """Wait until no call was refused for `period_s` (callers have moved elsewhere), or
        `at_most_s` passed. grpc cancels the calls it holds when it stops; after a quiet spell
        it holds none."""
        deadline = time.monotonic() + max(at_most_s, 0)
        while (now := time.monotonic()) < deadline:
            since = now - self._last_refusal
            if since >= period_s:
                return
            await asyncio.sleep(min(period_s - since, deadline - now))

    def wrap_handler(self, handler: Handler | None, method: str) -> Handler | None:
        if _split_method(method)[0] == _HEALTH:
            return handler

        def wrap(inner: Behavior) -> Behavior:
            async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if self._refusal is not None:
                    self._last_refusal = time.monotonic()
                    reason, message = self._refusal
                    status = to_status(Unavailable(message, reason=reason), domain=self._domain)
                    context.set_code(status.code)
                    context.set_details(status.details)
                    context.set_trailing_metadata(status.trailing_metadata)
                    return None
                if self._in_flight >= self._limit:
                    context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
                    context.set_details("server at its limit of concurrent calls; retry later")
                    return None
                self._in_flight += 1
                self._idle.clear()
                try:
                    return await inner(request, context)
                finally:
                    self._in_flight -= 1
                    if self._in_flight == 0:
                        self._idle.set()

            return admitted

        return wrap_unary(handler, wrap)


def _as_status_code(code: Any) -> grpc.StatusCode:
    """`context.code()` may hold a StatusCode or, after abort, its integer value."""
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN


class ErrorInterceptor(WrappingInterceptor):
    """Turns HisError into a rich `google.rpc.Status`; anything unexpected into a bare INTERNAL.

    It also refuses, before anything else sees them, requests that do not decode or hold text the
    database cannot store (his.runtime.request_guard): bad bytes are INVALID_ARGUMENT, never
    UNKNOWN or INTERNAL.
    """

    def __init__(self, domain: str, translators: tuple[Translate, ...] = ()) -> None:
        super().__init__()
        self._domain = domain
        self._translators = translators

    def wrap_handler(self, handler: Handler | None, method: str) -> Handler | None:
        domain = self._domain
        translators = self._translators

        def wrap(inner: Behavior) -> Behavior:
            async def mapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    check_request(request)
                    return await inner(request, context)
                except (AbortError, asyncio.CancelledError):
                    raise
                except HisError as error:
                    status = to_status(error, domain=domain)
                except Exception as error:
                    known = next(
                        (found for t in translators if (found := t(error)) is not None), None
                    )
                    if known is not None:
                        status = to_status(known, domain=domain)
                    else:
                        trace_id = current_trace_id()
                        # Frames and type only: an exception message may quote patient data
                        # (a database error repeats the conflicting key, for example).
                        error_log.error(
                            "unexpected error",
                            extra={
                                "fields": {
                                    "method": method,
                                    "exc_type": type(error).__name__,
                                    "stack": "".join(traceback.format_tb(error.__traceback__)),
                                }
                            },
                        )
                        status = internal_status(domain=domain, trace_id=trace_id)
                # Set the status and return instead of `abort()`: abort raises, and the tracing
                # layer then formats a traceback for every NOT_FOUND (measured: ~1 ms a call).
                # grpc discards the (absent) response of a call whose code is not OK.
                context.set_code(status.code)
                context.set_details(status.details)
                context.set_trailing_metadata(status.trailing_metadata)
                return None

            return mapped

        if handler is not None and not handler.request_streaming:
            if handler.response_streaming:
                return _guard_unary_stream(handler, domain)
            return wrap_unary(handler, wrap, deserializer=tolerant(handler.request_deserializer))
        return handler


def _guard_unary_stream(handler: Handler, domain: str) -> Handler:
    """A server-streaming handler (health Watch) whose request is checked like a unary one.

    Always an async generator: the tracing interceptor iterates whatever it wraps, so grpcio's
    health Watch (a coroutine writing through the context) failed with UNKNOWN under it.
    """
    behavior = cast(Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any], handler.unary_stream)

    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            check_request(request)
        except HisError as error:
            status = to_status(error, domain=domain)
            await context.abort(status.code, status.details, status.trailing_metadata)
        result = behavior(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:
            await result

    return grpc.unary_stream_rpc_method_handler(
        guarded,
        request_deserializer=tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
