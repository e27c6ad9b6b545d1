"""Structured logging: JSON in containers, readable text on a terminal, a trace id on every line.

Log calls pass structured values as `extra={"fields": {...}}`. Never put patient data (names,
identifiers, phones, addresses, clinical content) in a message or a field: log resource ids instead.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from his.runtime.config import TelemetryConfig
from his.runtime.telemetry import current_span_id, current_trace_id


class _TraceFilter(logging.Filter):
    """Stamps the active trace and span ids onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id()
        record.span_id = current_span_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.exc_info[1] is not None:
            entry["exc_type"] = type(record.exc_info[1]).__name__
            entry["stack"] = self.formatStack_(record)
        return json.dumps(entry, default=str, ensure_ascii=False)

    def formatStack_(self, record: logging.LogRecord) -> str:
        """The traceback frames only: exception messages may quote data (e.g. a unique key)."""
        import traceback  # noqa: PLC0415

        assert record.exc_info is not None
        return "".join(traceback.format_tb(record.exc_info[2]))


class TextFormatter(logging.Formatter):
    """A compact line for humans: time, level, service, message, key=value fields, trace id."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        fields = getattr(record, "fields", {}) or {}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        trace_id = getattr(record, "trace_id", "")
        line = f"{stamp} {record.levelname:<5} {self._service} {record.getMessage()}"
        if tail:
            line += f" {tail}"
        if trace_id:
            line += f" trace={trace_id}"
        if record.exc_info and record.exc_info[1] is not None:
            import traceback  # noqa: PLC0415

            line += f" exc={type(record.exc_info[1]).__name__}\n"
            line += "".join(traceback.format_tb(record.exc_info[2]))
        return line


def configure_logging(config: TelemetryConfig) -> None:
    """Route the root logger to stderr in the configured format, once per process."""
    use_json = config.log_format == "json" or (
        config.log_format == "auto" and not sys.stderr.isatty()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(config.service_name) if use_json else TextFormatter(config.service_name)
    )
    handler.addFilter(_TraceFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(config.log_level)
    # Library chatter (SQL echo, HTTP access of the metrics endpoint) stays out unless debugging.
    for noisy in ("sqlalchemy", "asyncio", "alembic", "pgserver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
