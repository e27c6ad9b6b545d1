"""Logs carry the trace id and only what the call site gave; tracing never blocks start-up."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.config import TelemetryConfig
from his.runtime.health import SERVING
from his.runtime.logs import JsonFormatter, TextFormatter, _TraceFilter
from his.runtime.server import RunningService
from his.runtime.telemetry import make_tracer_provider
from tests.identity import registrar_channel
from tests.patient.helpers import make_patient
from tests.runtime.serving import his_serve
from tests.support import free_port, wait_for_health

SERVICE = "his.patient.v1.PatientService"
GRACE_S = 2
# Hang detectors, not speed targets (CONVENTIONS 8): a normal start takes a few seconds and a
# normal stop well under one; the exporter alone would wait EXPORTER_TIMEOUT_S on the collector.
START_BOUND_S = 30.0
STOP_BOUND_S = GRACE_S + 8.0
EXPORTER_TIMEOUT_S = 120


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_TraceFilter())
    logger = logging.getLogger(f"test.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_the_active_trace_id_and_fields() -> None:
    logger, stream = _logger(JsonFormatter("his-patient"))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("call") as span:
        logger.info("rpc", extra={"fields": {"method": "X/Get", "code": "OK"}})
        trace_id = format(span.get_span_context().trace_id, "032x")
    line = json.loads(stream.getvalue())
    assert line["trace_id"] == trace_id
    assert line["service"] == "his-patient"
    assert line["msg"] == "rpc"
    assert (line["method"], line["code"]) == ("X/Get", "OK")


def test_lines_outside_a_call_have_an_empty_trace_id() -> None:
    logger, stream = _logger(JsonFormatter("his-patient"))
    logger.info("serving")
    assert json.loads(stream.getvalue())["trace_id"] == ""


def test_exceptions_are_logged_as_type_and_frames_without_their_message() -> None:
    for formatter in (JsonFormatter("his"), TextFormatter("his")):
        logger, stream = _logger(formatter)
        national_id = "110101198403120023"
        try:
            raise ValueError(f"Key (national_id)=({national_id}) already exists")
        except ValueError:
            logger.exception("failed")
        text = stream.getvalue()
        assert "ValueError" in text
        assert "110101198403120023" not in text


class Blackhole:
    """A trace collector that accepts connections and never answers a byte: the worst kind.

    It counts the connections it took, so a test can tell the exporter really tried it.
    """

    def __init__(self) -> None:
        self.connections = 0
        self._connected = asyncio.Event()
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._swallow, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()
        await self._server.wait_closed()

    @property
    def endpoint(self) -> str:
        """The collector's OTLP/gRPC endpoint."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._connected.set()
        self._held.append(writer)  # kept open, never read from, never written to

    async def reached(self, *, timeout_s: float) -> bool:
        """Whether an exporter has connected, waiting up to `timeout_s` for one."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass
class Served:
    """A `his serve patient` process exporting its traces to a blackholed collector."""

    process: subprocess.Popen[bytes]
    address: str
    collector: Blackhole
    stderr: Path

    def log(self) -> str:
        """The end of what the process logged, for failure messages."""
        return self.stderr.read_text(encoding="utf-8", errors="replace")[-4000:]


@pytest.fixture
async def blackholed(
    database_url: str, audit_service: RunningService, tmp_path: Path
) -> AsyncIterator[Served]:
    """The patient service as a container runs it, its trace collector a blackhole, SERVING.

    The bounds are hang detectors, not speed targets: a start-up that waited on the exporter
    would wait out the exporter's timeout, set far beyond them.
    """
    stderr = tmp_path / "serve.log"
    async with Blackhole() as collector:
        port = free_port()
        with stderr.open("wb") as log:
            process = his_serve(
                "patient",
                database_url,
                port,
                audit_service,
                stderr=log,
                HIS_GRACE_S=str(GRACE_S),
                HIS_LOG_FORMAT="json",
                HIS_OTLP_ENDPOINT=collector.endpoint,
                # Spans leave a moment after each call (not after the default 5 s), and each
                # export waits on the silent collector far longer than any bound below.
                OTEL_BSP_SCHEDULE_DELAY="100",
                OTEL_EXPORTER_OTLP_TIMEOUT=str(EXPORTER_TIMEOUT_S),
            )
        served = Served(process, f"localhost:{port}", collector, stderr)
        try:
            try:
                await wait_for_health(served.address, SERVICE, SERVING, timeout_s=START_BOUND_S)
            except AssertionError:
                raise AssertionError(f"not SERVING in {START_BOUND_S} s:\n{served.log()}") from None
            yield served
        finally:
            if process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.wait)


async def _answers_a_call_and_exports(served: Served) -> None:
    """A registrar creates and reads a patient; the exporter then tries the collector."""
    async with registrar_channel(served.address) as channel:
        stub = pb_grpc.PatientServiceStub(channel)
        created = await stub.CreatePatient(
            pb.CreatePatientRequest(patient=make_patient()), timeout=10
        )
        read = await stub.GetPatient(pb.GetPatientRequest(name=created.name), timeout=10)
    assert read.name == created.name
    # Without this the test would pass for a server that ignored HIS_OTLP_ENDPOINT.
    assert await served.collector.reached(timeout_s=10), (
        f"the exporter never tried the collector:\n{served.log()}"
    )


async def test_a_blackholed_trace_collector_does_not_stop_start_up(blackholed: Served) -> None:
    # SERVING within the bound is the fixture's; a real call must be answered too.
    await _answers_a_call_and_exports(blackholed)
    # ...and the next one as well, while the exporter is stuck on the collector.
    async with registrar_channel(blackholed.address) as channel:
        page = await pb_grpc.PatientServiceStub(channel).ListPatients(
            pb.ListPatientsRequest(page_size=1), timeout=10
        )
    assert len(page.patients) == 1


# The process used to linger ~20 s after "stopped" in the tracer provider's unbounded atexit flush,
# past a pod's grace period; the runtime now shuts the provider down within a bound.
async def test_a_blackholed_trace_collector_does_not_hold_up_shutdown(blackholed: Served) -> None:
    await _answers_a_call_and_exports(blackholed)
    blackholed.process.send_signal(signal.SIGTERM)
    try:
        exit_code = await asyncio.to_thread(blackholed.process.wait, STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running {STOP_BOUND_S} s after SIGTERM:\n{blackholed.log()}"
        ) from None
    assert exit_code == 0, blackholed.log()


def test_no_spans_are_recorded_without_a_collector() -> None:
    assert make_tracer_provider(TelemetryConfig(service_name="his-test")) is None


def test_a_collector_gets_a_batching_exporter() -> None:
    config = TelemetryConfig(service_name="his-test", otlp_endpoint="http://localhost:4317")
    provider = make_tracer_provider(config)
    assert provider is not None
    try:
        processors = provider._active_span_processor._span_processors
        assert [type(p).__name__ for p in processors] == ["BatchSpanProcessor"]
    finally:
        provider.shutdown()
