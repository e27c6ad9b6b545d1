"""SIGTERM: health NOT_SERVING, in-flight calls finish, the process exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from his.common.v1 import types_pb2
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.database import async_url
from his.runtime.health import NOT_SERVING, SERVING
from his.runtime.server import RunningService
from tests.identity import registrar_channel
from tests.runtime.serving import his_serve
from tests.support import blocked_on_a_lock, free_port, wait_for_health

SERVICE = "his.patient.v1.PatientService"


async def test_sigterm_drains_in_flight_calls_then_exits(
    database_url: str, audit_service: RunningService
) -> None:
    port = free_port()
    process = his_serve(
        "patient",
        database_url,
        port,
        audit_service,
        stderr=subprocess.PIPE,
        HIS_GRACE_S="10",
        HIS_DRAIN_DELAY_S="1",
        HIS_LOG_FORMAT="json",
    )
    address = f"localhost:{port}"
    engine = create_async_engine(async_url(database_url))
    try:
        await wait_for_health(address, SERVICE, SERVING)
        async with registrar_channel(address) as channel:
            stub = pb_grpc.PatientServiceStub(channel)
            created = await stub.CreatePatient(
                pb.CreatePatientRequest(
                    patient=pb.Patient(
                        family_name="Drain",
                        given_names=["Test"],
                        gender=pb.ADMINISTRATIVE_GENDER_UNKNOWN,
                        birth_date=types_pb2.Date(year=1990, month=1, day=1),
                    )
                )
            )
            patient_id = created.name.split("/")[1]
            # Hold the patient's row so UpdatePatient stays in flight while we send SIGTERM.
            async with engine.connect() as holder:
                await holder.execute(
                    text("SELECT 1 FROM patient.patients WHERE id = :id FOR UPDATE"),
                    {"id": patient_id},
                )
                update = asyncio.ensure_future(
                    stub.UpdatePatient(
                        pb.UpdatePatientRequest(
                            patient=pb.Patient(name=created.name, phone="+8613900000000"),
                            update_mask=FieldMask(paths=["phone"]),
                        ),
                        timeout=30,
                    )
                )
                await blocked_on_a_lock(database_url, "his-patient")
                process.send_signal(signal.SIGTERM)
                await wait_for_health(address, SERVICE, NOT_SERVING, timeout_s=5)
                await holder.rollback()  # release the row: the in-flight call may now finish
            updated = await update
            assert updated.phone == "+8613900000000"
            assert updated.etag == "2"
        exit_code = await asyncio.to_thread(process.wait, 20)
        assert exit_code == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with registrar_channel(address) as channel:
                await pb_grpc.PatientServiceStub(channel).GetPatient(
                    pb.GetPatientRequest(name=created.name), timeout=2
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await engine.dispose()
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
