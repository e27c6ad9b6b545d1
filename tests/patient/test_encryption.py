"""National identifier, phone and address are encrypted at rest; search and uniqueness still work,
and the migration converts existing plain-text rows both ways."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib.util
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.common.v1 import types_pb2
from his.patient.spec import SPEC as PATIENT
from his.patient.v1 import patient_service_pb2 as pb
from his.patient.v1 import patient_service_pb2_grpc as pb_grpc
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.fieldcrypt import CryptoConfig
from his.runtime.idempotency import fingerprint
from his.runtime.migrations import downgrade, upgrade
from his.runtime.server import RunningService, start
from tests.identity import REGISTRAR, channel_as
from tests.patient.helpers import (
    NATIONAL_ID_SYSTEM,
    Stub,
    create,
    make_patient,
    patient_id,
    request_id,
    unique_national_id,
    unique_phone,
    unique_word,
)
from tests.schema import tables_of
from tests.support import fails


def _pg_dump() -> Path:
    """The pg_dump shipped with pgserver (found without importing it: the import warns)."""
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "pginstall" / "bin" / "pg_dump"


async def _dump(url: str) -> str:
    """`pg_dump` of the patient schema (definitions and data) as text."""
    process = await asyncio.create_subprocess_exec(
        str(_pg_dump()),
        "--schema=patient",
        f"--dbname={url}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


def _assert_absent(dump: str, *secrets_: str) -> None:
    """None of `secrets_` in the dump, neither as text nor hex-encoded as a bytea would be."""
    for secret in secrets_:
        assert secret not in dump
        assert secret.encode().hex() not in dump


def _address(street: str, city: str) -> pb.Address:
    return pb.Address(lines=[street], city=city, postal_code="200030", country="CN")


async def test_identifiers_never_reach_the_database_in_plain_text(
    patients: Stub, database_url: str
) -> None:
    family = unique_word()
    national_id = unique_national_id()
    phone = unique_phone()
    street, city = f"{unique_word()} Road 88", unique_word("City")
    patient = make_patient(
        family_name=family, national_id=national_id, phone=phone, address=_address(street, city)
    )
    request = pb.CreatePatientRequest(patient=patient, request_id=request_id())
    await patients.CreatePatient(request)

    dump = await _dump(database_url)

    assert family in dump  # the dump holds the patient's row: the checks below mean something
    assert request.request_id in dump
    _assert_absent(dump, national_id.value, phone, phone.lstrip("+"), street, city)
    _assert_absent(dump, NATIONAL_ID_SYSTEM)
    # The request's digest would let national identifiers be guessed against it: sealed too.
    _assert_absent(dump, fingerprint(request, _subject(REGISTRAR)))


async def test_search_by_national_id_and_phone_finds_the_encrypted_patient(
    patients: Stub,
) -> None:
    national_id = unique_national_id()
    phone = unique_phone()
    address = _address(f"{unique_word()} Lane 3", "Shanghai")
    created = await create(
        patients, make_patient(national_id=national_id, phone=phone, address=address)
    )

    by_id = await patients.ListPatients(pb.ListPatientsRequest(national_id=national_id))
    by_phone = await patients.ListPatients(pb.ListPatientsRequest(phone=phone))
    other_system = types_pb2.Identifier(system="urn:oid:other", value=national_id.value)
    by_other = await patients.ListPatients(pb.ListPatientsRequest(national_id=other_system))

    assert [p.name for p in by_id.patients] == [created.name]
    assert [p.name for p in by_phone.patients] == [created.name]
    assert list(by_other.patients) == []
    read = await patients.GetPatient(pb.GetPatientRequest(name=created.name))
    assert read.national_id == national_id
    assert read.phone == phone
    assert read.address == address


async def test_a_changed_phone_is_found_by_the_new_number_only(patients: Stub) -> None:
    old, new = unique_phone(), unique_phone()
    created = await create(patients, make_patient(phone=old))

    await patients.UpdatePatient(
        pb.UpdatePatientRequest(
            patient=pb.Patient(name=created.name, phone=new), update_mask=FieldMask(paths=["phone"])
        )
    )

    found_new = await patients.ListPatients(pb.ListPatientsRequest(phone=new))
    found_old = await patients.ListPatients(pb.ListPatientsRequest(phone=old))
    assert [p.name for p in found_new.patients] == [created.name]
    assert list(found_old.patients) == []


async def test_a_national_id_held_by_another_patient_is_refused_on_create_and_update(
    patients: Stub,
) -> None:
    national_id = unique_national_id()
    await create(patients, make_patient(national_id=national_id))
    other = await create(patients)

    on_create = await fails(create(patients, make_patient(national_id=national_id)))
    on_update = await fails(
        patients.UpdatePatient(
            pb.UpdatePatientRequest(
                patient=pb.Patient(name=other.name, national_id=national_id),
                update_mask=FieldMask(paths=["national_id"]),
            )
        )
    )

    for failure in (on_create, on_update):
        assert failure.code == grpc.StatusCode.ALREADY_EXISTS
        assert failure.reason == "NATIONAL_ID_EXISTS"
        assert national_id.value not in failure.message


async def test_one_national_id_spelled_differently_is_still_one_patient(
    patients: Stub,
) -> None:
    digits = f"{uuid.uuid4().int % 10**17:017d}"
    entered = types_pb2.Identifier(system=NATIONAL_ID_SYSTEM, value=f"{digits}x")
    registered = await create(patients, make_patient(national_id=entered))
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in digits)  # full-width digits (IME input)
    spellings = (f"{digits}X", f" {digits[:6]}-{digits[6:]}x ", f"{full_width}X")

    for spelling in spellings:
        other = types_pb2.Identifier(system=NATIONAL_ID_SYSTEM, value=spelling)
        found = await patients.ListPatients(pb.ListPatientsRequest(national_id=other))
        refused = await fails(create(patients, make_patient(national_id=other)))
        assert [p.name for p in found.patients] == [registered.name], spelling
        assert refused.code == grpc.StatusCode.ALREADY_EXISTS, spelling
    assert (await patients.GetPatient(pb.GetPatientRequest(name=registered.name))).national_id == (
        entered
    )  # kept as entered


async def test_a_value_moved_into_another_column_does_not_decrypt(
    patients: Stub, patient_db: AsyncEngine
) -> None:
    national_id = unique_national_id()
    created = await create(patients, make_patient(national_id=national_id))
    row = {"id": patient_id(created.name)}
    async with patient_db.begin() as connection:
        row["phone"] = await connection.scalar(
            text("SELECT phone_enc FROM patient.patients WHERE id = :id"), row
        )
        await connection.execute(
            text("UPDATE patient.patients SET phone_enc = national_id_value_enc WHERE id = :id"),
            row,
        )
    try:
        failure = await fails(patients.GetPatient(pb.GetPatientRequest(name=created.name)))
    finally:
        # Put it back: a corrupt row left in the shared database made every later unfiltered
        # ListPatients of the session (the fuzz test's) end INTERNAL.
        async with patient_db.begin() as connection:
            await connection.execute(
                text("UPDATE patient.patients SET phone_enc = :phone WHERE id = :id"), row
            )

    assert failure.code == grpc.StatusCode.INTERNAL
    assert national_id.value not in failure.message
    assert (await patients.GetPatient(pb.GetPatientRequest(name=created.name))).name == (
        created.name
    )


# --- the migration ------------------------------------------------------------------------------


@pytest.fixture
async def fresh_url(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A new empty database on the session's server, dropped afterwards."""
    name = f"enc_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(
        async_url(postgres.url), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres.url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


_PLAIN = (
    "SELECT id, national_id_system, national_id_value, phone, address, create_request_id, "
    "create_request_fingerprint FROM patient.patients ORDER BY id"
)


async def _query(url: str, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql), params or {})
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def test_upgrade_encrypts_plain_rows_and_downgrade_restores_them(
    fresh_url: str,
    patient_service: RunningService,
    registrar_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The migration reads its keys from the environment, as `his migrate` does in a container.
    keys = {
        "HIS_CRYPTO_MASTER_KEYS": f"m1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        "HIS_CRYPTO_INDEX_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    await asyncio.to_thread(upgrade, "patient", fresh_url, "0001")
    full, bare, phone_only = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    national_value, phone, other_phone = unique_national_id().value, unique_phone(), unique_phone()
    street = f"{unique_word()} Street 12"
    address = {"lines": [street], "city": "Hangzhou", "country": "CN"}
    # The registering request of `full`, as CreatePatient stored its id and fingerprint.
    registration = pb.CreatePatientRequest(patient=make_patient(), request_id=request_id())
    insert = (
        "INSERT INTO patient.patients (id, family_name, given_names, gender, birth_date, "
        "national_id_system, national_id_value, phone, address, create_request_id, "
        "create_request_fingerprint) VALUES (:id, :family, ARRAY['Mei'], 'female', "
        "DATE '1980-05-17', :system, :value, :phone, CAST(:address AS jsonb), :request, :digest)"
    )
    none = {"system": None, "value": None, "phone": None, "address": None}
    rows: list[dict[str, Any]] = [
        {
            "id": full,
            "system": NATIONAL_ID_SYSTEM,
            "value": national_value,
            "phone": phone,
            "address": json.dumps(address),
            "request": registration.request_id,
            "digest": fingerprint(registration, _subject(REGISTRAR)),
        },
        {**none, "id": bare, "request": None, "digest": None},
        {**none, "id": phone_only, "phone": other_phone, "request": None, "digest": None},
    ]
    for row in rows:
        await _query(fresh_url, insert, {**row, "family": unique_word()})
    before = await _query(fresh_url, _PLAIN)

    await asyncio.to_thread(upgrade, "patient", fresh_url)

    columns = {
        row[0]
        for row in await _query(
            fresh_url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'patient' AND table_name = 'patients'",
        )
    }
    assert {"national_id_value", "phone", "address"}.isdisjoint(columns)
    _assert_absent(
        await _dump(fresh_url),
        national_value,
        phone,
        other_phone,
        street,
        fingerprint(registration, _subject(REGISTRAR)),
    )

    # Nor in the table's data files (dropped columns and dead row versions keep bytes there).
    await _query(fresh_url, "CHECKPOINT")
    relation = (await _query(fresh_url, "SELECT pg_relation_filepath('patient.patients')"))[0][0]
    data_dir = (await _query(fresh_url, "SHOW data_directory"))[0][0]
    heap = (Path(data_dir) / relation).read_bytes()
    for secret in (national_value, phone, other_phone, street):
        assert secret.encode() not in heap, "plaintext left in the table's data file"

    # Read back through a patient service holding the same keys.
    config = dataclasses.replace(
        patient_service.config,
        server=dataclasses.replace(patient_service.config.server, migrate=False),
        crypto=CryptoConfig.from_env(keys),
    )
    running = await start(PATIENT, config, fresh_url)
    try:
        async with channel_as(running.address, registrar_token) as channel:
            stub: Stub = pb_grpc.PatientServiceStub(channel)
            got = await stub.GetPatient(pb.GetPatientRequest(name=f"patients/{full}"))
            assert (got.national_id.system, got.national_id.value) == (
                NATIONAL_ID_SYSTEM,
                national_value,
            )
            assert got.phone == phone
            assert got.address == pb.Address(lines=[street], city="Hangzhou", country="CN")
            empty = await stub.GetPatient(pb.GetPatientRequest(name=f"patients/{bare}"))
            assert not empty.HasField("national_id") and empty.phone == ""
            assert not empty.HasField("address")
            identifier = types_pb2.Identifier(system=NATIONAL_ID_SYSTEM, value=national_value)
            by_id = await stub.ListPatients(pb.ListPatientsRequest(national_id=identifier))
            by_phone = await stub.ListPatients(pb.ListPatientsRequest(phone=other_phone))
            assert [p.name for p in by_id.patients] == [f"patients/{full}"]
            assert [p.name for p in by_phone.patients] == [f"patients/{phone_only}"]
            duplicate = await fails(create(stub, make_patient(national_id=identifier)))
            assert duplicate.code == grpc.StatusCode.ALREADY_EXISTS
            # The converted fingerprint still recognises a replay, and a different request.
            replay = await stub.CreatePatient(registration)
            assert replay.name == f"patients/{full}"
            reused = pb.CreatePatientRequest(
                patient=make_patient(), request_id=registration.request_id
            )
            assert (await fails(stub.CreatePatient(reused))).fields == ["request_id"]
            added = await create(stub, make_patient(phone=unique_phone()))
    finally:
        await running.stop(grace_s=1)

    await asyncio.to_thread(downgrade, "patient", fresh_url, "0001")

    after = await _query(fresh_url, _PLAIN)
    assert [tuple(row) for row in after if row.id != patient_id(added.name)] == [
        tuple(row) for row in before
    ]
    (restored,) = [row for row in after if row.id == patient_id(added.name)]
    assert (restored.national_id_system, restored.national_id_value) == (
        added.national_id.system,
        added.national_id.value,
    )
    assert restored.phone == added.phone
    assert "data_keys" not in await tables_of(fresh_url, "patient")


async def test_an_empty_schema_migrates_without_any_keys(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inside the mesh without keys the configuration is refused; with no rows nothing needs them.
    monkeypatch.setenv("HIS_MESH", "istio")
    monkeypatch.delenv("HIS_CRYPTO_MASTER_KEYS", raising=False)
    monkeypatch.delenv("HIS_CRYPTO_INDEX_KEY", raising=False)
    await asyncio.to_thread(upgrade, "patient", fresh_url)
    await asyncio.to_thread(downgrade, "patient", fresh_url, "0001")


def _subject(token: str) -> str:
    """The `sub` of a session token: the caller a stored request fingerprint names."""
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])
