"""Queries of the emr schema. Each function runs inside the caller's session (a transaction for
writes). Note text is encrypted here on the way in and decrypted on the way out."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from his.emr.mapping import diagnosis_name, encounter_name, note_name
from his.emr.tables import diagnoses, encounters, notes
from his.runtime.database import UNIQUE_VIOLATION, integrity_violation
from his.runtime.fieldcrypt import FieldCipher
from his.runtime.idempotency import skip_taken

TEXT_COLUMN = "notes.text_enc"
OPEN = ("planned", "arrived", "in_progress")
# Encounters nothing may be added to or changed in.
CLOSED_FOR_WRITING = ("cancelled", "entered_in_error")


def not_found(name: str) -> NotFound:
    return NotFound(f"{name} not found", metadata={"name": name})


def _stale(version: int) -> Aborted:
    return Aborted(
        "the record was changed since it was read; read it again and retry",
        reason="ETAG_MISMATCH",
        metadata={"etag": str(version)},
    )


def check_etag(etag: str, version: int) -> None:
    """ABORTED unless `etag` is empty or the stored version."""
    if etag and etag != str(version):
        raise _stale(version)


def writable(encounter: Row[Any]) -> None:
    """FAILED_PRECONDITION when nothing may be added to the encounter any more."""
    if encounter.status in CLOSED_FOR_WRITING:
        raise FailedPrecondition(
            f"the encounter is {encounter.status.replace('_', ' ')}",
            reason=f"ENCOUNTER_{encounter.status.upper()}",
            metadata={"status": encounter.status},
        )


# --- encounters --------------------------------------------------------------------------------


async def insert_encounter(
    session: AsyncSession, values: dict[str, Any], request: tuple[str, str] | None
) -> Row[Any] | None:
    """A new encounter; None when its request id was used before (see encounter_by_request)."""
    request_id = request[0] if request else None
    statement = insert(encounters).values(
        id=uuid.uuid4(),
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, encounters.c.create_request_id)
    return (await session.execute(statement.returning(*encounters.c))).first()


async def encounter_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The encounter created by the CreateEncounter call with this request id."""
    query = select(*encounters.c).where(encounters.c.create_request_id == request_id)
    return (await session.execute(query)).first()


def appointment_taken(error: IntegrityError) -> AlreadyExists | None:
    """ALREADY_EXISTS when the insert lost to a live encounter of the same appointment."""
    violation = integrity_violation(error)
    if violation == (UNIQUE_VIOLATION, "encounters_one_per_appointment"):
        return AlreadyExists(
            "an encounter of this appointment already exists",
            reason="APPOINTMENT_HAS_ENCOUNTER",
        )
    return None


async def encounter_of_appointment(
    session: AsyncSession, appointment_id: uuid.UUID
) -> Row[Any] | None:
    """The live (not cancelled, not entered in error) encounter of an appointment, if any."""
    query = select(*encounters.c).where(
        encounters.c.appointment_id == appointment_id,
        encounters.c.status.not_in(CLOSED_FOR_WRITING),
    )
    return (await session.execute(query)).first()


async def get_encounter(
    session: AsyncSession, encounter_id: uuid.UUID, *, lock: bool = False, share: bool = False
) -> Row[Any]:
    """One encounter, or NOT_FOUND; `lock` locks it for update, `share` against changes."""
    query = select(*encounters.c).where(encounters.c.id == encounter_id)
    if lock:
        query = query.with_for_update()
    elif share:
        query = query.with_for_update(read=True)
    row = (await session.execute(query)).first()
    if row is None:
        raise not_found(encounter_name(encounter_id))
    return row


async def find_encounter(session: AsyncSession, encounter_id: uuid.UUID) -> Row[Any] | None:
    """One encounter, or None."""
    query = select(*encounters.c).where(encounters.c.id == encounter_id)
    return (await session.execute(query)).first()


async def attends_open_encounter(
    session: AsyncSession, staff_id: uuid.UUID, patient_id: uuid.UUID
) -> bool:
    """Whether the staff member attends an open encounter of the patient (a care relationship)."""
    query = select(
        select(encounters.c.id)
        .where(
            encounters.c.patient_id == patient_id,
            encounters.c.practitioner_id == staff_id,
            encounters.c.status.in_(OPEN),
        )
        .exists()
    )
    return bool((await session.execute(query)).scalar())


@dataclass(frozen=True)
class EncounterFilter:
    """The filters of ListEncounters, validated."""

    patient_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    practitioner_id: uuid.UUID | None = None
    appointment_id: uuid.UUID | None = None
    statuses: tuple[str, ...] = ()
    window: tuple[dt.datetime, dt.datetime] | None = None

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            (
                "encounters",
                self.patient_id,
                self.department_id,
                self.practitioner_id,
                self.appointment_id,
                self.statuses,
                self.window,
            )
        )


async def list_encounters(
    session: AsyncSession,
    where: EncounterFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Encounters newest first, (create time, id) descending, after the keyset cursor."""
    c = encounters.c
    conditions: list[Any] = []
    if where.patient_id is not None:
        conditions.append(c.patient_id == where.patient_id)
    if where.department_id is not None:
        conditions.append(c.department_id == where.department_id)
    if where.practitioner_id is not None:
        conditions.append(c.practitioner_id == where.practitioner_id)
    if where.appointment_id is not None:
        conditions.append(c.appointment_id == where.appointment_id)
    if where.statuses:
        conditions.append(c.status.in_(where.statuses))
    else:
        conditions.append(c.status != "entered_in_error")
    if where.window is not None:
        start, end = where.window
        conditions += [c.create_time < end, or_(c.closed_time.is_(None), c.closed_time >= start)]
    if after is not None:
        conditions.append(
            tuple_(c.create_time, c.id) < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*encounters.c)
        .where(and_(True, *conditions))
        .order_by(c.create_time.desc(), c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())


async def update_encounter(
    session: AsyncSession, encounter_id: uuid.UUID, values: dict[str, Any], etag: str
) -> Row[Any]:
    """Change an encounter's fields (the servicer checked what may change)."""
    current = await get_encounter(session, encounter_id, lock=True)
    check_etag(etag, current.version)
    if current.status in ("finished", *CLOSED_FOR_WRITING) and set(values) - {"sensitive"}:
        raise FailedPrecondition(
            f"a {current.status.replace('_', ' ')} encounter can only change `sensitive`",
            reason="ENCOUNTER_CLOSED",
            metadata={"status": current.status},
        )
    if current.status == "entered_in_error":
        writable(current)
    clears = "practitioner_id" in values and values["practitioner_id"] is None
    if clears and current.status not in {"planned", "arrived"}:
        raise FailedPrecondition(
            "the attending practitioner cannot be cleared once the encounter has started",
            reason="ATTENDING_REQUIRED",
        )
    statement = (
        update(encounters)
        .where(encounters.c.id == encounter_id)
        .values(**values, version=encounters.c.version + 1, update_time=func.now())
        .returning(*encounters.c)
    )
    return (await session.execute(statement)).one()


# FHIR Encounter: planned|arrived → in-progress → finished; planned|arrived → cancelled; any →
# entered-in-error.
TRANSITIONS: dict[str, frozenset[str]] = {
    "in_progress": frozenset({"planned", "arrived"}),
    "finished": frozenset({"in_progress"}),
    "cancelled": frozenset({"planned", "arrived"}),
    "entered_in_error": frozenset({"planned", "arrived", "in_progress", "finished", "cancelled"}),
}


async def transition(
    session: AsyncSession,
    encounter_id: uuid.UUID,
    to: str,
    *,
    etag: str,
    reason: str | None = None,
) -> Row[Any]:
    """Move an encounter to `to`. Already there: a no-op whatever the etag (safe retries)."""
    current = await get_encounter(session, encounter_id, lock=True)
    if current.status == to:
        return current
    check_etag(etag, current.version)
    if current.status not in TRANSITIONS[to]:
        raise FailedPrecondition(
            f"an encounter that is {current.status} cannot become {to}",
            reason="ILLEGAL_TRANSITION",
            metadata={"status": current.status, "requested": to},
        )
    now = func.now()
    values: dict[str, Any] = {"status": to}
    if to == "in_progress":
        if current.practitioner_id is None:
            raise FailedPrecondition(
                "the encounter needs an attending practitioner before it starts",
                reason="ATTENDING_REQUIRED",
            )
        values["start_time"] = now
    elif to == "finished":
        values.update(end_time=now, closed_time=now)
    elif to == "cancelled":
        values.update(cancel_reason=reason, closed_time=now)
    else:
        values.update(entered_in_error_reason=reason, closed_time=now)
    statement = (
        update(encounters)
        .where(encounters.c.id == encounter_id)
        .values(**values, version=encounters.c.version + 1, update_time=now)
        .returning(*encounters.c)
    )
    return (await session.execute(statement)).one()


# --- notes -------------------------------------------------------------------------------------

_successor = notes.alias("successor")
_NOTE_COLUMNS = (*notes.c, _successor.c.id.label("superseded_by_id"))
_NOTES_JOINED = notes.outerjoin(_successor, _successor.c.amends_id == notes.c.id)


@dataclass(frozen=True)
class Note:
    """A note row with its text decrypted."""

    row: Row[Any]
    text: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


async def _decrypted(
    session: AsyncSession, cipher: FieldCipher, rows: list[Row[Any]]
) -> list[Note]:
    await cipher.load(session, (row.text_enc for row in rows))
    return [Note(row, cipher.decrypt(TEXT_COLUMN, row.text_enc)) for row in rows]


async def _note_where(session: AsyncSession, cipher: FieldCipher, *conditions: Any) -> Note | None:
    query = select(*_NOTE_COLUMNS).select_from(_NOTES_JOINED).where(*conditions)
    row = (await session.execute(query)).first()
    return None if row is None else (await _decrypted(session, cipher, [row]))[0]


async def insert_note(
    session: AsyncSession,
    cipher: FieldCipher,
    values: dict[str, Any],
    text: str,
    request: tuple[str, str] | None,
) -> Note | None:
    """A new note (values hold encounter, author, type, status and amendment link); None when its
    request id was used before (see note_by_request)."""
    await cipher.ready(session)
    request_id = request[0] if request else None
    note_id = uuid.uuid4()
    statement = insert(notes).values(
        id=note_id,
        text_enc=cipher.encrypt(TEXT_COLUMN, text),
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, notes.c.create_request_id)
    inserted = (await session.execute(statement.returning(notes.c.id))).first()
    if inserted is None:
        return None
    return await _note_where(session, cipher, notes.c.id == note_id)


async def note_by_request(
    session: AsyncSession, cipher: FieldCipher, request_id: str
) -> Note | None:
    """The note created by the CreateNote or AmendNote call with this request id."""
    return await _note_where(session, cipher, notes.c.create_request_id == request_id)


async def find_note(
    session: AsyncSession, cipher: FieldCipher, encounter_id: uuid.UUID, note_id: uuid.UUID
) -> Note | None:
    """One note of an encounter, or None."""
    return await _note_where(
        session, cipher, notes.c.id == note_id, notes.c.encounter_id == encounter_id
    )


async def get_note(
    session: AsyncSession,
    cipher: FieldCipher,
    encounter_id: uuid.UUID,
    note_id: uuid.UUID,
    *,
    lock: bool = False,
) -> Note:
    """One note of an encounter (locked for update with `lock`), or NOT_FOUND."""
    if lock:
        locked = (
            await session.execute(
                select(notes.c.id)
                .where(notes.c.id == note_id, notes.c.encounter_id == encounter_id)
                .with_for_update()
            )
        ).first()
        if locked is None:
            raise not_found(note_name(encounter_id, note_id))
    note = await find_note(session, cipher, encounter_id, note_id)
    if note is None:
        raise not_found(note_name(encounter_id, note_id))
    return note


async def list_notes(
    session: AsyncSession,
    cipher: FieldCipher,
    encounter_id: uuid.UUID,
    *,
    include_superseded: bool,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Note]:
    """The notes of an encounter newest first, after the keyset cursor."""
    conditions: list[Any] = [notes.c.encounter_id == encounter_id]
    if not include_superseded:
        conditions.append(_successor.c.id.is_(None))
    if after is not None:
        conditions.append(
            tuple_(notes.c.create_time, notes.c.id) < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*_NOTE_COLUMNS)
        .select_from(_NOTES_JOINED)
        .where(*conditions)
        .order_by(notes.c.create_time.desc(), notes.c.id.desc())
        .limit(limit)
    )
    rows = list((await session.execute(query)).all())
    return await _decrypted(session, cipher, rows)


def _signed(note: Note) -> FailedPrecondition:
    return FailedPrecondition(
        "the note is signed and can no longer change; amend it instead",
        reason="NOTE_SIGNED",
        metadata={"status": note.status},
    )


async def update_note(
    session: AsyncSession,
    cipher: FieldCipher,
    note: Note,
    *,
    values: dict[str, Any],
    text: str | None,
    etag: str,
) -> Note:
    """Change a draft (locked by the caller): type and/or text."""
    check_etag(etag, note.version)
    if note.status != "preliminary":
        raise _signed(note)
    changes = dict(values)
    if text is not None:
        await cipher.ready(session)
        changes["text_enc"] = cipher.encrypt(TEXT_COLUMN, text)
    await session.execute(
        update(notes)
        .where(notes.c.id == note.id)
        .values(**changes, version=notes.c.version + 1, update_time=func.now())
    )
    return await get_note(session, cipher, note.encounter_id, note.id)


async def sign_note(session: AsyncSession, cipher: FieldCipher, note: Note, etag: str) -> Note:
    """Sign a draft (locked by the caller); a signed note is returned as it is."""
    if note.status != "preliminary":
        return note
    check_etag(etag, note.version)
    now = func.now()
    await session.execute(
        update(notes)
        .where(notes.c.id == note.id)
        .values(status="final", sign_time=now, version=notes.c.version + 1, update_time=now)
    )
    return await get_note(session, cipher, note.encounter_id, note.id)


def amendment_refused(note: Note) -> FailedPrecondition | None:
    """Why `note` cannot be amended, or None."""
    if note.status == "preliminary":
        return FailedPrecondition(
            "the note is a draft; change it with UpdateNote", reason="NOTE_NOT_SIGNED"
        )
    if note.superseded_by_id is not None:
        return FailedPrecondition(
            "the note has been amended already; amend its newest version",
            reason="NOTE_SUPERSEDED",
            metadata={"superseded_by": note_name(note.encounter_id, note.superseded_by_id)},
        )
    return None


def superseded_race(error: IntegrityError) -> FailedPrecondition | None:
    """FAILED_PRECONDITION when a concurrent amendment of the same version won."""
    violation = integrity_violation(error)
    if violation is not None and violation[0] == UNIQUE_VIOLATION and "amends_id" in violation[1]:
        return FailedPrecondition(
            "the note has been amended already; amend its newest version",
            reason="NOTE_SUPERSEDED",
        )
    return None


async def history(session: AsyncSession, cipher: FieldCipher, note: Note) -> list[Note]:
    """Every version of a note's chain, oldest first."""
    chain: list[Note] = [note]
    while chain[0].amends_id is not None:
        earlier = await find_note(session, cipher, note.encounter_id, chain[0].amends_id)
        if earlier is None:
            break
        chain.insert(0, earlier)
    while chain[-1].superseded_by_id is not None:
        later = await find_note(session, cipher, note.encounter_id, chain[-1].superseded_by_id)
        if later is None:
            break
        chain.append(later)
    return chain


# --- diagnoses ---------------------------------------------------------------------------------


async def insert_diagnosis(
    session: AsyncSession, values: dict[str, Any], request: tuple[str, str] | None
) -> Row[Any] | None:
    """A new diagnosis; None when its request id was used before (see diagnosis_by_request)."""
    request_id = request[0] if request else None
    statement = insert(diagnoses).values(
        id=uuid.uuid4(),
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, diagnoses.c.create_request_id)
    return (await session.execute(statement.returning(*diagnoses.c))).first()


async def diagnosis_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The diagnosis created by the AddDiagnosis call with this request id."""
    query = select(*diagnoses.c).where(diagnoses.c.create_request_id == request_id)
    return (await session.execute(query)).first()


def diagnosis_conflict(error: IntegrityError) -> AlreadyExists | FailedPrecondition | None:
    """The documented answer to a diagnosis constraint the change violated, or None."""
    violation = integrity_violation(error)
    if violation == (UNIQUE_VIOLATION, "diagnoses_code_once"):
        return AlreadyExists(
            "the encounter already has a diagnosis with this code", reason="DIAGNOSIS_EXISTS"
        )
    if violation == (UNIQUE_VIOLATION, "diagnoses_one_principal"):
        return FailedPrecondition(
            "the encounter already has a principal diagnosis (rank 1)",
            reason="PRINCIPAL_DIAGNOSIS_EXISTS",
        )
    return None


async def get_diagnosis(
    session: AsyncSession,
    encounter_id: uuid.UUID,
    diagnosis_id: uuid.UUID,
    *,
    lock: bool = False,
) -> Row[Any]:
    """One diagnosis of an encounter, or NOT_FOUND."""
    query = select(*diagnoses.c).where(
        diagnoses.c.id == diagnosis_id, diagnoses.c.encounter_id == encounter_id
    )
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        raise not_found(diagnosis_name(encounter_id, diagnosis_id))
    return row


async def list_diagnoses(
    session: AsyncSession,
    encounter_id: uuid.UUID,
    *,
    include_entered_in_error: bool,
    after: tuple[int, dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """The diagnoses of an encounter by rank, then creation time, after the keyset cursor."""
    c = diagnoses.c
    conditions: list[Any] = [c.encounter_id == encounter_id]
    if not include_entered_in_error:
        conditions.append(c.verification_status != "entered_in_error")
    if after is not None:
        conditions.append(
            tuple_(c.rank, c.create_time, c.id)
            > tuple_(literal(after[0]), literal(after[1]), literal(after[2]))
        )
    query = (
        select(*diagnoses.c).where(*conditions).order_by(c.rank, c.create_time, c.id).limit(limit)
    )
    return list((await session.execute(query)).all())


async def update_diagnosis(
    session: AsyncSession,
    encounter_id: uuid.UUID,
    diagnosis_id: uuid.UUID,
    values: dict[str, Any],
    etag: str,
) -> Row[Any]:
    """Change a diagnosis that still counts."""
    current = await get_diagnosis(session, encounter_id, diagnosis_id, lock=True)
    check_etag(etag, current.version)
    if current.verification_status == "entered_in_error":
        raise FailedPrecondition(
            "the diagnosis was entered in error and can no longer change",
            reason="DIAGNOSIS_ENTERED_IN_ERROR",
        )
    statement = (
        update(diagnoses)
        .where(diagnoses.c.id == diagnosis_id)
        .values(**values, version=diagnoses.c.version + 1, update_time=func.now())
        .returning(*diagnoses.c)
    )
    return (await session.execute(statement)).one()
