"""Queries of the pharmacy schema. Each function runs inside the caller's session (a transaction
for writes), except dispensing's, which run on the asyncpg driver (see "dispensing on the driver").

Nothing that guards a quantity reads-then-writes: stock is taken by one conditional UPDATE of the
stock item (`on_hand >= $quantity`) and the prescription's allowance by one conditional UPDATE of
the pharmacy's copy (`dispensed + $quantity <= total_quantity`), which PostgreSQL serialises on
the row lock; the CHECKs of tables.py back them up. Every transaction that takes both locks takes
the prescription's first, then the stock item's, so they never deadlock.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Row, Table, and_, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from his.pharmacy.mapping import dispense_name, medication_name, prescription_name, stock_item_name
from his.pharmacy.tables import (
    dispenses,
    medications,
    prescriptions,
    stock_adjustments,
    stock_items,
    stock_receipts,
)
from his.runtime.database import UNIQUE_VIOLATION, Database, integrity_violation
from his.runtime.idempotency import skip_taken


def not_found(name: str) -> NotFound:
    return NotFound(f"{name} not found", metadata={"name": name})


def refused(reason: str, message: str, **metadata: str) -> FailedPrecondition:
    """A dispensing or stock refusal: FAILED_PRECONDITION with its reason."""
    return FailedPrecondition(message, reason=reason, metadata=metadata)


def check_etag(etag: str, version: int) -> None:
    """ABORTED unless `etag` is empty or the stored version."""
    if etag and etag != str(version):
        raise Aborted(
            "the record was changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(version)},
        )


# --- medications (the formulary) --------------------------------------------------------------


def product_taken(error: IntegrityError) -> AlreadyExists | None:
    """ALREADY_EXISTS when another medication has the same ATC code, form and strength."""
    if integrity_violation(error) == (UNIQUE_VIOLATION, "medications_one_per_product"):
        return AlreadyExists(
            "another medication has the same ATC code, form and strength",
            reason="MEDICATION_EXISTS",
        )
    return None


async def insert_medication(
    session: AsyncSession, values: dict[str, Any], request: tuple[str, str] | None
) -> Row[Any] | None:
    """A new medication; None when its request id was used before (see medication_by_request)."""
    request_id = request[0] if request else None
    statement = insert(medications).values(
        id=uuid.uuid4(),
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, medications.c.create_request_id)
    return (await session.execute(statement.returning(*medications.c))).first()


async def medication_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The medication created by the CreateMedication call with this request id."""
    query = select(*medications.c).where(medications.c.create_request_id == request_id)
    return (await session.execute(query)).first()


async def get_medication(
    session: AsyncSession, medication_id: uuid.UUID, *, lock: bool = False
) -> Row[Any]:
    """One medication, or NOT_FOUND."""
    query = select(*medications.c).where(medications.c.id == medication_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        raise not_found(medication_name(medication_id))
    return row


def _like_prefix(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


async def list_medications(
    session: AsyncSession,
    *,
    name_prefix: str | None,
    atc_prefix: str | None,
    include_inactive: bool,
    after: tuple[str, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Medications by display name, then id, after the keyset cursor."""
    c = medications.c
    conditions: list[Any] = []
    if name_prefix:
        conditions.append(func.lower(c.display_name).like(_like_prefix(name_prefix.lower())))
    if atc_prefix:
        conditions.append(c.atc_code.like(_like_prefix(atc_prefix)))
    if not include_inactive:
        conditions.append(c.active.is_(True))
    if after is not None:
        conditions.append(
            tuple_(c.display_name, c.id) > tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*medications.c)
        .where(and_(True, *conditions))
        .order_by(c.display_name, c.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


async def update_medication(
    session: AsyncSession, medication_id: uuid.UUID, values: dict[str, Any], etag: str
) -> Row[Any]:
    """Change a medication's fields (the servicer checked which may change)."""
    current = await get_medication(session, medication_id, lock=True)
    check_etag(etag, current.version)
    statement = (
        update(medications)
        .where(medications.c.id == medication_id)
        .values(**values, version=medications.c.version + 1, update_time=func.now())
        .returning(*medications.c)
    )
    return (await session.execute(statement)).one()


# --- stock ------------------------------------------------------------------------------------


async def receipt(session: AsyncSession, request_id: str) -> Any:
    """The ReceiveStock call with this request id (its fingerprint) and its stock item now."""
    query = (
        select(*stock_items.c, stock_receipts.c.request_fingerprint)
        .select_from(stock_receipts.join(stock_items))
        .where(stock_receipts.c.request_id == request_id)
    )
    return (await session.execute(query)).first()


async def receive(
    session: AsyncSession,
    *,
    medication_id: uuid.UUID,
    location_id: uuid.UUID,
    lot_number: str,
    expiry: dt.date,
    quantity: int,
    staff_id: uuid.UUID | None,
    request: tuple[str, str] | None,
) -> Row[Any]:
    """Add a delivery to the lot's stock item (made by the first delivery). A concurrent replay
    of the request id loses on the receipt's primary key (IntegrityError, the caller's)."""
    c = stock_items.c
    fresh = insert(stock_items).values(
        id=uuid.uuid4(),
        medication_id=medication_id,
        location_id=location_id,
        lot_number=lot_number,
        expiry_date=expiry,
        on_hand=quantity,
    )
    statement = fresh.on_conflict_do_update(
        constraint="stock_items_one_per_lot",
        set_={
            "on_hand": c.on_hand + fresh.excluded.on_hand,
            "version": c.version + 1,
            "update_time": func.now(),
        },
        where=c.expiry_date == fresh.excluded.expiry_date,
    ).returning(*stock_items.c)
    row = (await session.execute(statement)).first()
    if row is None:
        raise refused(
            "EXPIRY_MISMATCH",
            "the lot is already held at this location with another expiry date",
            lot_number=lot_number,
        )
    if request is not None:
        await session.execute(
            insert(stock_receipts).values(
                request_id=request[0],
                request_fingerprint=request[1],
                stock_item_id=row.id,
                quantity=quantity,
                staff_id=staff_id,
            )
        )
    return row


async def find_stock_item(
    session: AsyncSession, medication_id: uuid.UUID, stock_item_id: uuid.UUID
) -> Row[Any] | None:
    """One stock item of a medication, or None."""
    query = select(*stock_items.c).where(
        stock_items.c.id == stock_item_id, stock_items.c.medication_id == medication_id
    )
    return (await session.execute(query)).first()


async def adjust(
    session: AsyncSession,
    *,
    medication_id: uuid.UUID,
    stock_item_id: uuid.UUID,
    change: dict[str, Any],
    etag: str,
    staff_id: uuid.UUID | None,
) -> Row[Any]:
    """Correct the quantity on hand by a signed amount: one conditional UPDATE (the etag and
    `on_hand + change >= 0`), then the adjustment's record."""
    c = stock_items.c
    amount = change["quantity_change"]
    statement = (
        update(stock_items)
        .where(
            c.id == stock_item_id,
            c.medication_id == medication_id,
            # An etag that is no version number matches nothing (ABORTED below).
            c.version
            == (int(etag) if etag.isascii() and etag.isdigit() and len(etag) < 10 else -1),
            c.on_hand + amount >= 0,
        )
        .values(on_hand=c.on_hand + amount, version=c.version + 1, update_time=func.now())
        .returning(*stock_items.c)
    )
    row = (await session.execute(statement)).first()
    if row is None:
        current = await find_stock_item(session, medication_id, stock_item_id)
        if current is None:
            raise not_found(stock_item_name(medication_id, stock_item_id))
        check_etag(etag, current.version)
        raise refused(
            "STOCK_WOULD_BE_NEGATIVE",
            "the adjustment would take the quantity on hand below zero",
            quantity_on_hand=str(current.on_hand),
        )
    await session.execute(
        insert(stock_adjustments).values(
            id=uuid.uuid4(), stock_item_id=stock_item_id, staff_id=staff_id, **change
        )
    )
    return row


@dataclass(frozen=True)
class StockFilter:
    """The filters of ListStockItems, validated."""

    medication_id: uuid.UUID | None
    location_id: uuid.UUID | None
    expiring_before: dt.date | None
    include_empty: bool

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            (
                "stock",
                self.medication_id,
                self.location_id,
                self.expiring_before,
                self.include_empty,
            )
        )


async def list_stock_items(
    session: AsyncSession,
    where: StockFilter,
    *,
    after: tuple[dt.date, str, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Stock items by expiry date, lot number and id, after the keyset cursor."""
    c = stock_items.c
    conditions: list[Any] = []
    if where.medication_id is not None:
        conditions.append(c.medication_id == where.medication_id)
    if where.location_id is not None:
        conditions.append(c.location_id == where.location_id)
    if where.expiring_before is not None:
        conditions.append(c.expiry_date < where.expiring_before)
    if not where.include_empty:
        conditions.append(c.on_hand > 0)
    if after is not None:
        conditions.append(
            tuple_(c.expiry_date, c.lot_number, c.id)
            > tuple_(literal(after[0]), literal(after[1]), literal(after[2]))
        )
    query = (
        select(*stock_items.c)
        .where(and_(True, *conditions))
        .order_by(c.expiry_date, c.lot_number, c.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


# --- prescriptions (the pharmacy's copy) ------------------------------------------------------


async def apply_prescription(session: AsyncSession, values: dict[str, Any]) -> None:
    """Keep a delivered medication request unless the copy already holds a newer revision
    (duplicates and out-of-order deliveries change nothing). `dispensed` is never touched."""
    statement = insert(prescriptions).values(**values)
    changes = {key: statement.excluded[key] for key in values if key != "id"}
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[prescriptions.c.id],
            set_={**changes, "update_time": func.now()},
            where=prescriptions.c.revision < statement.excluded.revision,
        )
    )


# --- dispenses --------------------------------------------------------------------------------

_REMAINING = func.greatest(prescriptions.c.total_quantity - prescriptions.c.dispensed, 0).label(
    "remaining"
)
_DISPENSE_COLUMNS = (*dispenses.c, _REMAINING)
_DISPENSES_JOINED = dispenses.join(prescriptions, prescriptions.c.id == dispenses.c.prescription_id)


async def find_dispense(session: AsyncSession, dispense_id: uuid.UUID) -> Row[Any] | None:
    """One dispense with its prescription's remaining quantity, or None."""
    query = (
        select(*_DISPENSE_COLUMNS)
        .select_from(_DISPENSES_JOINED)
        .where(dispenses.c.id == dispense_id)
    )
    return (await session.execute(query)).first()


@dataclass(frozen=True)
class DispenseFilter:
    """The filters of ListMedicationDispenses, validated."""

    patient_id: uuid.UUID | None
    prescription_id: uuid.UUID | None
    status: str | None
    # Handed over during [start, end) (handed_over_period).
    handed_over: tuple[dt.datetime | None, dt.datetime | None] | None = None

    def fingerprint(self) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            ("dispenses", self.patient_id, self.prescription_id, self.status, self.handed_over)
        )


async def list_dispenses(
    session: AsyncSession,
    where: DispenseFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Dispenses newest first, (create time, id) descending, after the keyset cursor."""
    c = dispenses.c
    conditions: list[Any] = []
    if where.patient_id is not None:
        conditions.append(c.patient_id == where.patient_id)
    if where.prescription_id is not None:
        conditions.append(c.prescription_id == where.prescription_id)
    if where.status is not None:
        conditions.append(c.status == where.status)
    if where.handed_over is not None:
        start, end = where.handed_over
        conditions.append(c.handed_over_time.is_not(None))
        if start is not None:
            conditions.append(c.handed_over_time >= start)
        if end is not None:
            conditions.append(c.handed_over_time < end)
    if after is not None:
        conditions.append(
            tuple_(c.create_time, c.id) < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*_DISPENSE_COLUMNS)
        .select_from(_DISPENSES_JOINED)
        .where(and_(True, *conditions))
        .order_by(c.create_time.desc(), c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())


async def _locked_dispense(session: AsyncSession, dispense_id: uuid.UUID) -> Row[Any]:
    locked = (
        await session.execute(
            select(dispenses.c.id).where(dispenses.c.id == dispense_id).with_for_update()
        )
    ).first()
    if locked is None:
        raise not_found(dispense_name(dispense_id))
    found = await find_dispense(session, dispense_id)
    assert found is not None  # locked in this transaction
    return found


async def _set(session: AsyncSession, dispense_id: uuid.UUID, **values: Any) -> Row[Any]:
    """Change a (locked) dispense: its next revision. Returns it as it now is."""
    await session.execute(
        update(dispenses)
        .where(dispenses.c.id == dispense_id)
        .values(**values, revision=dispenses.c.revision + 1, update_time=func.now())
    )
    changed = await find_dispense(session, dispense_id)
    assert changed is not None  # locked in this transaction
    return changed


async def hand_over(session: AsyncSession, dispense_id: uuid.UUID, etag: str) -> Row[Any] | None:
    """Mark a prepared dispense handed over; None when it already was (nothing changes)."""
    current = await _locked_dispense(session, dispense_id)
    if current.status == "completed":
        return None
    check_etag(etag, current.revision)
    if current.status == "cancelled":
        raise refused("DISPENSE_CANCELLED", "the dispense was cancelled and cannot be handed over")
    return await _set(session, dispense_id, status="completed", handed_over_time=func.now())


async def cancel(
    session: AsyncSession, dispense_id: uuid.UUID, reason: str, etag: str
) -> Row[Any] | None:
    """Cancel a prepared dispense and give its quantity back to its stock item and to the
    prescription's allowance, in this transaction; None when it already was cancelled. The
    dispense's row lock makes concurrent cancels return the stock exactly once."""
    current = await _locked_dispense(session, dispense_id)
    if current.status == "cancelled":
        return None
    check_etag(etag, current.revision)
    if current.status == "completed":
        raise refused(
            "DISPENSE_COMPLETED",
            "the dispense was handed over; handed-over medication never goes back to stock",
        )
    now = func.now()
    # Lock order as dispensing's: the prescription, then the stock item.
    await session.execute(
        update(prescriptions)
        .where(prescriptions.c.id == current.prescription_id)
        .values(dispensed=prescriptions.c.dispensed - current.quantity)
    )
    await session.execute(
        update(stock_items)
        .where(stock_items.c.id == current.stock_item_id)
        .values(
            on_hand=stock_items.c.on_hand + current.quantity,
            version=stock_items.c.version + 1,
            update_time=now,
        )
    )
    return await _set(session, dispense_id, status="cancelled", cancel_reason=reason)


# --- dispensing on the driver -----------------------------------------------------------------
# DispenseMedication is the pharmacy's hot path: its statements run on the asyncpg driver,
# prepared once per connection, as scheduling's booking does (SQLAlchemy's per-statement CPU was
# most of the call there). Names come from tables.py; values are bound.


def _columns(table: Table) -> str:
    return ", ".join(f'"{column.name}"' for column in table.c)


def _name(table: Table) -> str:
    return f'"{table.schema}"."{table.name}"'


_P, _S, _D, _M = _name(prescriptions), _name(stock_items), _name(dispenses), _name(medications)

# The prescription's allowance, taken by one conditional UPDATE (serialised on its row lock), of
# an active medication of the formulary (read, not locked). Every statement inside the locks
# makes the next dispense of the same drug wait: the happy path is three (allowance, stock,
# dispense) and the outbox's insert; the refusals read on to say why.
_P_COLUMNS = ", ".join(f"p.{column.name}" for column in prescriptions.c)
_TAKE_ALLOWANCE = f"""
UPDATE {_P} p SET dispensed = p.dispensed + $2
FROM {_M} m
WHERE p.id = $1 AND p.status = 'active' AND p.dispensed + $2 <= p.total_quantity
  AND m.id = p.medication_id AND m.active
RETURNING {_P_COLUMNS}, p.total_quantity - p.dispensed AS remaining
"""  # noqa: S608
_PRESCRIPTION = f"SELECT {_columns(prescriptions)} FROM {_P} WHERE id = $1"  # noqa: S608
_MEDICATION_ACTIVE = f"SELECT active FROM {_M} WHERE id = $1"  # noqa: S608
_STOCK_ITEM = (
    f"SELECT {_columns(stock_items)}, expiry_date <= current_date AS expired "  # noqa: S608
    f"FROM {_S} WHERE id = $1 AND medication_id = $2"
)
# A usable lot (not expired, holding the whole quantity) of the medication at the location that
# expires before $3 (first expiry, first out); $3 NULL: the first of all.
_FIRST_USABLE = f"""
SELECT id FROM {_S}
WHERE medication_id = $1 AND location_id = $2 AND expiry_date > current_date AND on_hand >= $4
  AND ($3::date IS NULL OR expiry_date < $3::date)
ORDER BY expiry_date, lot_number, id LIMIT 1
"""  # noqa: S608
# The first usable lot at the location, taken by one conditional UPDATE (the lot chosen before
# its row lock is checked again under it: a concurrent dispense may have emptied it).
_TAKE_FIRST = f"""
UPDATE {_S} SET on_hand = on_hand - $3, version = version + 1, update_time = now()
WHERE id = (
    SELECT id FROM {_S}
    WHERE medication_id = $1 AND location_id = $2 AND expiry_date > current_date AND on_hand >= $3
    ORDER BY expiry_date, lot_number, id LIMIT 1
) AND on_hand >= $3 AND expiry_date > current_date
RETURNING {_columns(stock_items)}
"""  # noqa: S608
# The stock, taken by one conditional UPDATE: never below zero, never from an expired lot.
_TAKE_STOCK = f"""
UPDATE {_S} SET on_hand = on_hand - $2, version = version + 1, update_time = now()
WHERE id = $1 AND on_hand >= $2 AND expiry_date > current_date
RETURNING {_columns(stock_items)}
"""  # noqa: S608
_INSERT_DISPENSE = f"""
INSERT INTO {_D} (id, prescription_id, patient_id, encounter_id, prescriber_id, medication_id,
    stock_item_id, location_id, lot_number, quantity, currency, unit_price_minor, status,
    dispenser_id, create_request_id, create_request_fingerprint)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'in_progress', $13, $14, $15)
ON CONFLICT (create_request_id) DO NOTHING
RETURNING {_columns(dispenses)}
"""  # noqa: S608
_REPLAY = f"""
SELECT {", ".join(f"d.{c.name}" for c in dispenses.c)},
    greatest(p.total_quantity - p.dispensed, 0) AS remaining
FROM {_D} d JOIN {_P} p ON p.id = d.prescription_id WHERE d.create_request_id = $1
"""  # noqa: S608
# Tries of the lot choice when a concurrent dispense emptied the chosen lot first.
_CHOICE_TRIES = 20


class Record:
    """A driver record read by attribute, as the mapping reads SQLAlchemy rows."""

    __slots__ = ("_extra", "_record")

    def __init__(self, record: asyncpg.Record, **extra: Any) -> None:
        self._record = record
        self._extra = extra

    def __getattr__(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        return self._record[name]


class ReplayRaced(Exception):
    """The dispense's request id was taken by a concurrent replay: roll back, answer with it."""


async def find_replay(database: Database, request_id: str) -> Record | None:
    """The dispense made by the DispenseMedication call with this request id, if any."""
    async with database.driver() as connection:
        record = await connection.fetchrow(_REPLAY, request_id)
    return None if record is None else Record(record)


@dataclass(frozen=True)
class Dispensing:
    """What one DispenseMedication asks for, validated."""

    prescription_id: uuid.UUID
    quantity: int
    # The named stock item (its medication and id), or None: the service chooses at `location_id`.
    stock_item: tuple[uuid.UUID, uuid.UUID] | None
    location_id: uuid.UUID | None
    dispenser_id: uuid.UUID | None
    request: tuple[str, str] | None


async def _allowance(connection: asyncpg.Connection, ask: Dispensing) -> asyncpg.Record:
    """The prescription's copy with the allowance taken, or FAILED_PRECONDITION saying why not."""
    for _ in range(2):  # again only if the copy and the medication allowed it once looked at
        taken = await connection.fetchrow(_TAKE_ALLOWANCE, ask.prescription_id, ask.quantity)
        if taken is not None:
            return taken
        copy = _allowing(await connection.fetchrow(_PRESCRIPTION, ask.prescription_id), ask)
        medication_id = copy["medication_id"]
        active = await connection.fetchval(_MEDICATION_ACTIVE, medication_id)
        if active is None:
            raise refused(
                "MEDICATION_NOT_KNOWN",
                "the prescribed medication is not in the formulary",
                medication=medication_name(medication_id),
            )
        if not active:
            raise refused("MEDICATION_INACTIVE", "the prescribed medication is inactive")
    raise Aborted(
        "the prescription or its medication changed while dispensing; try again",
        reason="CONCURRENT_CHANGE",
    )


def _allowing(copy: asyncpg.Record | None, ask: Dispensing) -> asyncpg.Record:
    """The copy if it allows the quantity; FAILED_PRECONDITION if not (unknown, not active, not
    enough left)."""
    name = prescription_name(ask.prescription_id)
    if copy is None:
        raise refused(
            "ORDER_NOT_KNOWN",
            "the pharmacy has not (yet) received this medication request from orders",
            medication_request=name,
        )
    if copy["status"] != "active":
        raise refused(
            "PRESCRIPTION_NOT_ACTIVE",
            f"the medication request is {copy['status']}",
            status=copy["status"],
        )
    remaining = copy["total_quantity"] - copy["dispensed"]
    if ask.quantity > remaining:
        raise refused(
            "EXCEEDS_PRESCRIPTION",
            "the quantity exceeds what the prescription still allows",
            remaining_quantity=str(max(remaining, 0)),
        )
    return copy


async def _named_lot(
    connection: asyncpg.Connection, ask: Dispensing, medication_id: uuid.UUID
) -> asyncpg.Record:
    assert ask.stock_item is not None
    named_medication, stock_item_id = ask.stock_item
    if named_medication != medication_id:
        raise refused(
            "WRONG_MEDICATION",
            "the stock item is for another medication than the prescription's",
            medication=medication_name(medication_id),
        )
    lot = await connection.fetchrow(_STOCK_ITEM, stock_item_id, medication_id)
    if lot is None:
        raise refused(
            "STOCK_ITEM_NOT_FOUND",
            "no such stock item",
            stock_item=stock_item_name(medication_id, stock_item_id),
        )
    if lot["expired"]:
        raise refused("LOT_EXPIRED", "the lot has expired", lot_number=lot["lot_number"])
    earlier = await connection.fetchval(
        _FIRST_USABLE, medication_id, lot["location_id"], lot["expiry_date"], ask.quantity
    )
    if earlier is not None:
        raise refused(
            "NOT_FIRST_EXPIRY",
            "another lot at this location expires earlier; dispense from it first",
            stock_item=stock_item_name(medication_id, earlier),
        )
    taken = await connection.fetchrow(_TAKE_STOCK, stock_item_id, ask.quantity)
    if taken is None:
        raise refused(
            "OUT_OF_STOCK",
            "the stock item holds less than the quantity",
            stock_item=stock_item_name(medication_id, stock_item_id),
        )
    return taken


async def _chosen_lot(
    connection: asyncpg.Connection, ask: Dispensing, medication_id: uuid.UUID
) -> asyncpg.Record:
    for _ in range(_CHOICE_TRIES):
        taken = await connection.fetchrow(_TAKE_FIRST, medication_id, ask.location_id, ask.quantity)
        if taken is not None:
            return taken
        # Lost a race for the lot it chose, or no lot is usable: look again.
        first = await connection.fetchval(
            _FIRST_USABLE, medication_id, ask.location_id, None, ask.quantity
        )
        if first is None:
            break
    raise refused(
        "OUT_OF_STOCK",
        "no lot at this location holds the quantity and has not expired",
        location=f"departments/{ask.location_id}",
    )


async def dispense(connection: asyncpg.Connection, ask: Dispensing) -> Record:
    """Take the prescription's allowance and the stock, and record the dispense, in the caller's
    driver transaction, or say why not (FAILED_PRECONDITION with a reason); ReplayRaced when a
    concurrent call with the same request id got there first."""
    copy = await _allowance(connection, ask)
    medication_id = copy["medication_id"]
    if ask.stock_item is not None:
        lot = await _named_lot(connection, ask, medication_id)
    else:
        lot = await _chosen_lot(connection, ask, medication_id)
    request_id, fingerprint = ask.request or (None, None)
    row = await connection.fetchrow(
        _INSERT_DISPENSE,
        uuid.uuid4(),
        ask.prescription_id,
        copy["patient_id"],
        copy["encounter_id"],
        copy["prescriber_id"],
        medication_id,
        lot["id"],
        lot["location_id"],
        lot["lot_number"],
        ask.quantity,
        copy["currency"],
        copy["unit_price_minor"],
        ask.dispenser_id,
        request_id,
        fingerprint,
    )
    if row is None:
        raise ReplayRaced
    return Record(row, remaining=copy["remaining"])
