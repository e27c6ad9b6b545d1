"""Logs carry the trace id and only what the call site gave; tracing never blocks start-up."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from his.runtime.config import TelemetryConfig
from his.runtime.logs import JsonFormatter, TextFormatter, _TraceFilter
from his.runtime.telemetry import make_tracer_provider


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


def test_an_unreachable_trace_collector_does_not_stop_start_up() -> None:
    config = TelemetryConfig(service_name="his-test", otlp_endpoint="http://127.0.0.1:9")
    provider = make_tracer_provider(config)
    with provider.get_tracer("t").start_as_current_span("s"):
        pass
    provider.shutdown()  # the failed export is logged by OTel, never raised


def test_no_exporter_is_configured_by_default() -> None:
    provider = make_tracer_provider(TelemetryConfig(service_name="his-test"))
    assert provider._active_span_processor._span_processors == ()
