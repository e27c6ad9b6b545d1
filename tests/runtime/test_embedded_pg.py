"""EmbeddedPostgres lets go of the server correctly: the last live holder stops whatever server runs
on the data directory now — also after it was restarted behind the handle's back, and also when a
holder died without letting go."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import asyncpg
import psutil
import pytest

from his.runtime.embedded_pg import MAX_CONNECTIONS, EmbeddedPostgres

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        psutil.Process(pid).wait(timeout=15)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stop_stops_the_server_running_now_after_a_restart_behind_its_back(
    tmp_path: Path,
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    pg.start()
    first = pg.pid()
    assert first is not None
    # Someone else (a person with pg_ctl, another tool) restarts it: a new postmaster.
    postmaster = psutil.Process(first)  # pg_ctl beside it, run as its user (root may not)
    pg_ctl = Path(postmaster.exe()).parent / "pg_ctl"
    restart = [
        str(pg_ctl),
        "-D",
        str(pg.data_dir),
        "-l",
        str(pg.log_file),
        "-w",
        "-m",
        "fast",
        "restart",
    ]
    user = postmaster.username() if os.geteuid() == 0 else None
    done = subprocess.run(
        restart, capture_output=True, text=True, timeout=60, check=False, user=user
    )
    assert done.returncode == 0, done.stdout + done.stderr
    second = pg.pid()
    assert second is not None and second != first
    pg.stop()
    assert _gone(second), "the restarted server was left running"
    assert pg.pid() is None


def test_a_holder_that_died_without_letting_go_does_not_keep_the_server_running(
    tmp_path: Path,
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    pg.start()
    pid = pg.pid()
    assert pid is not None
    holders = tmp_path / "pgdata" / ".handle_pids.json"
    holders.write_text(json.dumps([_dead_pid(), *json.loads(holders.read_text())]))
    pg.stop()
    assert _gone(pid), "a dead holder kept the server running"
    assert json.loads(holders.read_text()) == []


def test_a_live_holder_keeps_the_server_running(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    pg.start()
    holders = tmp_path / "pgdata" / ".handle_pids.json"
    parent = os.getppid()  # alive for the whole test
    holders.write_text(json.dumps([parent, *json.loads(holders.read_text())]))
    pg.stop()
    pid = pg.pid()
    assert pid is not None, "stopped under another holder's feet"
    assert json.loads(holders.read_text()) == [parent]
    holders.write_text("[]")
    EmbeddedPostgres(tmp_path / "pgdata")._stop_server(None)  # clean up after the test
    assert _gone(pid)


async def test_the_server_takes_the_whole_local_hospitals_connections(
    postgres: EmbeddedPostgres,
) -> None:
    # PostgreSQL's default of 100 is fewer than nine services' pools; a test holding 20
    # connections at once failed with "too many clients" when the default was kept.
    connection = await asyncpg.connect(postgres.url)
    try:
        assert int(await connection.fetchval("SHOW max_connections")) >= MAX_CONNECTIONS
    finally:
        await connection.close()
