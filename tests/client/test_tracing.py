"""Outbound calls carry the caller's trace: the current span's ids as W3C `traceparent`, with a
client span of their own only when spans are recorded (a tracer provider given)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry

from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his_client import HisClients
from his_client.config import ClientConfig
from tests.client.upstream import ScriptedPatientService

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


class TraceRecorder(ScriptedPatientService):
    """GetPatient records the `traceparent` headers each call carried."""

    def __init__(self) -> None:
        super().__init__()
        self.traceparents: list[list[str]] = []

    async def GetPatient(
        self, request: pb.GetPatientRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Patient:
        metadata = context.invocation_metadata() or ()
        self.traceparents.append([str(v) for k, v in metadata if k == "traceparent"])
        return pb.Patient(name=request.name)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[TraceRecorder, str]]:
    service = TraceRecorder()
    server = grpc.aio.server()
    pb_grpc.add_PatientServiceServicer_to_server(service, server)
    port = server.add_insecure_port("[::]:0")
    await server.start()
    yield service, f"localhost:{port}"
    await server.stop(0)


async def _call(address: str, provider: TracerProvider | None = None, **kwargs: Any) -> None:
    config = ClientConfig(addresses={"patient": address})
    async with HisClients(config, registry=CollectorRegistry(), tracer_provider=provider) as his:
        await his.patient.GetPatient(pb.GetPatientRequest(name="patients/p-1"), **kwargs)


def _inside_a_served_call() -> object:
    """The context the server's TraceContextInterceptor sets up: a non-recording span."""
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(TraceFlags.SAMPLED)))
    return otel_context.attach(trace.set_span_in_context(span))


async def test_a_call_made_while_serving_one_carries_its_trace(
    recorder: tuple[TraceRecorder, str],
) -> None:
    service, address = recorder
    token = _inside_a_served_call()
    try:
        await _call(address, metadata=(("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),))
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]

    # The caller's own header is replaced, not doubled.
    assert service.traceparents == [[f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"]]


async def test_a_call_outside_any_trace_carries_none(recorder: tuple[TraceRecorder, str]) -> None:
    service, address = recorder
    await _call(address)
    assert service.traceparents == [[]]


async def test_with_a_tracer_provider_the_call_gets_a_span_of_its_own_in_the_same_trace(
    recorder: tuple[TraceRecorder, str],
) -> None:
    service, address = recorder
    provider = TracerProvider()
    token = _inside_a_served_call()
    try:
        await _call(address, provider)
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]
        provider.shutdown()

    [[header]] = service.traceparents
    version, trace_id, span_id, _ = header.split("-")
    assert (version, trace_id) == ("00", f"{TRACE_ID:032x}")
    assert span_id != f"{SPAN_ID:016x}"
