"""Running `his up` from a test as a newcomer does: a subprocess, its terminal read line by line,
its log files, and what it leaves behind."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from his.iam.config import sign_in_codes_path

READY = "HIS Mesh is up"
# Sign-in codes live this long in the shared demo hospital (the least iam allows), so that the
# web client's Node test can see one expire; every sign-in of the tests uses its code at once.
CODE_TTL_S = 10


class HisUp:
    """A `his up` process whose output is read line by line in the background."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        env = dict(os.environ, HIS_DATA_DIR=str(data_dir))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "his.cli", "up", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, marker: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            if marker in line:
                return
        raise AssertionError(f"{marker!r} never printed; output:\n{''.join(self.output)}")

    def descendants(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.process.pid).children(recursive=True)
        return children

    def service_pids(self) -> dict[str, int]:
        """The service processes running now, by service name."""
        return {
            process.cmdline()[-1]: process.pid
            for process in self.descendants()
            if "serve" in process.cmdline()
        }

    def wait_for_logged(self, marker: str, timeout_s: float = 90.0) -> None:
        """Wait until `his up`'s own log file (not the terminal) has `marker`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if marker in self.logged("up"):
                return
            time.sleep(0.02)
        raise AssertionError(f"{marker!r} never logged:\n{self.logged('up')}")

    def logged(self, name: str) -> str:
        """What `his up` wrote into logs/<name>.log so far."""
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def interrupt(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        self._pump_thread.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


def postgres_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


def left_behind(data_dir: Path, timeout_s: float = 15.0) -> list[str]:
    """Processes still running for this data directory once `his up` ended: PostgreSQL (its data
    directory on the command line) and services (HIS_DATA_DIR in their environment)."""
    mine: list[psutil.Process] = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if str(data_dir) in " ".join(process.cmdline()) or (
                process.environ().get("HIS_DATA_DIR") == str(data_dir)
            ):
                mine.append(process)
    _, alive = psutil.wait_procs(mine, timeout=timeout_s)
    return [" ".join(process.cmdline()) for process in alive if process.is_running()]


@dataclass(frozen=True)
class DemoHospital:
    """A running `his up --demo` (tests/e2e/conftest.py): its process, data directory and the
    gateway's origin."""

    up: HisUp
    data_dir: Path
    gateway: str

    @property
    def codes(self) -> Path:
        """The local sender's file of sign-in codes."""
        return sign_in_codes_path(self.data_dir)

    def token(self, username: str) -> str:
        """A staff token, as a newcomer gets one (`his token --user`)."""
        done = subprocess.run(
            [sys.executable, "-m", "his.cli", "token", "--user", username],
            env=dict(os.environ, HIS_DATA_DIR=str(self.data_dir)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def gateway_origin(printed: str) -> str:
    """The gateway's address as `his up` prints it."""
    found = re.search(r"^gateway\s.*?(http://\S+)", printed, re.MULTILINE)
    assert found, f"`his up` printed no gateway address:\n{printed}"
    return found.group(1).rstrip("/")
