"""Deadlines, retries and the circuit breaker, as one client interceptor per upstream channel.

Per call, in order: the deadline is the caller's timeout (or the default), never longer than what
is left of the incoming call being served; the breaker fails fast while open; an attempt that ends
UNAVAILABLE is retried with full-jitter backoff only if the method is idempotent (proto
`idempotency_level`) or carries a `request_id`, and only while the deadline allows another try.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pybreaker
from prometheus_client import CollectorRegistry, Counter, Gauge

from his.base import deadline
from his_client import guard
from his_client.config import ClientConfig

if TYPE_CHECKING:
    from tenacity import RetryCallState
from his_client.errors import FAILURE_CODES, UpstreamError
from his_client.idempotency import carries_request_id, retryable_methods

# Seconds kept back from the caller's remaining time for our own reply to travel.
REPLY_MARGIN_S = 0.05

BREAKER_STATE_VALUE = {
    pybreaker.STATE_CLOSED: 0,
    pybreaker.STATE_HALF_OPEN: 1,
    pybreaker.STATE_OPEN: 2,
}


class ClientMetrics:
    """The SDK's metric families, in the registry of the process that uses it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.breaker_state = Gauge(
            "his_client_breaker_state",
            "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.",
            ("upstream",),
            registry=self.registry,
        )
        self.retries = Counter(
            "his_client_retries",
            "Retried attempts of calls to an upstream.",
            ("upstream", "grpc_method"),
            registry=self.registry,
        )
        self.fast_failures = Counter(
            "his_client_breaker_rejections",
            "Calls refused without trying because the upstream's breaker was open.",
            ("upstream",),
            registry=self.registry,
        )


class _BreakerGauge(pybreaker.CircuitBreakerListener):
    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self._gauge.set(BREAKER_STATE_VALUE[new.name])


def make_breaker(
    upstream: str,
    config: ClientConfig,
    metrics: ClientMetrics,
    not_a_failure: Callable[[Any], bool],
) -> pybreaker.CircuitBreaker:
    """One breaker per upstream; `not_a_failure` says which errors leave it alone."""
    gauge = metrics.breaker_state.labels(upstream)
    gauge.set(0)
    return pybreaker.CircuitBreaker(
        fail_max=config.breaker_fail_max,
        reset_timeout=config.breaker_reset_s,
        name=upstream,
        exclude=[not_a_failure],
        listeners=[_BreakerGauge(gauge)],
        throw_new_error_on_trip=False,
    )


Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]


class ResilienceInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Deadline, breaker and safe retries for every unary call on one upstream's channel.

    The breaker judges logical calls, not attempts: one call that tried three times is one
    failure. While it is half-open exactly one trial call goes through; the others fail fast.
    """

    def __init__(
        self,
        upstream: str,
        config: ClientConfig,
        metrics: ClientMetrics,
    ) -> None:
        self._upstream = upstream
        self._config = config
        self._metrics = metrics
        self._retryable = retryable_methods()
        self._trial_in_flight = False
        self.breaker = make_breaker(upstream, config, metrics, self._not_an_outage)

    def _not_an_outage(self, error: Any) -> bool:
        """What must not open the breaker: answers (NOT_FOUND, ...), deadlines the caller cut
        short, and cancellations — except that a cancelled trial does not close it either."""
        if isinstance(error, asyncio.CancelledError):
            return not self._trial_in_flight
        if isinstance(error, UpstreamError) and error.budget_limited:
            return True
        return not (isinstance(error, grpc.aio.AioRpcError) and error.code() in FAILURE_CODES)

    def _timeout(self, requested: float | None) -> float:
        timeout = requested if requested is not None else self._config.default_timeout_s
        left = deadline.remaining()
        if left is not None:
            timeout = min(timeout, left - REPLY_MARGIN_S)
        return timeout

    def _fast_failure(self) -> UpstreamError:
        self._metrics.fast_failures.labels(self._upstream).inc()
        return UpstreamError(
            self._upstream,
            grpc.StatusCode.UNAVAILABLE,
            f"{self._upstream}: circuit breaker open, failing fast",
            circuit_open=True,
        )

    async def intercept_unary_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        guard.check(method)
        requested = client_call_details.timeout
        timeout = self._timeout(requested)
        # The caller's own budget, not the upstream's health, set this deadline.
        budget_limited = timeout < (requested or self._config.default_timeout_s)
        if timeout <= 0:
            raise UpstreamError(
                self._upstream,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "no time left of the incoming call's deadline",
                budget_limited=True,
            )
        may_retry = self._config.retries_enabled and (
            method in self._retryable or carries_request_id(request)
        )
        end = time.monotonic() + timeout

        async def attempt() -> Any:
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=max(0.001, end - time.monotonic()),
                metadata=client_call_details.metadata,
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            try:
                call = await continuation(details, request)
                return await call
            except grpc.aio.AioRpcError as error:
                raise UpstreamError.wrap(self._upstream, error, budget_limited) from None

        def before_sleep(state: RetryCallState) -> None:
            self._metrics.retries.labels(self._upstream, method.rsplit("/", 1)[-1]).inc()

        # Imported at the first call, not with the module: a service starts (and is ready)
        # before it calls anyone, and tenacity is ~10 ms of that start.
        from tenacity import (  # noqa: PLC0415
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            stop_before_delay,
            wait_random_exponential,
        )

        retrying = AsyncRetrying(
            # Stop after the attempt budget, or when the next backoff would pass the deadline.
            stop=stop_after_attempt(self._config.max_attempts if may_retry else 1)
            | stop_before_delay(timeout),
            wait=wait_random_exponential(
                multiplier=self._config.backoff_base_s, max=self._config.backoff_max_s
            ),
            retry=retry_if_exception(_is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        if self._trial_in_flight:
            raise self._fast_failure()
        try:
            with self.breaker.calling():
                trial = self.breaker.current_state == pybreaker.STATE_HALF_OPEN
                self._trial_in_flight = trial
                try:
                    return await retrying(attempt)
                finally:
                    if trial:
                        self._trial_in_flight = False
        except pybreaker.CircuitBreakerError:
            raise self._fast_failure() from None


def _is_retryable(error: BaseException) -> bool:
    """UNAVAILABLE from the upstream itself; not when it only relays its own dependency's outage
    (that layer has retried already — retrying here too would multiply the load)."""
    return (
        isinstance(error, UpstreamError)
        and not error.circuit_open
        and error.code() == grpc.StatusCode.UNAVAILABLE
        and not error.relayed_outage
    )
