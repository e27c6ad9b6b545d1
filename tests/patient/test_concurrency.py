"""Invariants under real parallel calls over the real channel, checked in the database too."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from his.patient.mapping import national_id_index
from his.patient.v1 import patient_service_pb2 as pb
from his.runtime.fieldcrypt import FieldCipher
from his.runtime.server import RunningService
from tests.patient.helpers import (
    Stub,
    create,
    grant_request,
    make_patient,
    patient_id,
    request_id,
    unique_national_id,
)
from tests.support import failure_of


async def _count(engine: AsyncEngine, sql: str, **params: Any) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(sql), params)).scalar_one())


_WAITING_FOR_PATIENTS = text(
    "SELECT count(*) FROM pg_locks"
    " WHERE locktype = 'relation' AND relation = 'patient.patients'::regclass AND NOT granted"
)


async def _released_together(
    engine: AsyncEngine, call: Callable[[], Awaitable[Any]], count: int
) -> list[Any]:
    """Start `count` calls whose writes all queue behind a table lock, then let them go at once.

    Without the barrier the server's inserts reach PostgreSQL one after another and the narrow
    races between them (both passing the ON CONFLICT pre-check) are almost never exercised.
    The calls are started only once the lock is held: a grpc.aio call is in flight as soon as
    it is created.
    """
    async with engine.connect() as connection, connection.begin():
        await connection.execute(text("LOCK TABLE patient.patients IN SHARE MODE"))
        calls: asyncio.Future[list[Any]] = asyncio.gather(
            *(call() for _ in range(count)), return_exceptions=True
        )
        while (await connection.execute(_WAITING_FOR_PATIENTS)).scalar_one() < count:
            assert not calls.done(), calls.result()
    return await calls


def _split(
    results: Sequence[Any],
) -> tuple[list[Any], list[grpc.aio.AioRpcError]]:
    successes = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    unexpected = [e for e in errors if not isinstance(e, grpc.aio.AioRpcError)]
    assert not unexpected, unexpected
    return successes, [e for e in errors if isinstance(e, grpc.aio.AioRpcError)]


async def test_fifty_parallel_registrations_with_one_request_id_create_one_patient(
    patients: Stub, patient_db: AsyncEngine
) -> None:
    key = request_id()
    national_id = unique_national_id()
    sent = make_patient(national_id=national_id)

    replies = await asyncio.gather(
        *(
            patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))
            for _ in range(50)
        )
    )

    assert {reply.name for reply in replies} == {replies[0].name}
    assert all(reply == replies[0] for reply in replies)
    rows = await _count(
        patient_db,
        "SELECT count(*) FROM patient.patients WHERE create_request_id = :key",
        key=key,
    )
    assert rows == 1
    found = await patients.ListPatients(pb.ListPatientsRequest(national_id=national_id))
    assert [p.name for p in found.patients] == [replies[0].name]


async def test_replays_released_at_the_same_instant_all_return_the_one_patient(
    patients: Stub, patient_db: AsyncEngine, patient_service: RunningService
) -> None:
    pool = patient_service.config.database
    # Every call must hold a server connection while it waits at the barrier; keep one spare.
    batch = min(20, pool.pool_size + pool.max_overflow - 1)
    assert batch >= 4
    for _ in range(20):
        key = request_id()
        request = pb.CreatePatientRequest(patient=make_patient(), request_id=key)

        results = await _released_together(
            patient_db, functools.partial(patients.CreatePatient, request), batch
        )

        replies, errors = _split(results)
        assert [failure_of(e) for e in errors] == []
        assert {reply.name for reply in replies} == {replies[0].name}
        rows = await _count(
            patient_db,
            "SELECT count(*) FROM patient.patients WHERE create_request_id = :key",
            key=key,
        )
        assert rows == 1


async def test_parallel_registrations_without_national_id_and_one_request_id_create_one(
    patients: Stub, patient_db: AsyncEngine
) -> None:
    key = request_id()
    sent = make_patient(with_national_id=False)

    replies = await asyncio.gather(
        *(
            patients.CreatePatient(pb.CreatePatientRequest(patient=sent, request_id=key))
            for _ in range(30)
        )
    )

    assert {reply.name for reply in replies} == {replies[0].name}
    rows = await _count(
        patient_db,
        "SELECT count(*) FROM patient.patients WHERE family_name = :family",
        family=sent.family_name,
    )
    assert rows == 1


async def test_parallel_registrations_of_one_national_id_let_exactly_one_win(
    patients: Stub, patient_db: AsyncEngine, patient_cipher: FieldCipher
) -> None:
    national_id = unique_national_id()

    results = await asyncio.gather(
        *(
            patients.CreatePatient(
                pb.CreatePatientRequest(
                    patient=make_patient(national_id=national_id), request_id=request_id()
                )
            )
            for _ in range(20)
        ),
        return_exceptions=True,
    )

    successes, errors = _split(results)
    assert len(successes) == 1
    assert len(errors) == 19
    failures = [failure_of(e) for e in errors]
    assert {(f.code, f.reason) for f in failures} == {
        (grpc.StatusCode.ALREADY_EXISTS, "NATIONAL_ID_EXISTS")
    }
    rows = await _count(
        patient_db,
        "SELECT count(*) FROM patient.patients WHERE national_id_bidx = :index",
        index=national_id_index(patient_cipher, national_id.system, national_id.value),
    )
    assert rows == 1


async def test_parallel_merges_of_a_pair_in_both_directions_end_in_one_merge(
    patients: Stub,
) -> None:
    for _ in range(5):
        a = await create(patients)
        b = await create(patients)

        results = await asyncio.gather(
            patients.MergePatients(pb.MergePatientsRequest(name=a.name, survivor=b.name)),
            patients.MergePatients(pb.MergePatientsRequest(name=b.name, survivor=a.name)),
            return_exceptions=True,
        )

        successes, errors = _split(results)
        assert len(successes) == 1
        assert [(f.code, f.reason) for f in map(failure_of, errors)] == [
            (grpc.StatusCode.FAILED_PRECONDITION, "SURVIVOR_NOT_ACTIVE")
        ]
        final_a = await patients.GetPatient(pb.GetPatientRequest(name=a.name))
        final_b = await patients.GetPatient(pb.GetPatientRequest(name=b.name))
        states = sorted([final_a.state, final_b.state])
        assert states == [pb.PATIENT_STATE_ACTIVE, pb.PATIENT_STATE_MERGED]
        merged, survivor = (final_a, final_b) if final_a.merged_into else (final_b, final_a)
        assert merged.merged_into == survivor.name
        assert survivor.merged_into == ""
        assert successes[0] == merged


async def test_the_same_merge_sent_twice_at_once_succeeds_twice_with_one_result(
    patients: Stub, patient_db: AsyncEngine
) -> None:
    duplicate = await create(patients)
    survivor = await create(patients)
    request = pb.MergePatientsRequest(name=duplicate.name, survivor=survivor.name)

    first, second = await asyncio.gather(
        patients.MergePatients(request), patients.MergePatients(request)
    )

    assert first == second
    assert first.merged_into == survivor.name
    merges = await _count(
        patient_db,
        "SELECT count(*) FROM patient.patient_merges WHERE duplicate_id = :id",
        id=patient_id(duplicate.name),
    )
    assert merges == 1


async def test_parallel_merges_of_one_duplicate_into_two_survivors_keep_one(
    patients: Stub, patient_db: AsyncEngine
) -> None:
    duplicate = await create(patients)
    first = await create(patients)
    second = await create(patients)

    results = await asyncio.gather(
        patients.MergePatients(pb.MergePatientsRequest(name=duplicate.name, survivor=first.name)),
        patients.MergePatients(pb.MergePatientsRequest(name=duplicate.name, survivor=second.name)),
        return_exceptions=True,
    )

    successes, errors = _split(results)
    assert len(successes) == 1
    assert [(f.code, f.reason) for f in map(failure_of, errors)] == [
        (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_MERGED")
    ]
    final = await patients.GetPatient(pb.GetPatientRequest(name=duplicate.name))
    assert final == successes[0]
    open_merges = await _count(
        patient_db,
        "SELECT count(*) FROM patient.patient_merges"
        " WHERE duplicate_id = :id AND unmerge_time IS NULL",
        id=patient_id(duplicate.name),
    )
    assert open_merges == 1


async def test_parallel_updates_with_one_etag_let_exactly_one_win(patients: Stub) -> None:
    before = await create(patients)
    phones = [f"+86139{i:08d}" for i in range(10)]

    results = await asyncio.gather(
        *(
            patients.UpdatePatient(
                pb.UpdatePatientRequest(
                    patient=pb.Patient(name=before.name, etag=before.etag, phone=phone),
                    update_mask=FieldMask(paths=["phone"]),
                )
            )
            for phone in phones
        ),
        return_exceptions=True,
    )

    successes, errors = _split(results)
    assert len(successes) == 1
    assert {(f.code, f.reason) for f in map(failure_of, errors)} == {
        (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    }
    assert len(errors) == 9
    final = await patients.GetPatient(pb.GetPatientRequest(name=before.name))
    assert final == successes[0]
    assert final.etag == str(int(before.etag) + 1)


async def test_parallel_grants_with_one_request_id_record_one_consent(
    patients: Stub, patient_db: AsyncEngine
) -> None:
    patient = await create(patients)
    key = request_id()

    replies = await asyncio.gather(
        *(patients.GrantConsent(grant_request(patient.name, request_id=key)) for _ in range(20))
    )

    assert {reply.name for reply in replies} == {replies[0].name}
    rows = await _count(
        patient_db,
        "SELECT count(*) FROM patient.consents WHERE patient_id = :id",
        id=patient_id(patient.name),
    )
    assert rows == 1


async def test_parallel_revokes_of_one_consent_agree_on_the_revoke_time(patients: Stub) -> None:
    patient = await create(patients)
    consent = await patients.GrantConsent(grant_request(patient.name))

    replies = await asyncio.gather(
        *(patients.RevokeConsent(pb.RevokeConsentRequest(name=consent.name)) for _ in range(10))
    )

    assert all(reply == replies[0] for reply in replies)
    assert replies[0].status == pb.CONSENT_STATUS_INACTIVE
