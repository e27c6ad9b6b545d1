"""Field encryption: values round-trip, stay bound to their column, survive key rotation, and
blind indexes are stable, keyed and separated by kind."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import stat
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from his.base.env import ConfigError
from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.fieldcrypt import (
    CryptoConfig,
    DecryptionError,
    FieldCipher,
    Keyring,
    UnknownDataKey,
    data_keys_table,
    rewrap_all,
    rotate_data_key_all,
)

COLUMN = "patients.phone_enc"


def _key() -> bytes:
    return secrets.token_bytes(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _keyring(*masters: tuple[str, bytes]) -> Keyring:
    return Keyring(list(masters), _key())


@pytest.fixture(scope="module")
async def engine(postgres: EmbeddedPostgres) -> AsyncIterator[AsyncEngine]:
    """An engine on the session's embedded PostgreSQL."""
    engine = create_async_engine(async_url(postgres.url), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
async def schema(engine: AsyncEngine) -> AsyncIterator[str]:
    """A fresh schema holding only a `data_keys` table, dropped afterwards."""
    name = f"fc_{uuid.uuid4().hex[:12]}"
    async with engine.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{name}"'))
        metadata = MetaData(schema=name)
        data_keys_table(metadata)
        await connection.run_sync(metadata.create_all)
    yield name
    async with engine.begin() as connection:
        await connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))


async def _ready(cipher: FieldCipher, engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        await cipher.ready(session)


async def _load(cipher: FieldCipher, engine: AsyncEngine, *values: bytes) -> None:
    async with AsyncSession(engine) as session:
        await cipher.load(session, values)


async def _data_keys(engine: AsyncEngine, schema: str) -> list[tuple[int, str, bool]]:
    table = data_keys_table(MetaData(schema=schema))
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(table.c.id, table.c.master_key_id, table.c.retired).order_by(table.c.id)
        )
        return [(row.id, row.master_key_id, row.retired) for row in rows]


# --- values ---------------------------------------------------------------------------------------


async def test_values_round_trip_in_the_documented_format(engine: AsyncEngine, schema: str) -> None:
    cipher = FieldCipher(_keyring(("m1", _key())), schema, engine)
    await _ready(cipher, engine)

    sealed = cipher.encrypt(COLUMN, "+8613800138000")
    assert cipher.decrypt(COLUMN, sealed) == "+8613800138000"
    assert cipher.decrypt(COLUMN, cipher.encrypt(COLUMN, b"\x00raw")) == "\x00raw"
    assert cipher.decrypt(COLUMN, cipher.encrypt(COLUMN, "上海市 徐汇区")) == "上海市 徐汇区"
    version, key_id = struct.unpack_from(">BI", sealed)
    assert (version, key_id) == (1, (await _data_keys(engine, schema))[0][0])
    # version(1) | data key id(4) | nonce(12) | ciphertext | tag(16)
    assert len(sealed) == 1 + 4 + 12 + len("+8613800138000") + 16
    assert b"8613800138000" not in sealed
    # A fresh nonce each time: equal values are not equal ciphertexts.
    assert cipher.encrypt(COLUMN, "+8613800138000") != sealed


async def test_a_value_does_not_decrypt_in_another_column_table_or_schema(
    engine: AsyncEngine, schema: str
) -> None:
    keyring = _keyring(("m1", _key()))
    cipher = FieldCipher(keyring, schema, engine)
    await _ready(cipher, engine)
    sealed = cipher.encrypt("patients.national_id_value_enc", "110101199003074578")

    with pytest.raises(DecryptionError):
        cipher.decrypt("patients.phone_enc", sealed)
    with pytest.raises(DecryptionError):
        cipher.decrypt("staff.national_id_value_enc", sealed)
    elsewhere = FieldCipher(keyring, "other", engine)
    elsewhere._keys = cipher._keys  # the very same data keys, another schema's AAD
    with pytest.raises(DecryptionError):
        elsewhere.decrypt("patients.national_id_value_enc", sealed)
    assert cipher.decrypt("patients.national_id_value_enc", sealed) == "110101199003074578"


async def test_altered_or_truncated_values_fail_and_say_nothing_of_the_content(
    engine: AsyncEngine, schema: str
) -> None:
    cipher = FieldCipher(_keyring(("m1", _key())), schema, engine)
    await _ready(cipher, engine)
    sealed = bytearray(cipher.encrypt(COLUMN, "+8613800138000"))
    sealed[-1] ^= 1
    with pytest.raises(DecryptionError) as failure:
        cipher.decrypt(COLUMN, bytes(sealed))
    assert "8613800138000" not in str(failure.value)
    with pytest.raises(DecryptionError):
        cipher.decrypt(COLUMN, bytes(sealed[:20]))
    unknown = bytes(sealed[:1]) + struct.pack(">I", 999_999) + bytes(sealed[5:])
    with pytest.raises(UnknownDataKey):
        cipher.decrypt(COLUMN, unknown)


async def test_a_wrong_master_key_cannot_unwrap_the_data_keys(
    engine: AsyncEngine, schema: str
) -> None:
    writer = FieldCipher(_keyring(("m1", _key())), schema, engine)
    await _ready(writer, engine)
    sealed = writer.encrypt(COLUMN, "+8613800138000")

    same_id_other_key = FieldCipher(_keyring(("m1", _key())), schema, engine)
    with pytest.raises(DecryptionError, match="does not unwrap"):
        await _load(same_id_other_key, engine, sealed)
    unknown_id = FieldCipher(_keyring(("m9", _key())), schema, engine)
    with pytest.raises(DecryptionError, match="'m1', which is not configured"):
        await _load(unknown_id, engine, sealed)


async def test_another_process_loads_the_data_keys_it_needs(
    engine: AsyncEngine, schema: str
) -> None:
    keyring = _keyring(("m1", _key()))
    writer = FieldCipher(keyring, schema, engine)
    await _ready(writer, engine)
    sealed = writer.encrypt(COLUMN, "+8613800138000")

    reader = FieldCipher(keyring, schema, engine)
    with pytest.raises(UnknownDataKey):
        reader.decrypt(COLUMN, sealed)
    await _load(reader, engine, sealed)
    assert reader.decrypt(COLUMN, sealed) == "+8613800138000"


async def test_encrypting_needs_a_ready_cipher(engine: AsyncEngine, schema: str) -> None:
    cipher = FieldCipher(_keyring(("m1", _key())), schema, engine)
    with pytest.raises(RuntimeError, match="ready"):
        cipher.encrypt(COLUMN, "x")


async def test_concurrent_first_use_creates_exactly_one_data_key(
    engine: AsyncEngine, schema: str
) -> None:
    keyring = _keyring(("m1", _key()))
    ciphers = [FieldCipher(keyring, schema, engine) for _ in range(4)]  # four "replicas"
    await asyncio.gather(*(_ready(cipher, engine) for cipher in ciphers for _ in range(5)))
    assert len(await _data_keys(engine, schema)) == 1
    assert len({cipher._current for cipher in ciphers}) == 1


async def test_the_first_data_key_is_made_even_when_the_pool_is_exhausted(
    postgres: EmbeddedPostgres, schema: str
) -> None:
    # One pooled connection, held by the caller that needs the key: creating the key must not
    # wait for the pool (it would time out, and with many such callers never recover).
    engine = create_async_engine(
        async_url(postgres.url), pool_size=1, max_overflow=0, pool_timeout=1
    )
    try:
        cipher = FieldCipher(_keyring(("m1", _key())), schema, engine)
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))  # the only connection is now the caller's
            await cipher.ready(session)
        sealed = cipher.encrypt(COLUMN, "+8613800138000")
        assert cipher.decrypt(COLUMN, sealed) == "+8613800138000"
    finally:
        await engine.dispose()


async def test_sm4_gcm_values_are_marked_and_decrypt_whatever_the_current_algorithm(
    engine: AsyncEngine, schema: str
) -> None:
    master, index = _key(), _key()
    sm4 = FieldCipher(Keyring([("m1", master)], index, algorithm="sm4-gcm"), schema, engine)
    await _ready(sm4, engine)
    sealed = sm4.encrypt(COLUMN, "+8613800138000")
    assert sealed[0] == 2
    assert sm4.decrypt(COLUMN, sealed) == "+8613800138000"
    with pytest.raises(DecryptionError):
        sm4.decrypt("patients.address_enc", sealed)

    aes = FieldCipher(Keyring([("m1", master)], index), schema, engine)
    await _load(aes, engine, sealed)
    assert aes.decrypt(COLUMN, sealed) == "+8613800138000"


# --- rotation -------------------------------------------------------------------------------------


async def test_rewrap_under_a_new_master_key_lets_the_old_one_be_removed(
    engine: AsyncEngine, schema: str, postgres: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    old, new, index = _key(), _key(), _key()
    writer = FieldCipher(Keyring([("old", old)], index), schema, engine)
    await _ready(writer, engine)
    first = writer.encrypt(COLUMN, "+8613800138000")
    async with AsyncSession(engine) as session, session.begin():
        await writer.rotate_data_key(session)
    writer._checked_at = float("-inf")
    await _ready(writer, engine)
    second = writer.encrypt(COLUMN, "+8613911111111")

    only_new = Keyring([("new", new)], index)
    with pytest.raises(DecryptionError):  # before the re-wrap the new key alone is not enough
        await _load(FieldCipher(only_new, schema, engine), engine, first)

    caplog.set_level(logging.DEBUG)
    both = Keyring([("new", new), ("old", old)], index)
    assert await rewrap_all(postgres.url, schema, both) == 2
    assert {master for _, master, _ in await _data_keys(engine, schema)} == {"new"}
    assert await rewrap_all(postgres.url, schema, both) == 0  # nothing left to move

    reader = FieldCipher(only_new, schema, engine)
    await _load(reader, engine, first, second)
    assert reader.decrypt(COLUMN, first) == "+8613800138000"
    assert reader.decrypt(COLUMN, second) == "+8613911111111"
    for key in (old, new, index):
        assert _b64(key) not in caplog.text
        assert key.hex() not in caplog.text


async def test_a_new_data_key_encrypts_new_values_and_old_ones_still_decrypt(
    engine: AsyncEngine, schema: str, postgres: EmbeddedPostgres
) -> None:
    keyring = _keyring(("m1", _key()))
    cipher = FieldCipher(keyring, schema, engine)
    await _ready(cipher, engine)
    before = cipher.encrypt(COLUMN, "+8613800138000")

    new_id = await rotate_data_key_all(postgres.url, schema, keyring)
    keys = await _data_keys(engine, schema)
    assert [key_id for key_id, _, retired in keys if not retired] == [new_id]
    assert len(keys) == 2

    fresh = FieldCipher(keyring, schema, engine)
    await _ready(fresh, engine)
    after = fresh.encrypt(COLUMN, "+8613911111111")
    assert struct.unpack_from(">BI", after)[1] == new_id
    await _load(fresh, engine, before)
    assert fresh.decrypt(COLUMN, before) == "+8613800138000"

    # A running process picks the new key up once its refresh interval has passed.
    assert struct.unpack_from(">BI", cipher.encrypt(COLUMN, "x"))[1] != new_id
    cipher._checked_at = float("-inf")
    await _ready(cipher, engine)
    assert struct.unpack_from(">BI", cipher.encrypt(COLUMN, "x"))[1] == new_id


# --- blind indexes --------------------------------------------------------------------------------


def test_blind_indexes_are_stable_keyed_and_separated() -> None:
    index = _key()
    one = Keyring([("a", _key())], index)
    same_index_key = Keyring([("b", _key())], index)
    other_index_key = Keyring([("a", _key())], _key())

    value = one.blind_index("national_id", "urn:oid:2.16.156.10011.1.1", "110101199003074578")
    assert len(value) == 32
    assert value == same_index_key.blind_index(
        "national_id", "urn:oid:2.16.156.10011.1.1", "110101199003074578"
    )
    assert value != other_index_key.blind_index(
        "national_id", "urn:oid:2.16.156.10011.1.1", "110101199003074578"
    )
    assert one.blind_index("phone", "+8613800138000") != one.blind_index(
        "national_id", "+8613800138000"
    )
    # Parts are length-prefixed: moving the boundary changes the index.
    assert one.blind_index("national_id", "ab", "c") != one.blind_index("national_id", "a", "bc")
    # Each schema's cipher indexes in its own space.
    assert FieldCipher(one, "patient").blind_index("phone", "1") != FieldCipher(
        one, "iam"
    ).blind_index("phone", "1")


# --- configuration --------------------------------------------------------------------------------


def test_keys_come_from_the_environment_first_one_current() -> None:
    m1, m2, index = _key(), _key(), _key()
    config = CryptoConfig.from_env(
        {
            "HIS_CRYPTO_MASTER_KEYS": f"k2026:{_b64(m1)}, k2025:{_b64(m2)}",
            "HIS_CRYPTO_INDEX_KEY": _b64(index),
            "HIS_MESH": "istio",
        }
    )
    assert config.master_keys == (("k2026", m1), ("k2025", m2))
    assert config.index_key == index
    assert config.dev_key_file is None
    assert _b64(m1) not in repr(config) and "k2026" not in repr(config)
    keyring = Keyring.from_config(config)
    assert keyring.current_master_id == "k2026"
    assert keyring.master_key_ids == {"k2026", "k2025"}
    assert _b64(m1) not in repr(keyring)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HIS_CRYPTO_MASTER_KEYS": "m1:{key}"}, "go together"),
        ({"HIS_CRYPTO_INDEX_KEY": "{key}"}, "go together"),
        ({"HIS_CRYPTO_MASTER_KEYS": "{key}", "HIS_CRYPTO_INDEX_KEY": "{key}"}, "entry 1 must be"),
        (
            {"HIS_CRYPTO_MASTER_KEYS": "m1:{key},m1:{key}", "HIS_CRYPTO_INDEX_KEY": "{key}"},
            "twice",
        ),
        (
            {"HIS_CRYPTO_MASTER_KEYS": "m1:c2hvcnQ=", "HIS_CRYPTO_INDEX_KEY": "{key}"},
            "must decode to 32 bytes",
        ),
        (
            {"HIS_CRYPTO_MASTER_KEYS": "m1:{key}", "HIS_CRYPTO_INDEX_KEY": "not*base64!"},
            "HIS_CRYPTO_INDEX_KEY is not base64",
        ),
        ({"HIS_MESH": "istio"}, "required with HIS_MESH=istio"),
        ({"HIS_CRYPTO_ALGORITHM": "des"}, "HIS_CRYPTO_ALGORITHM must be one of"),
    ],
)
def test_bad_key_settings_name_the_variable_never_the_key(
    env: dict[str, str], message: str
) -> None:
    key = _b64(_key())
    with pytest.raises(ConfigError, match=message) as failure:
        CryptoConfig.from_env({name: value.format(key=key) for name, value in env.items()})
    assert key not in str(failure.value)


def test_local_development_keys_are_generated_once_private_and_reused(tmp_path: Path) -> None:
    config = CryptoConfig.from_env({"HIS_DATA_DIR": str(tmp_path)})
    assert config.dev_key_file == tmp_path / "secrets" / "crypto.json"
    first = Keyring.from_config(config)
    path = tmp_path / "secrets" / "crypto.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == {"master_keys", "index_key"}
    again = Keyring.from_config(CryptoConfig.from_env({"HIS_DATA_DIR": str(tmp_path)}))
    assert again.current_master_id == first.current_master_id
    assert again.blind_index("phone", "1") == first.blind_index("phone", "1")
    assert [p.name for p in path.parent.iterdir()] == ["crypto.json"]  # no temporary left


async def test_racing_processes_agree_on_one_set_of_development_keys(tmp_path: Path) -> None:
    config = CryptoConfig.from_env({"HIS_DATA_DIR": str(tmp_path)})
    keyrings = await asyncio.gather(
        *(asyncio.to_thread(Keyring.from_config, config) for _ in range(8))
    )
    assert len({keyring.blind_index("phone", "1") for keyring in keyrings}) == 1


async def test_the_data_keys_table_holds_only_wrapped_keys(
    engine: AsyncEngine, schema: str
) -> None:
    keyring = _keyring(("m1", _key()))
    cipher = FieldCipher(keyring, schema, engine)
    await _ready(cipher, engine)
    table = data_keys_table(MetaData(schema=schema))
    async with engine.connect() as connection:
        row = (await connection.execute(select(table.c.master_key_id, table.c.wrapped_key))).one()
    data_key = keyring.unwrap(schema, row.master_key_id, row.wrapped_key)
    assert len(data_key) == 32
    assert len(row.wrapped_key) == 12 + 32 + 16  # nonce | AES-GCM(data key) | tag
    assert data_key not in row.wrapped_key
    with pytest.raises(DecryptionError):  # bound to its schema
        keyring.unwrap("elsewhere", row.master_key_id, row.wrapped_key)
