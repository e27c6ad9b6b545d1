"""Where `his up` puts logs: everything in `<HIS_DATA_DIR>/logs/`, only what needs a human on the
terminal.

Each service writes JSON log lines to its stderr (`his up` asks for JSON, so a line's level can be
read); `his up` appends every line to `logs/<service>.log` and shows WARNING and above, and any line
that is not a log record (a crash's traceback), on the terminal. `his up`'s own records go to
`logs/up.log`. The files hold JSON lines, or text with `HIS_LOG_FORMAT=text`; the previous run's
files are kept as `*.log.1`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from his.runtime.logs import JsonFormatter, TextFormatter

# Keys of a JSON log line (his.runtime.logs.JsonFormatter) that are not the record's own fields.
_RECORD_KEYS = frozenset({"ts", "level", "service", "logger", "msg", "trace_id", "span_id"})
TERMINAL_LEVEL = logging.WARNING
# Records `his up` logs only to keep in up.log, because it printed them on the terminal itself.
PRINTED = "printed"


def render_text(record: dict[str, Any]) -> str:
    """One JSON log line of a service as a readable text line (his.runtime.logs.TextFormatter)."""
    fields = {k: v for k, v in record.items() if k not in _RECORD_KEYS and k != "stack"}
    log_record = logging.makeLogRecord(
        {
            "msg": str(record.get("msg", "")),
            "levelname": str(record.get("level", "INFO")),
            "fields": fields,
            "trace_id": record.get("trace_id", ""),
        }
    )
    with contextlib.suppress(KeyError, ValueError):
        log_record.created = datetime.fromisoformat(str(record["ts"])).timestamp()
    line = TextFormatter(str(record.get("service", ""))).format(log_record)
    stack = record.get("stack")
    return f"{line}\n{stack.rstrip()}" if isinstance(stack, str) and stack else line


def parse(line: str) -> dict[str, Any] | None:
    """A service's JSON log line as a dict, or None for anything else (a traceback, a print)."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "level" in record else None


def for_terminal(record: dict[str, Any] | None) -> bool:
    """Whether a line belongs on the terminal: WARNING and above, or not a log record at all."""
    if record is None:
        return True
    level = logging.getLevelName(str(record.get("level", "")))
    return not isinstance(level, int) or level >= TERMINAL_LEVEL


class LogFiles:
    """The log directory of one `his up` run."""

    def __init__(self, directory: Path, *, text: bool) -> None:
        self.directory = directory
        self.text = text
        directory.mkdir(parents=True, exist_ok=True)
        for current in directory.glob("*.log"):
            current.replace(current.with_name(current.name + ".1"))
        self._open: dict[str, IO[str]] = {}
        self._handlers: list[logging.Handler] = []

    def path(self, name: str) -> Path:
        """The file of `name` (a service, or `up` for `his up` itself)."""
        return self.directory / f"{name}.log"

    def service_line(self, name: str, line: str) -> str | None:
        """Keep one line a service wrote; return what to show on the terminal, if anything."""
        line = line.rstrip("\n")
        record = parse(line)
        shown = line if record is None else render_text(record)
        self._file(name).write((shown if self.text else line) + "\n")
        return shown if for_terminal(record) else None

    def _file(self, name: str) -> IO[str]:
        if name not in self._open:
            self._open[name] = self.path(name).open("a", encoding="utf-8", buffering=1)
        return self._open[name]

    def configure_own_logging(self, level: str) -> None:
        """`his up`'s own records: all into up.log; WARNING and above also on the terminal (except
        those it already printed)."""
        to_file = logging.StreamHandler(self._file("up"))
        to_file.setFormatter(TextFormatter("his-up") if self.text else JsonFormatter("his-up"))
        to_terminal = logging.StreamHandler(sys.stderr)
        to_terminal.setFormatter(TextFormatter("his-up"))
        to_terminal.setLevel(TERMINAL_LEVEL)
        # pgserver's errors quote whole server logs: up.log has them, his up says what failed.
        to_terminal.addFilter(
            lambda record: not getattr(record, PRINTED, False) and record.name != "pgserver"
        )
        root = logging.getLogger()
        for existing in list(root.handlers):
            root.removeHandler(existing)
        root.addHandler(to_file)
        root.addHandler(to_terminal)
        self._handlers = [to_file, to_terminal]
        root.setLevel(level)
        for noisy in ("sqlalchemy", "asyncio", "alembic"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

    def close(self) -> None:
        """Close every file (after the services' output has been read to the end); what is
        logged later (exit hooks) goes nowhere."""
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
        if self._handlers:
            root.addHandler(logging.NullHandler())
        for file in self._open.values():
            file.close()
        self._open.clear()
