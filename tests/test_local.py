"""Pieces of `his up` that need no running hospital: restart backoff, exit descriptions, and which
log lines reach the terminal."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from his.local import Backoff, describe_exit
from his.local_logs import LogFiles


def test_restart_waits_double_up_to_the_cap_and_start_over_after_a_stable_run() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, stable_s=60.0)
    assert [backoff.next_delay(uptime_s=1.0) for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert backoff.next_delay(uptime_s=61.0) == 0.5  # it had stayed up: a fresh start
    assert backoff.next_delay(uptime_s=1.0) == 1


def test_exits_are_described_as_people_say_them() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"


def _line(level: str, msg: str, **fields: str) -> str:
    return json.dumps(
        {
            "ts": "2026-01-01T08:00:00+00:00",
            "level": level,
            "service": "his-patient",
            "logger": "x",
            "msg": msg,
            "trace_id": "",
            "span_id": "",
            **fields,
        }
    )


def test_every_line_is_kept_and_only_warnings_errors_and_crashes_reach_the_terminal(
    tmp_path: Path,
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "patient.log").write_text("previous run\n")
    logs = LogFiles(tmp_path / "logs", text=False)
    assert logs.service_line("patient", _line("INFO", "rpc", code="OK") + "\n") is None
    warned = logs.service_line("patient", _line("WARNING", "database unreachable") + "\n")
    assert warned is not None and "WARNING his-patient database unreachable" in warned
    crash = "Traceback (most recent call last):"
    assert logs.service_line("patient", crash + "\n") == crash
    logs.close()
    kept = (tmp_path / "logs" / "patient.log").read_text().splitlines()
    assert [json.loads(line)["msg"] for line in kept[:2]] == ["rpc", "database unreachable"]
    assert kept[2] == crash
    assert (tmp_path / "logs" / "patient.log.1").read_text() == "previous run\n"


def test_text_log_files_hold_readable_lines(tmp_path: Path) -> None:
    logs = LogFiles(tmp_path / "logs", text=True)
    logs.service_line("patient", _line("INFO", "rpc", method="GetPatient"))
    logs.close()
    kept = (tmp_path / "logs" / "patient.log").read_text()
    assert kept == "08:00:00.000 INFO  his-patient rpc method=GetPatient\n"
