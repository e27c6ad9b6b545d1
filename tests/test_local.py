"""Pieces of `his up` that need no running hospital: restart backoff, exit descriptions, which
log lines reach the terminal, `his token` with no hospital running and `his up --demo` refused in
the mesh (neither takes the fixed local ports, so they run beside the other tests, not with the
`his up` ones in tests/e2e)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from his.local import Backoff, describe_exit
from his.local_logs import LogFiles
from his.local_secrets import local_secrets
from tests.support import free_port


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


def test_his_token_with_nothing_running_says_to_start_the_hospital(tmp_path: Path) -> None:
    def token(data_dir: Path, user: str = "admin") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "his.cli", "token", "--user", user],
            env=dict(
                os.environ, HIS_DATA_DIR=str(data_dir), HIS_IAM_ADDR=f"localhost:{free_port()}"
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    never_ran = token(tmp_path / "empty")
    assert never_ran.returncode == 1
    assert "no hospital has run here" in never_ran.stderr
    assert "make run" in never_ran.stderr
    assert not (tmp_path / "empty").exists()  # and makes no secrets there

    local_secrets(tmp_path / "his")  # a hospital ran here once, but is not running now
    stopped = token(tmp_path / "his")
    assert stopped.returncode == 1
    assert stopped.stdout == ""
    assert stopped.stderr.startswith("his token: iam is not reachable at localhost:")
    assert "make run" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "AioRpcError" not in stopped.stderr
    # A demo staff member's credential exists only once `his up --demo` enrolled them.
    never_enrolled = token(tmp_path / "his", "reg.amina")
    assert never_enrolled.returncode == 1
    assert "no development credential is known for 'reg.amina'" in never_enrolled.stderr
    assert "his up --demo" in never_enrolled.stderr
    assert "Traceback" not in never_enrolled.stderr


def test_up_demo_is_refused_outside_development(tmp_path: Path) -> None:
    # The demo prints known passwords and TOTP secrets: never in the mesh.
    refused = subprocess.run(
        [sys.executable, "-m", "his.cli", "up", "--demo"],
        env=dict(os.environ, HIS_DATA_DIR=str(tmp_path / "his"), HIS_MESH="istio"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "refused with HIS_MESH=istio" in refused.stderr
    assert "TOTP secret" not in refused.stdout
    assert not (tmp_path / "his").exists()  # nothing started, no secrets made
