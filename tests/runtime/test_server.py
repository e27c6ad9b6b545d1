"""The server runtime: error mapping, metrics, reflection, access log, health following the DB."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.patient.service import PatientService
from his.patient.spec import SPEC as PATIENT
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.config import LIVENESS
from his.runtime.database import async_url, translate_error
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.health import NOT_SERVING, SERVING
from his.runtime.migrations import upgrade
from his.runtime.server import RunningService, ServiceSpec, start
from tests.conftest import service_config
from tests.identity import registrar_channel
from tests.patient.helpers import create
from tests.support import delivered, failure_of, handled, wait_for_health

PHI = "Wang Fang 110101198403120023"


class _ExplodingPatientService(PatientService):
    """A servicer that fails the way a bug would, with patient data in the exception message."""

    async def GetPatient(self, request: pb.GetPatientRequest, context: Any) -> pb.Patient:
        raise RuntimeError(f"bug while reading {PHI}")


def _exploding_spec() -> ServiceSpec:
    return dataclasses.replace(PATIENT, make_servicer=_ExplodingPatientService)


@pytest.fixture(scope="module")
async def exploding(database_url: str) -> AsyncIterator[RunningService]:
    running = await start(_exploding_spec(), service_config("patient"), database_url)
    yield running
    await running.stop(grace_s=0)


async def test_unexpected_exception_is_internal_with_trace_id_and_no_patient_data(
    exploding: RunningService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with registrar_channel(exploding.address) as channel:
        stub = pb_grpc.PatientServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetPatient(
                pb.GetPatientRequest(name="patients/7b0e6b1e-9a7e-4c4e-9a3e-0f6f1d2c3b4a")
            )
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "Wang" not in (error.details() or "")
    info = failure_of(error)
    assert info.reason == "INTERNAL"
    assert info.domain == "patient.his"
    trace_id = info.metadata["trace_id"]
    assert len(trace_id) == 32 and trace_id in (error.details() or "")
    logged = [r for r in caplog.records if r.name == "his.errors"]
    assert len(logged) == 1
    assert logged[0].fields["exc_type"] == "RuntimeError"  # type: ignore[attr-defined]
    everything = "\n".join(str(r.__dict__) for r in caplog.records)
    assert "Wang" not in everything and "110101198403120023" not in everything


async def test_each_call_logs_one_access_line_without_payload(
    patients: pb_grpc.PatientServiceAsyncStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="his.access")
    with pytest.raises(grpc.aio.AioRpcError):
        await patients.GetPatient(pb.GetPatientRequest(name="patients/Wang-Fang"))
    # Every session server runs in this process, and their relays' deliveries (audit, the order
    # loop's events) are served and logged at any moment: count this call's lines only.
    method = "his.patient.v1.PatientService/GetPatient"
    lines = [
        r
        for r in caplog.records
        if r.name == "his.access" and r.fields["method"] == method  # type: ignore[attr-defined]
    ]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["method"] == method
    assert fields["code"] == "INVALID_ARGUMENT"
    assert fields["duration_ms"] >= 0
    assert "Wang" not in str(lines[0].__dict__)


async def test_bad_input_carries_bad_request_field_violations(
    patients: pb_grpc.PatientServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await patients.GetPatient(pb.GetPatientRequest(name="doctors/1"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure_of(caught.value).fields == ["name"]
    assert failure_of(caught.value).reason == "INVALID_ARGUMENT"


async def test_metrics_endpoint_counts_calls_by_method_and_code(database_url: str) -> None:
    running = await start(PATIENT, service_config("patient", HIS_METRICS_PORT="0"), database_url)
    try:
        assert running.metrics_endpoint is not None
        async with registrar_channel(running.address) as channel:
            stub = pb_grpc.PatientServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetPatient(pb.GetPatientRequest(name="bad"))
        url = f"http://localhost:{running.metrics_endpoint.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        text = body.decode()
        assert (
            'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="GetPatient",'
            'grpc_service="his.patient.v1.PatientService",grpc_type="unary"} 3.0'
        ) in text
        assert "his_database_up 1.0" in text
        assert 'grpc_server_handling_seconds_bucket{grpc_method="GetPatient"' in text
    finally:
        await running.stop(grace_s=0)


async def test_reflection_lists_the_service_for_grpcurl(patient_service: RunningService) -> None:
    def services() -> list[str]:
        with grpc.insecure_channel(patient_service.address) as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    listed = await asyncio.to_thread(services)
    assert "his.patient.v1.PatientService" in listed
    assert "grpc.health.v1.Health" in listed


async def test_health_follows_the_database_and_recovers_without_restart(
    tmp_path: Path,
) -> None:
    own = EmbeddedPostgres(tmp_path / "pgdata")
    url = await asyncio.to_thread(own.start)
    await asyncio.to_thread(upgrade, "patient", url)
    config = service_config("patient", HIS_DB_HEALTH_INTERVAL_S="0.2", HIS_DB_HEALTH_TIMEOUT_S="1")
    running = await start(PATIENT, config, url)
    try:
        service = PATIENT.grpc_service
        await wait_for_health(running.address, service, SERVING)
        await wait_for_health(running.address, "", SERVING)

        await asyncio.to_thread(own.kill)
        await wait_for_health(running.address, service, NOT_SERVING)
        await wait_for_health(running.address, "", NOT_SERVING)
        # Liveness is the process's: a database outage must not get pods restarted.
        await wait_for_health(running.address, LIVENESS, SERVING, timeout_s=0.5)
        async with registrar_channel(running.address) as channel:
            stub = pb_grpc.PatientServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListPatients(pb.ListPatientsRequest(), timeout=10)
            # A database outage is retryable, never INTERNAL.
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            await asyncio.to_thread(own.restart)
            await wait_for_health(running.address, service, SERVING)
            reply = await stub.ListPatients(pb.ListPatientsRequest(page_size=1), timeout=10)
            assert reply is not None
    finally:
        await running.stop(grace_s=0)
        own.stop()


async def test_a_service_started_while_its_database_is_down_lives_and_migrates_when_it_returns(
    tmp_path: Path,
) -> None:
    own = EmbeddedPostgres(tmp_path / "pgdata")
    url = await asyncio.to_thread(own.start)
    await asyncio.to_thread(own.kill)
    config = service_config("patient", HIS_DB_HEALTH_INTERVAL_S="0.2", HIS_DB_HEALTH_TIMEOUT_S="1")
    running = await start(PATIENT, config, url, migrate=True)
    try:
        service = PATIENT.grpc_service
        await wait_for_health(running.address, LIVENESS, SERVING, timeout_s=2)
        await wait_for_health(running.address, service, NOT_SERVING, timeout_s=2)
        async with registrar_channel(running.address) as channel:
            stub = pb_grpc.PatientServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListPatients(pb.ListPatientsRequest(), timeout=10)
            failure = failure_of(caught.value)
            assert failure.code == grpc.StatusCode.UNAVAILABLE
            assert failure.reason == "SERVICE_STARTING"

            await asyncio.to_thread(own.restart)
            # Migrated in the background (retried with backoff), then ready: no restart needed.
            await wait_for_health(running.address, service, SERVING, timeout_s=30)
            reply = await stub.ListPatients(pb.ListPatientsRequest(page_size=1), timeout=10)
            assert list(reply.patients) == []
    finally:
        await running.stop(grace_s=0)
        own.stop()


@pytest.mark.parametrize("victim", ["his-patient", "his-audit"])
async def test_a_dropped_database_connection_is_unavailable_never_internal(
    database_url: str,
    patient_service: RunningService,
    audit_service: RunningService,
    victim: str,
) -> None:
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    codes: list[str] = []
    # What the services answered, including the relay's deliveries to audit (retried after an
    # UNAVAILABLE, so no caller sees them): never INTERNAL.
    internal_before = sum(handled(r, "INTERNAL") for r in (patient_service, audit_service))
    try:
        async with registrar_channel(patient_service.address) as channel:
            stub = pb_grpc.PatientServiceStub(channel)
            # A read of a record: served by patient, audited through audit.
            read = pb.GetPatientRequest(name=(await create(stub)).name)
            for _ in range(3):
                # Good calls first, several at once, so the pools hold several live connections:
                # a restart drops them all, and every one must be replaced, not fail a call each.
                await asyncio.gather(*(stub.GetPatient(read, timeout=10) for _ in range(8)))
                await delivered()
                # What a database restart or failover does to every pooled connection.
                dropped = await _backends(engine, victim)
                assert dropped, f"{victim} had no connection to drop: the test saw nothing"
                async with engine.connect() as connection:
                    for pid in dropped:
                        await connection.execute(
                            text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                        )
                try:
                    await stub.GetPatient(read, timeout=10)
                    codes.append("OK")
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code().name)
                # The pools recover by themselves within a call or two (SQLAlchemy replaces a
                # pool on a disconnect; the driver's pool replaces a connection the server
                # dropped, and its elders with it): the service serves again without a restart,
                # on new connections only.
                await _served_again(stub, read)
                # A write, on SQLAlchemy's pool: the drop the driver's pool noticed replaced
                # those connections too, so it does not fail on one.
                await create(stub)
                await delivered()
                serving = await _backends(engine, victim)
                assert serving, f"{victim} serves without a database connection?"
                assert serving.isdisjoint(dropped), "a dropped connection is still in a pool"
    finally:
        await engine.dispose()
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert sum(handled(r, "INTERNAL") for r in (patient_service, audit_service)) == internal_before


async def _backends(engine: AsyncEngine, application_name: str) -> set[int]:
    """Process ids of the server backends of one application's connections."""
    async with engine.connect() as connection:
        found = await connection.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name},
        )
        return set(found)


async def _served_again(stub: Any, read: pb.GetPatientRequest, tries: int = 5) -> None:
    for _ in range(tries - 1):
        try:
            await stub.GetPatient(read, timeout=10)
            return
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    await stub.GetPatient(read, timeout=10)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.CrashShutdownError("crash"),
        asyncpg.exceptions.CannotConnectNowError("starting up"),
        asyncpg.exceptions.TooManyConnectionsError("too many"),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"),
        asyncpg.InternalClientError("cannot switch to state 15"),
        ConnectionResetError(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_way_a_connection_is_lost_maps_to_unavailable(error: Exception) -> None:
    translated = translate_error(error)
    assert translated is not None
    assert translated.code == grpc.StatusCode.UNAVAILABLE
    assert translated.reason == "DATABASE_UNAVAILABLE"
