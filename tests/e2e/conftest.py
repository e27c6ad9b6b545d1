"""Fixtures of the end-to-end tests, which run `his up` on the fixed local ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from his.base.catalog import implemented
from his.gateway.config import GatewayConfig
from tests.e2e.his_up import CODE_TTL_S, READY, DemoHospital, HisUp, gateway_origin, left_behind


def _fail_if_ports_taken() -> None:
    """The fixed local ports must be free (is another `his up` running?)."""
    gateway = GatewayConfig()
    ports = [p for e in implemented() for p in (e.port, e.metrics_port, e.http_port) if p]
    for port in (*ports, gateway.port, gateway.admin_port, gateway.app_port):
        # The gateway's ports are on 127.0.0.1 only; the services' on every address.
        for family, host in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                if sock.connect_ex((host, port)) == 0:
                    pytest.fail(f"port {port} is in use: stop the other `his up` first")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh HIS_DATA_DIR; the fixed local ports must be free (is another `his up` running?)."""
    _fail_if_ports_taken()
    yield tmp_path / "his"


# Starting the whole hospital is most of what these tests cost: the tests that only use a running
# `his up --demo` (the README's snippets, the web client) share one, and the test that kills its
# parts and sees them come back runs on it last.
@pytest.fixture(scope="package")
def demo_hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoHospital]:
    """One `his up --demo` for the tests that use it; stopped with Ctrl-C after the last of them,
    leaving no process behind. Sign-in codes live CODE_TTL_S in it (the web client's Node test
    sees one expire)."""
    _fail_if_ports_taken()
    data_dir = tmp_path_factory.mktemp("demo") / "his"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HIS_IAM_SIGN_IN_CODE_TTL_S", str(CODE_TTL_S))
        up = HisUp(data_dir, "--demo")
    try:
        up.wait_for(READY, timeout_s=180)
        yield DemoHospital(up, data_dir, gateway_origin("".join(up.output)))
    finally:
        code = up.interrupt()
    assert code == 0, "".join(up.output)
    assert "stopped." in "".join(up.output)
    assert left_behind(data_dir) == []


@pytest.fixture
def hospital_to_break(demo_hospital: DemoHospital) -> DemoHospital:
    """The shared `his up --demo`, for the one test that kills its parts (it runs last)."""
    return demo_hospital


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of the shared hospital after the others (which need the fixed ports free), and
    the one that kills its parts after every other user of it."""

    def order(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        if "hospital_to_break" in names:
            return 2
        return 1 if "demo_hospital" in names else 0

    e2e = Path(__file__).parent
    mine = [i for i in items if e2e in Path(str(i.path)).parents]
    ordered = iter(sorted(mine, key=order))
    items[:] = [next(ordered) if e2e in Path(str(i.path)).parents else i for i in items]
