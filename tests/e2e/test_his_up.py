"""`his up` as a newcomer runs it: start everything, use it from outside, Ctrl-C, nothing left."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from his.base.catalog import implemented
from his.common.v1 import types_pb2
from his.patient import demo as patient_demo
from his.patient.v1 import patient_service_pb2 as pb
from his_client import PatientClient
from tests.support import fails

pytestmark = pytest.mark.slow

READY = "HIS Mesh is up"


class HisUp:
    """A `his up` process whose output is read line by line in the background."""

    def __init__(self, data_dir: Path, *args: str) -> None:
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

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=60)
        self._pump_thread.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


def _postgres_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh HIS_DATA_DIR; the fixed local ports must be free (is another `his up` running?)."""
    for entry in implemented():
        for port in (entry.port, entry.metrics_port):
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("::1", port)) == 0:
                    pytest.fail(f"port {port} is in use: stop the other `his up` first")
    yield tmp_path / "his"


def _new_patient(national_id: str) -> pb.Patient:
    return pb.Patient(
        family_name="Newcomer",
        given_names=["Ada"],
        gender=pb.ADMINISTRATIVE_GENDER_FEMALE,
        birth_date=types_pb2.Date(year=1990, month=5, day=17),
        national_id=types_pb2.Identifier(system="urn:test", value=national_id),
    )


def _token(data_dir: Path, username: str) -> str:
    """What a newcomer does: `his token --user <username>` against the running hospital."""
    done = subprocess.run(
        [sys.executable, "-m", "his.cli", "token", "--user", username],
        env=dict(os.environ, HIS_DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _demo_identifiers() -> list[str]:
    """Every name, national id, phone and city of the demo patients (none may be logged)."""
    return [
        value
        for family, given, _, _, national_id, phone, city in patient_demo.PEOPLE
        for value in (family, given, national_id, phone, city)
        if value
    ]


async def test_up_serves_demo_data_and_ctrl_c_leaves_no_process(data_dir: Path) -> None:
    up = HisUp(data_dir, "--demo")
    try:
        up.wait_for(READY)
        printed = "".join(up.output)
        for entry in implemented():
            assert f"localhost:{entry.port}" in printed
        token = _token(data_dir, "reg.amina")
        async with PatientClient(token) as client:
            demo = await client.search(name_prefix="wang")
            assert [p.family_name for p in demo] == ["Wang"]
            created = await client.create(_new_patient("E2E-1"), request_id="e2e-1")
            found = await client.search(
                national_id=types_pb2.Identifier(system="urn:test", value="E2E-1")
            )
            assert [p.name for p in found] == [created.name]
        async with PatientClient(_token(data_dir, "audit.khan")) as auditor:
            refused = await fails(auditor.get(created.name))
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED
        async with PatientClient("not-a-token") as stranger:
            unknown = await fails(stranger.get(created.name))
        assert unknown.code == grpc.StatusCode.UNAUTHENTICATED
        processes = [*up.descendants(), psutil.Process(_postgres_pid(data_dir))]
    finally:
        code = up.interrupt()
    assert code == 0, "".join(up.output)
    assert "stopped." in "".join(up.output)
    # Every line every service logged while the demo loaded and was used: no patient data.
    logged = "".join(up.output)
    # Whole words, case as written: "Li" the family name, not the "Li" of "ListPatients".
    leaked = [v for v in _demo_identifiers() if re.search(rf"\b{re.escape(v)}\b", logged)]
    assert leaked == []
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == [], f"left behind: {alive}"

    # A restart keeps the data: the patient registered above is still there.
    again = HisUp(data_dir)
    try:
        again.wait_for(READY)
        async with PatientClient(_token(data_dir, "reg.amina")) as client:
            assert (await client.get(created.name)).national_id.value == "E2E-1"
    finally:
        assert again.interrupt() == 0
