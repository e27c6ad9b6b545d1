"""Queries of the patient schema. Each function runs inside the caller's transaction.

Invariants are the database's job: unique national identifier, one patient per create request id,
one open merge per duplicate. Functions here translate their violations into domain errors.

Identifiers are encrypted on the way in and decrypted on the way out (his.patient.mapping), so every
function returning a patient takes the schema's FieldCipher and returns a PatientRecord; searches
and the national-identifier unique index use blind indexes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import ColumnElement, Row, Text, and_, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from his.patient.mapping import (
    PatientRecord,
    decrypt_patient,
    encrypt_identifiers,
    encrypted_values,
    national_id_index,
    phone_index,
)
from his.patient.tables import consents, patient_merges, patients
from his.runtime.database import UNIQUE_VIOLATION, Database, integrity_violation
from his.runtime.fieldcrypt import FieldCipher
from his.runtime.idempotency import skip_taken

_RETURNING = tuple(patients.c)


def unique_violation(error: IntegrityError) -> str | None:
    """The constraint name of a unique violation, None for any other integrity error."""
    violation = integrity_violation(error)
    return violation[1] if violation and violation[0] == UNIQUE_VIOLATION else None


def national_id_taken() -> AlreadyExists:
    """The error for a second patient with the same national identifier."""
    return AlreadyExists(
        "another patient has this national identifier",
        reason="NATIONAL_ID_EXISTS",
        metadata={"field": "national_id"},
    )


async def _decrypted(session: AsyncSession, cipher: FieldCipher, row: Row[Any]) -> PatientRecord:
    await cipher.load(session, encrypted_values(row))
    return decrypt_patient(cipher, row)


async def _all_decrypted(
    session: AsyncSession, cipher: FieldCipher, rows: list[Row[Any]]
) -> list[PatientRecord]:
    await cipher.load(session, (value for row in rows for value in encrypted_values(row)))
    return [decrypt_patient(cipher, row) for row in rows]


# GetPatient's one statement, for the driver: SQLAlchemy's ORM session cost more CPU than the
# rest of the call around this primary-key SELECT (profiled under load: ~28 % of the process).
_READ_ONE = (
    "SELECT "  # noqa: S608 (column and table names from tables.py; the id is bound)
    + ", ".join(f'"{column.name}"' for column in patients.c)
    + f' FROM "{patients.schema}".{patients.name} WHERE id = $1'
)


async def read_patient(
    database: Database, cipher: FieldCipher, patient_id: uuid.UUID
) -> PatientRecord:
    """One patient, or NOT_FOUND, outside any transaction (GetPatient's hot path)."""
    async with database.driver() as connection:
        record = await connection.fetchrow(_READ_ONE, patient_id)
    if record is None:
        raise NotFound(
            f"patients/{patient_id} not found", metadata={"name": f"patients/{patient_id}"}
        )
    # Read by attribute, as the mapping reads SQLAlchemy rows.
    row = SimpleNamespace(**dict(record.items()))
    if cipher.missing_keys(encrypted_values(row)):
        async with database.read() as session:
            await cipher.load(session, encrypted_values(row))
    return decrypt_patient(cipher, row)


async def get_patient(
    session: AsyncSession, cipher: FieldCipher, patient_id: uuid.UUID, *, lock: bool = False
) -> PatientRecord:
    """One patient, or NOT_FOUND."""
    query = select(*_RETURNING).where(patients.c.id == patient_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        raise NotFound(
            f"patients/{patient_id} not found", metadata={"name": f"patients/{patient_id}"}
        )
    return await _decrypted(session, cipher, row)


async def insert_patient(
    session: AsyncSession, cipher: FieldCipher, values: dict[str, Any], request_id: str | None
) -> PatientRecord | None:
    """Insert a new patient; None when `request_id` was already used (the caller re-reads it)."""
    await cipher.ready(session)
    statement = insert(patients).values(
        id=uuid.uuid4(), create_request_id=request_id, **encrypt_identifiers(cipher, values)
    )
    statement = skip_taken(statement, request_id, patients.c.create_request_id)
    row = (await session.execute(statement.returning(*_RETURNING))).first()
    return None if row is None else await _decrypted(session, cipher, row)


async def patient_by_request(
    session: AsyncSession, cipher: FieldCipher, request_id: str
) -> PatientRecord | None:
    """The patient created by the CreatePatient call with this request id."""
    query = select(*_RETURNING).where(patients.c.create_request_id == request_id)
    row = (await session.execute(query)).first()
    return None if row is None else await _decrypted(session, cipher, row)


async def update_patient(
    session: AsyncSession,
    cipher: FieldCipher,
    patient_id: uuid.UUID,
    values: dict[str, Any],
    etag: str,
) -> PatientRecord:
    """Apply `values` to a non-merged patient whose version matches `etag` (when given).

    UpdatePatient is IDEMPOTENT: when the row already holds exactly these values (a retry whose
    first attempt committed but whose reply was lost), it is returned as it is, whatever the etag.
    """
    current = await get_patient(session, cipher, patient_id, lock=True)
    if current.state == "merged":
        raise _merged(patient_id)
    # Compared in plain text: the same value encrypts differently each time.
    if all(getattr(current, column) == value for column, value in values.items()):
        return current
    check_etag(current, etag)
    await cipher.ready(session)
    statement = (
        update(patients)
        .where(patients.c.id == patient_id)
        .values(
            **encrypt_identifiers(cipher, values),
            version=patients.c.version + 1,
            update_time=func.now(),
        )
        .returning(*_RETURNING)
    )
    return await _decrypted(session, cipher, (await session.execute(statement)).one())


async def set_state(
    session: AsyncSession, cipher: FieldCipher, patient_id: uuid.UUID, *, to: str, etag: str
) -> PatientRecord:
    """Deactivate or reactivate; already in the target state is a no-op success, whatever the
    etag, so that a retried call whose first attempt committed does not fail."""
    current = await get_patient(session, cipher, patient_id, lock=True)
    if current.state == "merged":
        raise _merged(patient_id)
    if current.state == to:
        return current
    check_etag(current, etag)
    statement = (
        update(patients)
        .where(patients.c.id == patient_id)
        .values(state=to, version=patients.c.version + 1, update_time=func.now())
        .returning(*_RETURNING)
    )
    return await _decrypted(session, cipher, (await session.execute(statement)).one())


def check_etag(row: PatientRecord, etag: str) -> None:
    """ABORTED when a given etag is not the row's current version."""
    if etag and etag != str(row.version):
        raise Aborted(
            "the patient was changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(row.version)},
        )


def _merged(patient_id: uuid.UUID) -> FailedPrecondition:
    return FailedPrecondition(
        f"patients/{patient_id} is merged into another record; change the survivor instead",
        reason="PATIENT_MERGED",
    )


async def merge(
    session: AsyncSession,
    cipher: FieldCipher,
    duplicate_id: uuid.UUID,
    survivor_id: uuid.UUID,
    reason: str,
) -> PatientRecord:
    """Mark the duplicate merged into the survivor, recording the merge for undo."""
    # Lock both rows in id order so two merges of the same pair cannot deadlock.
    locked = (
        await session.execute(
            select(*_RETURNING)
            .where(patients.c.id.in_([duplicate_id, survivor_id]))
            .order_by(patients.c.id)
            .with_for_update()
        )
    ).all()
    rows = {row.id: row for row in locked}
    if duplicate_id not in rows:
        raise NotFound(f"patients/{duplicate_id} not found", metadata={"field": "name"})
    if survivor_id not in rows:
        raise NotFound(f"patients/{survivor_id} not found", metadata={"field": "survivor"})
    duplicate, survivor = rows[duplicate_id], rows[survivor_id]
    if duplicate.state == "merged":
        if duplicate.merged_into == survivor_id:
            return await _decrypted(session, cipher, duplicate)  # the same merge again
        raise FailedPrecondition(
            "the duplicate is already merged into another patient; undo that merge first",
            reason="ALREADY_MERGED",
        )
    if survivor.state != "active":
        raise FailedPrecondition(
            "the surviving patient must be active", reason="SURVIVOR_NOT_ACTIVE"
        )
    await session.execute(
        insert(patient_merges).values(
            id=uuid.uuid4(),
            duplicate_id=duplicate_id,
            survivor_id=survivor_id,
            previous_state=duplicate.state,
            reason=reason,
        )
    )
    statement = (
        update(patients)
        .where(patients.c.id == duplicate_id)
        .values(
            state="merged",
            merged_into=survivor_id,
            version=patients.c.version + 1,
            update_time=func.now(),
        )
        .returning(*_RETURNING)
    )
    return await _decrypted(session, cipher, (await session.execute(statement)).one())


async def unmerge(
    session: AsyncSession, cipher: FieldCipher, duplicate_id: uuid.UUID, reason: str
) -> PatientRecord:
    """Restore a merged duplicate to its state before the merge; the history row is closed."""
    current = await get_patient(session, cipher, duplicate_id, lock=True)
    if current.state != "merged":
        raise FailedPrecondition("the patient is not merged", reason="NOT_MERGED")
    closed = (
        await session.execute(
            update(patient_merges)
            .where(
                patient_merges.c.duplicate_id == duplicate_id,
                patient_merges.c.unmerge_time.is_(None),
            )
            .values(unmerge_time=func.now(), unmerge_reason=reason)
            .returning(patient_merges.c.previous_state)
        )
    ).one()
    statement = (
        update(patients)
        .where(patients.c.id == duplicate_id)
        .values(
            state=closed.previous_state,
            merged_into=None,
            version=patients.c.version + 1,
            update_time=func.now(),
        )
        .returning(*_RETURNING)
    )
    return await _decrypted(session, cipher, (await session.execute(statement)).one())


@dataclass(frozen=True)
class PatientFilter:
    """The filters of ListPatients, already validated."""

    name_prefix: str | None = None
    birth_date: dt.date | None = None
    national_id: tuple[str, str] | None = None
    phone: str | None = None
    include_merged: bool = False

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            (self.name_prefix, self.birth_date, self.national_id, self.phone, self.include_merged)
        )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_patients(
    session: AsyncSession,
    cipher: FieldCipher,
    where: PatientFilter,
    *,
    after: tuple[str, str, uuid.UUID] | None,
    limit: int,
    restriction: ColumnElement[bool] | None = None,
) -> list[PatientRecord]:
    """Up to `limit` patients after the keyset cursor, ordered by (family, first given name, id);
    only those `restriction` holds for, when given."""
    conditions: list[ColumnElement[bool]] = [] if restriction is None else [restriction]
    if where.name_prefix:
        # Lower-case in PostgreSQL, like the stored keys: Python's str.lower() differs for some
        # letters (Greek final sigma, dotted capital I), and the exact spelling would not match.
        pattern = func.lower(literal(_escape_like(where.name_prefix), Text), type_=Text) + "%"
        conditions.append(
            or_(
                patients.c.family_key.like(pattern, escape="\\"),
                patients.c.given_key.like(pattern, escape="\\"),
            )
        )
    if where.birth_date is not None:
        conditions.append(patients.c.birth_date == where.birth_date)
    if where.national_id is not None:
        system, value = where.national_id
        conditions.append(patients.c.national_id_bidx == national_id_index(cipher, system, value))
    if where.phone is not None:
        conditions.append(patients.c.phone_bidx == phone_index(cipher, where.phone))
    if not where.include_merged:
        conditions.append(patients.c.state != "merged")
    order = (patients.c.family_key, patients.c.given_key, patients.c.id)
    if after is not None:
        conditions.append(
            tuple_(*order) > tuple_(literal(after[0]), literal(after[1]), literal(after[2]))
        )
    query = select(*_RETURNING).where(and_(True, *conditions)).order_by(*order).limit(limit)
    return await _all_decrypted(session, cipher, list((await session.execute(query)).all()))


async def insert_consent(
    session: AsyncSession, patient_id: uuid.UUID, values: dict[str, Any], request_id: str | None
) -> Row[Any]:
    """Insert a consent (the caller holds the patient's row lock and checked the request id)."""
    statement = insert(consents).values(
        id=uuid.uuid4(), patient_id=patient_id, create_request_id=request_id, **values
    )
    return (await session.execute(statement.returning(*consents.c))).one()


async def consent_by_request(
    session: AsyncSession, patient_id: uuid.UUID, request_id: str
) -> Row[Any] | None:
    """The consent created by the GrantConsent call with this request id, if any."""
    query = select(*consents.c).where(
        consents.c.patient_id == patient_id, consents.c.create_request_id == request_id
    )
    return (await session.execute(query)).first()


async def get_consent(
    session: AsyncSession, patient_id: uuid.UUID, consent_id: uuid.UUID
) -> Row[Any]:
    """One consent of one patient, or NOT_FOUND."""
    query = select(*consents.c).where(
        consents.c.id == consent_id, consents.c.patient_id == patient_id
    )
    row = (await session.execute(query)).first()
    if row is None:
        name = f"patients/{patient_id}/consents/{consent_id}"
        raise NotFound(f"{name} not found", metadata={"name": name})
    return row


async def revoke_consent(
    session: AsyncSession, patient_id: uuid.UUID, consent_id: uuid.UUID
) -> Row[Any]:
    """Mark a consent inactive now; an inactive consent is returned unchanged."""
    statement = (
        update(consents)
        .where(
            consents.c.id == consent_id,
            consents.c.patient_id == patient_id,
            consents.c.status == "active",
        )
        .values(status="inactive", revoke_time=func.now())
        .returning(*consents.c)
    )
    row = (await session.execute(statement)).first()
    return row if row is not None else await get_consent(session, patient_id, consent_id)


async def list_consents(
    session: AsyncSession,
    patient_id: uuid.UUID,
    *,
    active_only: bool,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """A patient's consents, newest first, after the keyset cursor."""
    conditions: list[Any] = [consents.c.patient_id == patient_id]
    if active_only:
        now = func.now()
        conditions += [
            consents.c.status == "active",
            consents.c.period_start <= now,
            or_(consents.c.period_end.is_(None), consents.c.period_end > now),
        ]
    if after is not None:
        conditions.append(
            tuple_(consents.c.create_time, consents.c.id)
            < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*consents.c)
        .where(*conditions)
        .order_by(consents.c.create_time.desc(), consents.c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())
