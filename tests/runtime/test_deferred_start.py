"""A service that answers some methods early (his.runtime.deferred) is ready truthfully: once
SERVING, every rpc is answered correctly; the early ones at once, the others once the rest of the
servicer is loaded. And a schema behind head is still found out by the start-up's check, which
runs on the driver without SQLAlchemy.

The real `his serve patient` runs with an import gate: `import sqlalchemy` blocks until the test
opens it (or fails, when the test says so). SERVING and GetPatient while the gate is shut prove
that neither needs SQLAlchemy; a ListPatients that waits, then answers once it opens, proves the
other methods wait for the rest and then answer as usual.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from his.base.catalog import lookup
from his.base.errors import Unavailable
from his.patient.schema import PATIENT_COLUMNS, SCHEMA
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.config import LIVENESS
from his.runtime.database import Database
from his.runtime.deferred import DeferredServicer, Early
from his.runtime.health import NOT_SERVING, SERVING, probe
from his.runtime.migrations import upgrade
from his.runtime.schema_version import at_head, head_revision
from tests.conftest import service_config
from tests.identity import channel_as
from tests.patient.helpers import make_patient, request_id
from tests.runtime.test_startup_imports import _env
from tests.support import fails, free_port, fresh_database, wait_for_health

_SERVICE = lookup("patient").grpc_service

# `his serve patient` with `import sqlalchemy` held until the gate file exists ("fail" in it:
# the import fails, as in a broken image).
_GATED = textwrap.dedent(
    """
    import sys, time
    from importlib.machinery import PathFinder
    from pathlib import Path

    gate = Path(sys.argv[1])

    class Held:
        # Waits in the module's own import (a finder would hold the global import lock).
        def __init__(self, loader):
            self.loader = loader

        def create_module(self, spec):
            return self.loader.create_module(spec)

        def exec_module(self, module):
            while not gate.exists():
                time.sleep(0.01)
            if gate.read_text() == "fail":
                raise ImportError("the test's gate refused sqlalchemy")
            self.loader.exec_module(module)

    class Gate:
        def find_spec(self, name, path=None, target=None):
            if name != "sqlalchemy":
                return None
            spec = PathFinder.find_spec(name, path)
            spec.loader = Held(spec.loader)
            return spec

    sys.meta_path.insert(0, Gate())
    from his.cli import main
    main(["serve", "patient"])
    """
)


def test_the_hot_read_names_the_columns_tables_py_declares() -> None:
    from his.patient.tables import patients  # noqa: PLC0415

    assert tuple(column.name for column in patients.c) == PATIENT_COLUMNS
    assert patients.schema == SCHEMA


def _gated(database_url: str, gate: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _GATED, str(gate)],
        env=_env("patient", database_url, port),
        stderr=subprocess.DEVNULL,
    )
    return process, port


async def test_every_method_of_the_service_is_early_or_waits_for_the_rest() -> None:
    from his.patient.spec import SPEC  # noqa: PLC0415

    assert SPEC.early is not None
    answered: list[str] = []

    class Full:
        def __getattr__(self, name: str) -> Any:
            async def answer(request: object, context: object) -> str:
                answered.append(name)
                return name

            return answer

    early = object()
    deferred = DeferredServicer(SPEC.early, early)
    methods = pb.DESCRIPTOR.services_by_name["PatientService"].methods_by_name
    waiting = {
        name: asyncio.ensure_future(getattr(deferred, name)(None, None))
        for name in methods
        if name not in SPEC.early.methods
    }
    assert set(SPEC.early.methods) <= set(methods)
    await asyncio.sleep(0.05)
    assert not any(call.done() for call in waiting.values())
    await deferred.load(Full)
    assert deferred.loaded
    assert {name: await call for name, call in waiting.items()} == {n: n for n in waiting}
    assert sorted(answered) == sorted(waiting)


async def test_calls_waiting_when_the_service_stops_mid_load_are_refused_retryably() -> None:
    early = Early(methods=frozenset(), make=lambda _: None, load=lambda: time.sleep(0.3))
    deferred = DeferredServicer(early, None)
    waiting = asyncio.ensure_future(deferred.ListPatients(None, None))
    loading = asyncio.ensure_future(deferred.load(object))
    await asyncio.sleep(0.05)
    loading.cancel()
    with pytest.raises(Unavailable) as refused:
        await waiting
    assert refused.value.reason == "SERVICE_STOPPING"
    assert not deferred.loaded


async def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def test_serving_before_sqlalchemy_answers_every_rpc_correctly(
    database_url: str,
    patients: pb_grpc.PatientServiceAsyncStub,
    registrar_token: str,
    tmp_path: Path,
) -> None:
    existing = await patients.CreatePatient(
        pb.CreatePatientRequest(patient=make_patient(), request_id=request_id())
    )
    gate = tmp_path / "gate"
    process, port = _gated(database_url, gate)
    try:
        # Ready, and the hot read answered, with SQLAlchemy not importable yet.
        await wait_for_health(f"localhost:{port}", _SERVICE, SERVING, timeout_s=30)
        async with channel_as(f"localhost:{port}", registrar_token) as channel:
            stub = pb_grpc.PatientServiceStub(channel)
            read = await stub.GetPatient(pb.GetPatientRequest(name=existing.name), timeout=10)
            assert (read.name, read.family_name, read.etag) == (
                existing.name,
                existing.family_name,
                existing.etag,
            )
            assert (await fails(stub.GetPatient(pb.GetPatientRequest(name="patients/x")))).fields

            # Another method waits for the rest of the servicer; readiness stays SERVING.
            search = asyncio.ensure_future(
                stub.ListPatients(
                    pb.ListPatientsRequest(name_prefix=existing.family_name), timeout=20
                )
            )
            await asyncio.sleep(0.5)
            assert not search.done()
            assert await probe(channel, _SERVICE) == SERVING

            gate.write_text("open")
            page = await search
            assert [patient.name for patient in page.patients] == [existing.name]
            created = await stub.CreatePatient(
                pb.CreatePatientRequest(patient=make_patient(), request_id=request_id()),
                timeout=10,
            )
            again = await stub.GetPatient(pb.GetPatientRequest(name=created.name))
            assert (again.name, again.etag) == (created.name, created.etag)
    finally:
        gate.touch()
        await _stop(process)
    assert process.returncode == 0


async def test_a_rest_that_fails_to_load_takes_the_process_out_of_service(
    database_url: str, registrar_token: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    process, port = _gated(database_url, gate)
    try:
        await wait_for_health(f"localhost:{port}", _SERVICE, SERVING, timeout_s=30)
        async with channel_as(f"localhost:{port}", registrar_token) as channel:
            stub = pb_grpc.PatientServiceStub(channel)
            search = asyncio.ensure_future(stub.ListPatients(pb.ListPatientsRequest(), timeout=20))
            gate.write_text("fail")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await search
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # Liveness down with readiness: the pod is restarted, not left half-serving.
            await wait_for_health(f"localhost:{port}", LIVENESS, NOT_SERVING)
            assert await probe(channel, _SERVICE) == NOT_SERVING
    finally:
        await _stop(process)


async def test_a_schema_behind_head_is_not_at_head(database_url: str) -> None:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from his.runtime.migrations import alembic_config  # noqa: PLC0415

    url = await fresh_database(database_url, "behind_head")
    head = head_revision("patient")
    assert head is not None
    script = ScriptDirectory.from_config(alembic_config("patient", url))
    before = script.get_revision(head).down_revision
    assert isinstance(before, str)
    database = Database(url, service_config("patient").database, application_name="test")
    try:
        # No schema at all, then one revision behind: not at head (start-up migrates, and
        # readiness waits for it); at head once upgraded.
        assert not await at_head(database, "patient")
        await asyncio.to_thread(upgrade, "patient", url, before)
        assert not await at_head(database, "patient")
        await asyncio.to_thread(upgrade, "patient", url)
        assert await at_head(database, "patient")
    finally:
        await database.dispose()
