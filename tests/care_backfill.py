"""The care relationships' backfill (scheduling 0005, emr 0002) against real servers: a record
made before its service emitted care events, the migration, the service's own relay delivering
to the session's patient service, and a clinician's read of the patient before and after."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.patient.v1 import patient_service_pb2 as patient_pb
from his.patient.v1 import patient_service_pb2_grpc as patient_grpc
from his.runtime.database import async_url
from his.runtime.migrations import downgrade, upgrade
from his.runtime.server import RunningService, ServiceSpec, start
from tests.conftest import addresses, service_config
from tests.identity import ISSUER, channel_as, metadata
from tests.patient.helpers import create
from tests.support import delivered


async def execute(url: str, sql: str, **params: Any) -> list[Any]:
    """One statement in its own transaction; its rows, if any."""
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql), params)
            return list(result.fetchall()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def new_patient(patient_service: RunningService) -> str:
    """A patient registered at the session's patient service (as a registrar)."""
    async with channel_as(patient_service.address, ISSUER.staff("REGISTRAR")) as channel:
        return (await create(patient_grpc.PatientServiceStub(channel))).name


async def reads(patient_service: RunningService, patient: str, token: str) -> bool:
    """Whether the holder of `token` may read the patient's demographics (else the refusal is
    PERMISSION_DENIED)."""
    async with channel_as(patient_service.address, token) as channel:
        call = patient_grpc.PatientServiceStub(channel).GetPatient(
            patient_pb.GetPatientRequest(name=patient), metadata=metadata(token)
        )
        try:
            await call
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
            return False
    return True


async def backfilled_and_delivered(
    *,
    service: str,
    spec: ServiceSpec,
    url: str,
    before: str,
    backfill: str,
    record: str,
    patient_service: RunningService,
    session_url: str,
    others: tuple[RunningService, ...],
    check: Callable[[], Awaitable[bool]],
) -> None:
    """The record `record` exists in `url` (the service's database at head, its outbox empty, as
    if made before the service emitted care events); downgraded to `before` and upgraded, the
    backfill stores one event; twice, still one; the service's relay delivers it and `check`
    (a related clinician's read) passes; running the backfill again relates nobody twice."""
    await asyncio.to_thread(downgrade, service, url, before)
    assert not await check(), "related before the backfill"

    await asyncio.to_thread(upgrade, service, url, backfill)
    await asyncio.to_thread(downgrade, service, url, before)
    await asyncio.to_thread(upgrade, service, url, backfill)

    outbox = await execute(url, f'SELECT destination FROM "{service}".outbox')
    assert [row[0] for row in outbox] == ["patient"]
    config = service_config(service, **addresses(patient_service, *others))
    running = await start(spec, config, url)
    try:
        assert running.relay is not None
        await delivered(running.relay)
        assert await check(), "not related after the backfill was delivered"
        # Again after delivery: the same event id, dropped by the patient service's inbox.
        await asyncio.to_thread(downgrade, service, url, before)
        await asyncio.to_thread(upgrade, service, url, backfill)
        await delivered(running.relay)
    finally:
        await running.stop(grace_s=1)
    rows = await execute(
        session_url,
        "SELECT revision FROM patient.care_relationships WHERE record = :record",
        record=record,
    )
    assert rows == [(1,)]
