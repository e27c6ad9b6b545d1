"""Patient identifiers encrypted at rest: national identifier, phone, address (and the fingerprint
of the registering request, a digest of all three).

Adds `data_keys`, the encrypted columns and the blind indexes, encrypts the existing rows in
Python (keys from the Alembic attribute `his_crypto`, else from HIS_CRYPTO_* in the environment),
then drops the plain-text columns and their constraints. The downgrade decrypts them back.

The keys are only needed when there are rows to convert: an empty schema migrates without them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from his.patient.mapping import national_id_index
from his.runtime.fieldcrypt import CryptoConfig, FieldCipher

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "patient"
BATCH = 500
# Plain column → encrypted column (AAD "patient.patients.<encrypted column>").
ENCRYPTED = {
    "national_id_system": "national_id_system_enc",
    "national_id_value": "national_id_value_enc",
    "phone": "phone_enc",
    "address": "address_enc",
    "create_request_fingerprint": "create_request_fingerprint_enc",
}


def _cipher() -> FieldCipher:
    config = op.get_context().config
    crypto = config.attributes.get("his_crypto") if config is not None else None
    if not isinstance(crypto, CryptoConfig):
        crypto = CryptoConfig.from_env(os.environ)
    return FieldCipher.from_config(crypto, SCHEMA)


def _batches(connection: Connection, query: str) -> Iterator[Sequence[Any]]:
    """Rows of `query` (selecting `id`, taking :after and :limit) in id order, BATCH at a time."""
    after = None
    while True:
        rows = connection.execute(
            sa.text(query),
            {"after": after or "00000000-0000-0000-0000-000000000000", "limit": BATCH},
        ).all()
        if not rows:
            return
        yield rows
        after = str(rows[-1].id)


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("master_key_id", sa.Text(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("retired", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    for column in (*ENCRYPTED.values(), "national_id_bidx", "phone_bidx"):
        op.add_column("patients", sa.Column(column, sa.LargeBinary()), schema=SCHEMA)

    _encrypt_rows(op.get_bind())

    op.drop_index("patients_phone", table_name="patients", schema=SCHEMA)
    op.drop_constraint("national_id_unique", "patients", schema=SCHEMA, type_="unique")
    op.drop_constraint("national_id_complete", "patients", schema=SCHEMA, type_="check")
    op.drop_constraint("patient_request_fingerprinted", "patients", schema=SCHEMA, type_="check")
    for column in ENCRYPTED:
        op.drop_column("patients", column, schema=SCHEMA)
    # DROP COLUMN only hides the values, and the UPDATE above left the old row versions behind:
    # rewrite the table so no plaintext identifier stays in its data files. (CLUSTER of one
    # table runs inside this transaction, under the migration lock; VACUUM FULL could not.)
    # Older WAL segments and backups still hold them: expire those per the retention policy.
    op.execute(f"CLUSTER {SCHEMA}.patients USING patients_pkey")

    op.create_check_constraint(
        "national_id_complete",
        "patients",
        "(national_id_system_enc IS NULL) = (national_id_value_enc IS NULL)",
        schema=SCHEMA,
    )
    op.create_check_constraint(
        "national_id_indexed",
        "patients",
        "(national_id_value_enc IS NULL) = (national_id_bidx IS NULL)",
        schema=SCHEMA,
    )
    op.create_check_constraint(
        "phone_indexed", "patients", "(phone_enc IS NULL) = (phone_bidx IS NULL)", schema=SCHEMA
    )
    op.create_check_constraint(
        "patient_request_fingerprinted",
        "patients",
        "(create_request_id IS NULL) = (create_request_fingerprint_enc IS NULL)",
        schema=SCHEMA,
    )
    op.create_unique_constraint(
        "national_id_unique", "patients", ["national_id_bidx"], schema=SCHEMA
    )
    op.create_index("patients_phone", "patients", ["phone_bidx"], unique=False, schema=SCHEMA)


def _encrypt_rows(connection: Connection) -> None:
    query = (
        "SELECT id, national_id_system, national_id_value, phone, address::text AS address, "
        "create_request_fingerprint FROM patient.patients WHERE id > CAST(:after AS uuid) AND "
        "(national_id_value IS NOT NULL OR phone IS NOT NULL OR address IS NOT NULL OR "
        "create_request_fingerprint IS NOT NULL) ORDER BY id LIMIT :limit"
    )
    cipher: FieldCipher | None = None
    statement = sa.text(
        "UPDATE patient.patients SET national_id_system_enc = :national_id_system_enc, "
        "national_id_value_enc = :national_id_value_enc, national_id_bidx = :national_id_bidx, "
        "phone_enc = :phone_enc, phone_bidx = :phone_bidx, address_enc = :address_enc, "
        "create_request_fingerprint_enc = :create_request_fingerprint_enc WHERE id = :id"
    )
    for rows in _batches(connection, query):
        if cipher is None:  # keys are needed only when there is something to encrypt
            cipher = _cipher()
            cipher.ready_sync(connection)
        connection.execute(statement, [_encrypted(cipher, row) for row in rows])


def _encrypted(cipher: FieldCipher, row: Any) -> dict[str, Any]:
    def seal(column: str, value: str | None) -> bytes | None:
        return None if value is None else cipher.encrypt(f"patients.{ENCRYPTED[column]}", value)

    # The store writes addresses as compact JSON with sorted keys; so does the migration.
    address = row.address
    if address is not None:
        address = json.dumps(
            json.loads(address), ensure_ascii=False, sort_keys=True, separators=(",", ":")
        )
    has_national_id = row.national_id_system is not None and row.national_id_value is not None
    return {
        "id": row.id,
        "national_id_system_enc": seal("national_id_system", row.national_id_system),
        "national_id_value_enc": seal("national_id_value", row.national_id_value),
        "national_id_bidx": (
            national_id_index(cipher, row.national_id_system, row.national_id_value)
            if has_national_id
            else None
        ),
        "phone_enc": seal("phone", row.phone),
        "phone_bidx": None if row.phone is None else cipher.blind_index("phone", row.phone),
        "address_enc": seal("address", address),
        "create_request_fingerprint_enc": seal(
            "create_request_fingerprint", row.create_request_fingerprint
        ),
    }


def downgrade() -> None:
    op.add_column("patients", sa.Column("national_id_system", sa.Text()), schema=SCHEMA)
    op.add_column("patients", sa.Column("national_id_value", sa.Text()), schema=SCHEMA)
    op.add_column("patients", sa.Column("phone", sa.Text()), schema=SCHEMA)
    op.add_column(
        "patients",
        sa.Column("address", postgresql.JSONB(astext_type=sa.Text())),
        schema=SCHEMA,
    )
    op.add_column("patients", sa.Column("create_request_fingerprint", sa.Text()), schema=SCHEMA)

    _decrypt_rows(op.get_bind())

    op.drop_index("patients_phone", table_name="patients", schema=SCHEMA)
    op.drop_constraint("national_id_unique", "patients", schema=SCHEMA, type_="unique")
    for name in (
        "patient_request_fingerprinted",
        "phone_indexed",
        "national_id_indexed",
        "national_id_complete",
    ):
        op.drop_constraint(name, "patients", schema=SCHEMA, type_="check")
    for column in ("national_id_bidx", "phone_bidx", *ENCRYPTED.values()):
        op.drop_column("patients", column, schema=SCHEMA)
    op.drop_table("data_keys", schema=SCHEMA)

    op.create_check_constraint(
        "national_id_complete",
        "patients",
        "(national_id_system IS NULL) = (national_id_value IS NULL)",
        schema=SCHEMA,
    )
    op.create_unique_constraint(
        "national_id_unique",
        "patients",
        ["national_id_system", "national_id_value"],
        schema=SCHEMA,
    )
    op.create_check_constraint(
        "patient_request_fingerprinted",
        "patients",
        "(create_request_id IS NULL) = (create_request_fingerprint IS NULL)",
        schema=SCHEMA,
    )
    op.create_index("patients_phone", "patients", ["phone"], unique=False, schema=SCHEMA)


def _decrypt_rows(connection: Connection) -> None:
    query = (
        "SELECT id, national_id_system_enc, national_id_value_enc, phone_enc, address_enc, "
        "create_request_fingerprint_enc FROM patient.patients WHERE id > CAST(:after AS uuid) "
        "AND (national_id_value_enc IS NOT NULL OR phone_enc IS NOT NULL OR address_enc IS NOT "
        "NULL OR create_request_fingerprint_enc IS NOT NULL) ORDER BY id LIMIT :limit"
    )
    statement = sa.text(
        "UPDATE patient.patients SET national_id_system = :national_id_system, "
        "national_id_value = :national_id_value, phone = :phone, "
        "address = CAST(:address AS jsonb), "
        "create_request_fingerprint = :create_request_fingerprint WHERE id = :id"
    )
    cipher: FieldCipher | None = None
    for rows in _batches(connection, query):
        if cipher is None:
            cipher = _cipher()
            cipher.load_sync(connection)
        connection.execute(statement, [_decrypted(cipher, row) for row in rows])


def _decrypted(cipher: FieldCipher, row: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"id": row.id}
    for plain, column in ENCRYPTED.items():
        value = getattr(row, column)
        values[plain] = None if value is None else cipher.decrypt(f"patients.{column}", value)
    return values
