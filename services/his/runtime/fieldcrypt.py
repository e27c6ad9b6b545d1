"""Identifying values encrypted at rest, and keyed blind indexes to find them by exact match.

Three layers of keys:

- master keys (`HIS_CRYPTO_MASTER_KEYS`, outside the database) only wrap data keys; the first one
  wraps new and re-wrapped data keys, the others are kept so existing data keys still unwrap;
- data keys (DEKs), 32 random bytes each, stored wrapped in `<schema>.data_keys`; the newest
  non-retired one encrypts new values, every one of them keeps decrypting;
- the blind-index key (`HIS_CRYPTO_INDEX_KEY`) keys HMAC-SHA256 over normalised values, so that a
  column can be searched and made unique without holding the value.

A stored value is `version(1) | data key id(4, big-endian) | nonce(12) | ciphertext + tag(16)`,
encrypted with the column's name `"{schema}.{table}.{column}"` as associated data: a value copied
into another column, table or schema does not decrypt. Version 1 is AES-256-GCM with the data key;
version 2 is SM4-GCM with a key derived from the data key (HKDF-SHA256), for deployments that must
use the Chinese national algorithms. Both always decrypt; `HIS_CRYPTO_ALGORITHM` picks the one new
values use.

Nothing here logs or puts into an exception message a key or a value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    false,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from his.base.env import ConfigError
from his.runtime.database import async_url
from his.runtime.secret_files import json_once

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
AES_256_GCM = 1
SM4_GCM = 2
ALGORITHMS = {"aes-256-gcm": AES_256_GCM, "sm4-gcm": SM4_GCM}
_HEADER = struct.Struct(">BI")  # format version, data key id
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SM4_INFO = b"his-fieldcrypt sm4-gcm"


class DecryptionError(Exception):
    """A stored value cannot be decrypted: wrong column, altered, or its key is unknown."""


class UnknownDataKey(DecryptionError):
    """A value names a data key this process has not loaded (call `FieldCipher.load` first)."""


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CryptoConfig:
    """Keys of field encryption and blind indexes (`HIS_CRYPTO_*`)."""

    # (id, 32-byte key), first = current. Empty: local development keys from `dev_key_file`.
    master_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    index_key: bytes = field(default=b"", repr=False)
    # Where development keys are generated once and reused when no keys are configured.
    dev_key_file: Path | None = Path(".his") / "secrets" / "crypto.json"
    # The algorithm new values are encrypted with; stored values decrypt whatever it is.
    algorithm: str = "aes-256-gcm"
    # How long a process keeps encrypting with the data key it knows before looking for a newer
    # one (rotated by another process).
    key_refresh_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CryptoConfig:
        """Read HIS_CRYPTO_MASTER_KEYS, HIS_CRYPTO_INDEX_KEY, HIS_CRYPTO_ALGORITHM, ..."""
        raw_master = env.get("HIS_CRYPTO_MASTER_KEYS") or ""
        raw_index = env.get("HIS_CRYPTO_INDEX_KEY") or ""
        algorithm = env.get("HIS_CRYPTO_ALGORITHM") or "aes-256-gcm"
        if algorithm not in ALGORITHMS:
            raise ConfigError(
                f"HIS_CRYPTO_ALGORITHM must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}"
            )
        refresh = env.get("HIS_CRYPTO_KEY_REFRESH_S") or "60"
        try:
            key_refresh_s = float(refresh)
        except ValueError:
            raise ConfigError(
                f"HIS_CRYPTO_KEY_REFRESH_S must be a number, got {refresh!r}"
            ) from None
        if key_refresh_s < 0:
            raise ConfigError("HIS_CRYPTO_KEY_REFRESH_S must not be negative")
        if raw_master or raw_index:
            if not (raw_master and raw_index):
                raise ConfigError("HIS_CRYPTO_MASTER_KEYS and HIS_CRYPTO_INDEX_KEY go together")
            return cls(
                master_keys=parse_master_keys(raw_master, "HIS_CRYPTO_MASTER_KEYS"),
                index_key=_decode_key(raw_index, "HIS_CRYPTO_INDEX_KEY"),
                dev_key_file=None,
                algorithm=algorithm,
                key_refresh_s=key_refresh_s,
            )
        if env.get("HIS_MESH") == "istio":
            raise ConfigError(
                "HIS_CRYPTO_MASTER_KEYS and HIS_CRYPTO_INDEX_KEY are required with HIS_MESH=istio"
            )
        data_dir = Path(env.get("HIS_DATA_DIR") or ".his")
        return cls(
            dev_key_file=data_dir / "secrets" / "crypto.json",
            algorithm=algorithm,
            key_refresh_s=key_refresh_s,
        )


def parse_master_keys(raw: str, name: str) -> tuple[tuple[str, bytes], ...]:
    """`id:base64,id2:base64` as ((id, key), ...); errors name the variable, never the key."""
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(part.strip() for part in raw.split(",")):
        key_id, sep, encoded = entry.partition(":")
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise ConfigError(
                f"{name} entry {position + 1} must be id:base64key with an id of letters, "
                "digits, '.', '_' or '-'"
            )
        if any(key_id == known for known, _ in keys):
            raise ConfigError(f"{name} names master key {key_id!r} twice")
        keys.append((key_id, _decode_key(encoded, f"{name} key {key_id!r}")))
    return tuple(keys)


def _decode_key(encoded: str, what: str) -> bytes:
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        try:
            key = base64.urlsafe_b64decode(encoded.strip())
        except (binascii.Error, ValueError):
            raise ConfigError(f"{what} is not base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{what} must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def new_key_text() -> str:
    """A fresh random 32-byte key in base64, as the variables take it."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def load_dev_keys(path: Path) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
    """Development keys from `path`, created (0600) on first use; safe for racing processes."""
    document = json_once(
        path,
        lambda: {
            "master_keys": f"dev-{secrets.token_hex(4)}:{new_key_text()}",
            "index_key": new_key_text(),
        },
    )
    master = parse_master_keys(str(document["master_keys"]), str(path))
    return master, _decode_key(str(document["index_key"]), f"{path} index_key")


# --- keys ----------------------------------------------------------------------------------------


class Keyring:
    """The master keys (wrapping data keys) and the blind-index key of one deployment."""

    def __init__(
        self,
        master_keys: Sequence[tuple[str, bytes]],
        index_key: bytes,
        *,
        algorithm: str = "aes-256-gcm",
        key_refresh_s: float = 60.0,
    ) -> None:
        if not master_keys:
            raise ConfigError("at least one master key is required")
        if any(len(key) != KEY_BYTES for _, key in master_keys) or len(index_key) != KEY_BYTES:
            raise ConfigError(f"every key must be {KEY_BYTES} bytes")
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {algorithm!r}")
        self.current_master_id = master_keys[0][0]
        self.algorithm = algorithm
        self.key_refresh_s = key_refresh_s
        self._masters = {key_id: AESGCM(key) for key_id, key in master_keys}
        self._index_key = index_key

    @classmethod
    def from_config(cls, config: CryptoConfig) -> Keyring:
        """The configured keys, or the local development keys when none are configured."""
        master, index = config.master_keys, config.index_key
        if not master:
            if config.dev_key_file is None:
                raise ConfigError("no master keys configured")
            master, index = load_dev_keys(config.dev_key_file)
        return cls(master, index, algorithm=config.algorithm, key_refresh_s=config.key_refresh_s)

    def __repr__(self) -> str:
        return f"Keyring(current={self.current_master_id!r}, masters={sorted(self._masters)!r})"

    @property
    def master_key_ids(self) -> frozenset[str]:
        """Ids of every master key this keyring can unwrap with."""
        return frozenset(self._masters)

    def wrap(self, schema: str, data_key: bytes) -> tuple[str, bytes]:
        """(current master key id, nonce | AES-GCM(data key)) bound to the schema and master id."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        aad = _wrap_aad(schema, self.current_master_id)
        sealed = self._masters[self.current_master_id].encrypt(nonce, data_key, aad)
        return self.current_master_id, nonce + sealed

    def unwrap(self, schema: str, master_key_id: str, wrapped: bytes) -> bytes:
        """The data key in `wrapped`; DecryptionError when the master key is missing or wrong."""
        master = self._masters.get(master_key_id)
        if master is None:
            raise DecryptionError(
                f"data key of schema {schema!r} is wrapped by master key {master_key_id!r}, "
                "which is not configured"
            )
        try:
            return master.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(schema, master_key_id)
            )
        except InvalidTag:
            raise DecryptionError(
                f"data key of schema {schema!r} does not unwrap with master key {master_key_id!r}"
            ) from None

    def blind_index(self, kind: str, *parts: str) -> bytes:
        """HMAC-SHA256 of the normalised parts, separated by `kind` (no two kinds collide)."""
        mac = hmac.new(self._index_key, b"his-blind-index/v1", hashlib.sha256)
        for piece in (kind, *parts):
            data = piece.encode()
            mac.update(struct.pack(">I", len(data)))
            mac.update(data)
        return mac.digest()


def _wrap_aad(schema: str, master_key_id: str) -> bytes:
    return f"his.data_keys:{schema}:{master_key_id}".encode()


def data_keys_table(metadata: MetaData) -> Table:
    """The `data_keys` table in `metadata`'s schema: wrapped data keys of that schema."""
    return Table(
        "data_keys",
        metadata,
        Column("id", Integer, Identity(), primary_key=True),
        Column("master_key_id", Text, nullable=False),
        # nonce(12) | AES-256-GCM(master key, data key) with "his.data_keys:{schema}:{master id}".
        Column("wrapped_key", LargeBinary, nullable=False),
        Column("created_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # A retired data key no longer encrypts new values; it keeps decrypting old ones.
        Column("retired", Boolean, nullable=False, server_default=false()),
    )


class _KeyRow(Protocol):
    id: int
    master_key_id: str
    wrapped_key: bytes


class _Sm4Gcm:
    """SM4-GCM with the one-shot interface of AESGCM (cryptography has no SM4 AEAD class)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        encryptor = Cipher(algorithms.SM4(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        return encryptor.update(data) + encryptor.finalize() + encryptor.tag

    def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < TAG_BYTES:
            raise InvalidTag
        tag = sealed[-TAG_BYTES:]
        decryptor = Cipher(algorithms.SM4(self._key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor.update(sealed[:-TAG_BYTES]) + decryptor.finalize()


@dataclass(frozen=True)
class _DataKey:
    id: int
    aes: AESGCM
    sm4: _Sm4Gcm


def _data_key(key_id: int, key: bytes) -> _DataKey:
    sm4_key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=_SM4_INFO).derive(key)
    return _DataKey(key_id, AESGCM(key), _Sm4Gcm(sm4_key))


# --- values --------------------------------------------------------------------------------------


class FieldCipher:
    """Encrypts and decrypts the columns of one schema; holds its unwrapped data keys in memory.

    `encrypt` and `decrypt` are plain functions over the keys in memory. Before encrypting, await
    `ready(session)` (finds or creates the current data key); before decrypting values that may
    name a data key made by another process, await `load(session, values)`.
    """

    def __init__(self, keyring: Keyring, schema: str, engine: AsyncEngine | None = None) -> None:
        self.keyring = keyring
        self.schema = schema
        self._engine = engine
        self._table = data_keys_table(MetaData(schema=schema))
        self._keys: dict[int, _DataKey] = {}
        self._current: int | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self._version = ALGORITHMS[keyring.algorithm]
        # Associated data by column: a handful of columns, asked for on every value.
        self._aads: dict[str, bytes] = {}

    @classmethod
    def from_config(
        cls, config: CryptoConfig, schema: str, engine: AsyncEngine | None = None
    ) -> FieldCipher:
        """A cipher for `schema` from the service's crypto settings."""
        return cls(Keyring.from_config(config), schema, engine)

    def __repr__(self) -> str:
        return f"FieldCipher(schema={self.schema!r}, data_keys={sorted(self._keys)!r})"

    # encryption proper

    def encrypt(self, column: str, plaintext: str | bytes) -> bytes:
        """`plaintext` sealed for `column` ("table.column") under the current data key."""
        if self._current is None:
            raise RuntimeError("no current data key: await FieldCipher.ready() first")
        key = self._keys[self._current]
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = secrets.token_bytes(NONCE_BYTES)
        aead = key.aes if self._version == AES_256_GCM else key.sm4
        header = _HEADER.pack(self._version, key.id)
        return header + nonce + aead.encrypt(nonce, data, self._aad(column))

    def decrypt_bytes(self, column: str, value: bytes) -> bytes:
        """The plaintext of a value stored in `column`; DecryptionError if it is not one."""
        value = bytes(value)
        if len(value) < _HEADER.size + NONCE_BYTES + TAG_BYTES:
            raise DecryptionError(f"value in {self.schema}.{column} is too short")
        version, key_id = _HEADER.unpack_from(value)
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownDataKey(f"value in {self.schema}.{column} needs data key {key_id}")
        if version == AES_256_GCM:
            aead: AESGCM | _Sm4Gcm = key.aes
        elif version == SM4_GCM:
            aead = key.sm4
        else:
            raise DecryptionError(f"value in {self.schema}.{column} has unknown version {version}")
        start = _HEADER.size
        nonce = value[start : start + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, value[start + NONCE_BYTES :], self._aad(column))
        except InvalidTag:
            raise DecryptionError(
                f"value in {self.schema}.{column} does not decrypt (altered or from another column)"
            ) from None

    def decrypt(self, column: str, value: bytes) -> str:
        """The text stored in `column`."""
        return self.decrypt_bytes(column, value).decode()

    def blind_index(self, kind: str, *parts: str) -> bytes:
        """The keyed index of normalised `parts` for lookups of `kind` within this schema."""
        return self.keyring.blind_index(f"{self.schema}.{kind}", *parts)

    def _aad(self, column: str) -> bytes:
        aad = self._aads.get(column)
        if aad is None:
            if column.count(".") != 1:
                raise ValueError("column must be named 'table.column'")
            aad = self._aads[column] = f"{self.schema}.{column}".encode()
        return aad

    @staticmethod
    def key_ids(values: Iterable[bytes | None]) -> set[int]:
        """Ids of the data keys the given stored values were encrypted with."""
        return {
            _HEADER.unpack_from(bytes(value))[1]
            for value in values
            if value is not None and len(value) >= _HEADER.size
        }

    def remember(self, rows: Iterable[_KeyRow]) -> None:
        """Unwrap data key rows into memory."""
        for row in rows:
            if row.id not in self._keys:
                key = self.keyring.unwrap(self.schema, row.master_key_id, bytes(row.wrapped_key))
                self._keys[row.id] = _data_key(row.id, key)

    def _new_key_values(self) -> dict[str, Any]:
        master_key_id, wrapped = self.keyring.wrap(self.schema, secrets.token_bytes(KEY_BYTES))
        return {"master_key_id": master_key_id, "wrapped_key": wrapped}

    def _use(self, row: _KeyRow) -> None:
        self.remember([row])
        self._current = row.id
        self._checked_at = time.monotonic()

    def _stale(self) -> bool:
        return (
            self._current is None
            or time.monotonic() - self._checked_at >= self.keyring.key_refresh_s
        )

    def _newest(self) -> Any:
        table = self._table
        return (
            select(table.c.id, table.c.master_key_id, table.c.wrapped_key)
            .where(table.c.retired.is_(False))
            .order_by(table.c.id.desc())
            .limit(1)
        )

    def _lock_statement(self) -> Any:
        return text("SELECT pg_advisory_xact_lock(hashtext(:key))").bindparams(
            key=f"his-data-keys-{self.schema}"
        )

    # async: the running service

    async def ready(self, session: AsyncSession) -> None:
        """Make sure the newest data key is in memory, creating the schema's first one if none.

        A new key is committed in its own transaction before any value uses it, so a caller's
        rollback can never leave values under a key that does not exist.
        """
        if not self._stale():
            return
        async with self._lock:
            if not self._stale():
                return
            row = (await session.execute(self._newest())).first()
            if row is None:
                row = await self._create_first()
            self._use(row)

    async def _create_first(self) -> Any:
        if self._engine is None:
            raise RuntimeError("FieldCipher needs an engine to create the first data key")
        # A connection of its own, outside the service's pool: callers waiting for this key may
        # hold every pooled connection.
        engine = create_async_engine(self._engine.url, poolclass=NullPool)
        try:
            return await self._insert_first(engine)
        finally:
            await engine.dispose()

    async def _insert_first(self, engine: AsyncEngine) -> Any:
        async with engine.begin() as connection:
            await connection.execute(self._lock_statement())
            row = (await connection.execute(self._newest())).first()
            if row is None:
                row = (
                    await connection.execute(
                        self._table.insert()
                        .values(**self._new_key_values())
                        .returning(*self._key_columns())
                    )
                ).one()
                log.info(
                    "data key created",
                    extra={"fields": {"schema": self.schema, "data_key": row.id}},
                )
        return row

    def _key_columns(self) -> tuple[Any, ...]:
        return (self._table.c.id, self._table.c.master_key_id, self._table.c.wrapped_key)

    def missing_keys(self, values: Iterable[bytes | None]) -> bool:
        """Whether some data key the stored `values` need is not in memory yet (see `load`)."""
        return bool(self.key_ids(values) - self._keys.keys())

    async def load(self, session: AsyncSession, values: Iterable[bytes | None]) -> None:
        """Unwrap every data key the stored `values` need and memory does not hold yet."""
        missing = self.key_ids(values) - self._keys.keys()
        if not missing:
            return
        query = select(*self._key_columns()).where(self._table.c.id.in_(sorted(missing)))
        self.remember((await session.execute(query)).all())

    async def rewrap(self, session: AsyncSession) -> int:
        """Re-wrap every data key under the current master key; values are untouched.

        Returns how many data keys changed master key. Afterwards the other master keys can be
        removed from the configuration.
        """
        table = self._table
        rows = (
            await session.execute(
                select(*self._key_columns()).order_by(table.c.id).with_for_update()
            )
        ).all()
        current = self.keyring.current_master_id
        moved = 0
        for row in rows:
            if row.master_key_id == current:
                continue
            key = self.keyring.unwrap(self.schema, row.master_key_id, bytes(row.wrapped_key))
            master_key_id, wrapped = self.keyring.wrap(self.schema, key)
            await session.execute(
                update(table)
                .where(table.c.id == row.id)
                .values(master_key_id=master_key_id, wrapped_key=wrapped)
            )
            moved += 1
        log.info(
            "data keys re-wrapped",
            extra={"fields": {"schema": self.schema, "rewrapped": moved, "master_key": current}},
        )
        return moved

    async def rotate_data_key(self, session: AsyncSession) -> int:
        """Create a new data key for new values and retire the others (they still decrypt)."""
        await session.execute(self._lock_statement())
        table = self._table
        await session.execute(update(table).where(table.c.retired.is_(False)).values(retired=True))
        row = (
            await session.execute(
                table.insert().values(**self._new_key_values()).returning(*self._key_columns())
            )
        ).one()
        self.remember([row])
        log.info("data key rotated", extra={"fields": {"schema": self.schema, "data_key": row.id}})
        return int(row.id)

    # sync: data migrations (Alembic runs them on a plain connection, inside its transaction)

    def ready_sync(self, connection: Connection) -> None:
        """`ready` for a migration: find or create the current data key in its transaction."""
        connection.execute(self._lock_statement())
        row = connection.execute(self._newest()).first()
        if row is None:
            statement = self._table.insert().values(**self._new_key_values())
            row = connection.execute(statement.returning(*self._key_columns())).one()
        self._use(row)

    def load_sync(self, connection: Connection) -> None:
        """Every data key of the schema into memory, for a migration that decrypts."""
        self.remember(connection.execute(select(*self._key_columns())).all())


# --- operations (the `his keys` command) ---------------------------------------------------------


async def rewrap_all(url: str, schema: str, keyring: Keyring) -> int:
    """Re-wrap every data key of `schema` at `url` under the keyring's current master key."""
    async with _session(url) as session:
        return await FieldCipher(keyring, schema).rewrap(session)


async def rotate_data_key_all(url: str, schema: str, keyring: Keyring) -> int:
    """Start a new data key for `schema` at `url` and retire the others; returns its id."""
    async with _session(url) as session:
        return await FieldCipher(keyring, schema).rotate_data_key(session)


@asynccontextmanager
async def _session(url: str) -> AsyncIterator[AsyncSession]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with AsyncSession(engine) as session, session.begin():
            yield session
    finally:
        await engine.dispose()
