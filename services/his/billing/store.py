"""Queries of the billing schema, each inside the caller's session (a transaction for writes).

Nothing that guards money reads-then-writes: a charge is billed by one conditional UPDATE
(`status = 'billable'`), a payment counts by one conditional UPDATE of its invoice
(`status = 'issued' AND paid + amount <= total`) and a refund by one of its payment
(`refunded + amount <= amount`), which PostgreSQL serialises on the row lock; the CHECKs of
tables.py back them up. Transactions that lock an invoice and its payment lock the invoice first.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    Row,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from his.billing.mapping import charge_item_name, invoice_name, payment_name, total
from his.billing.tables import (
    charge_items,
    invoice_lines,
    invoices,
    payments,
    refunds,
    sources,
    tariff_items,
)
from his.runtime.database import UNIQUE_VIOLATION, integrity_violation
from his.runtime.idempotency import skip_taken


def not_found(name: str) -> NotFound:
    return NotFound(f"{name} not found", metadata={"name": name})


def refused(reason: str, message: str, **metadata: str) -> FailedPrecondition:
    """A state refusal: FAILED_PRECONDITION with its reason."""
    return FailedPrecondition(message, reason=reason, metadata=metadata)


def check_etag(etag: str, version: int) -> None:
    """ABORTED unless `etag` is empty or the stored version."""
    if etag and etag != str(version):
        raise Aborted(
            "the record was changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(version)},
        )


async def _one(
    session: AsyncSession, table: Table, *where: Any, lock: bool = False
) -> Row[Any] | None:
    """The row of `table` matching `where`, or None; locked for update with `lock`."""
    query = select(*table.c).where(*where)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def _newest_first(
    session: AsyncSession,
    table: Table,
    conditions: list[Any],
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Rows of `table` matching `conditions`, (create time, id) descending, after the cursor."""
    c = table.c
    if after is not None:
        conditions.append(
            tuple_(c.create_time, c.id) < tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*table.c)
        .where(and_(True, *conditions))
        .order_by(c.create_time.desc(), c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())


# --- the price list ---------------------------------------------------------------------------


def tariff_taken(error: IntegrityError) -> AlreadyExists | None:
    """ALREADY_EXISTS when an item of the same code takes effect at the same time."""
    if integrity_violation(error) == (UNIQUE_VIOLATION, "tariff_items_one_per_time"):
        return AlreadyExists(
            "an item of the same code takes effect at the same time", reason="TARIFF_ITEM_EXISTS"
        )
    return None


_NEXT = tariff_items.alias("next_item")
_END_TIME = (
    select(func.min(_NEXT.c.effective_time))
    .where(
        _NEXT.c.code_system == tariff_items.c.code_system,
        _NEXT.c.code == tariff_items.c.code,
        _NEXT.c.effective_time > tariff_items.c.effective_time,
    )
    .scalar_subquery()
    .label("end_time")
)
_TARIFF_COLUMNS = (*tariff_items.c, _END_TIME)


async def has_price(session: AsyncSession, code_system: str, code: str) -> bool:
    """Whether the code has any tariff item."""
    query = select(tariff_items.c.id).where(
        tariff_items.c.code_system == code_system, tariff_items.c.code == code
    )
    return (await session.execute(query.limit(1))).first() is not None


async def insert_tariff_item(
    session: AsyncSession, values: dict[str, Any], request: tuple[str, str] | None
) -> Row[Any] | None:
    """A new tariff item; None when its request id was used before."""
    request_id = request[0] if request else None
    statement = insert(tariff_items).values(
        id=uuid.uuid4(),
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, tariff_items.c.create_request_id)
    inserted = (await session.execute(statement.returning(tariff_items.c.id))).first()
    return None if inserted is None else await get_tariff_item(session, inserted.id)


async def get_tariff_item(session: AsyncSession, item_id: uuid.UUID) -> Row[Any]:
    query = select(*_TARIFF_COLUMNS).where(tariff_items.c.id == item_id)
    return (await session.execute(query)).one()


async def tariff_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The tariff item created by the CreateTariffItem call with this request id."""
    query = select(*_TARIFF_COLUMNS).where(tariff_items.c.create_request_id == request_id)
    return (await session.execute(query)).first()


async def price_planned(session: AsyncSession, item: Row[Any]) -> int:
    """Price the PLANNED charges of the item's code occurring from its effective time on (and
    before the next item's); they become BILLABLE. How many were priced."""
    c = charge_items.c
    conditions = [
        c.status == "planned",
        c.code_system == item.code_system,
        c.code == item.code,
        c.occurrence_time >= item.effective_time,
    ]
    if item.end_time is not None:
        conditions.append(c.occurrence_time < item.end_time)
    statement = (
        update(charge_items)
        .where(*conditions)
        .values(
            status="billable",
            unit_price_minor=item.unit_price_minor,
            # round(numeric) rounds half away from zero, as mapping.total does.
            total_minor=func.round(literal(item.unit_price_minor) * c.quantity_value),
            version=c.version + 1,
            update_time=func.now(),
        )
    )
    result = await session.execute(statement)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def price_at(session: AsyncSession, code_system: str, code: str, at: dt.datetime) -> Any:
    """The tariff item of a code in force at `at` (its price and currency), or None."""
    t = tariff_items.c
    query = (
        select(t.unit_price_minor, t.currency)
        .where(t.code_system == code_system, t.code == code, t.effective_time <= at)
        .order_by(t.effective_time.desc())
        .limit(1)
    )
    return (await session.execute(query)).first()


@dataclass(frozen=True)
class TariffFilter:
    """The filters of ListTariffItems, validated."""

    code_system: str | None
    code: str | None
    effective_at: dt.datetime | None

    def fingerprint(self) -> str:
        return repr(("tariff", self.code_system, self.code, self.effective_at))


async def list_tariff_items(
    session: AsyncSession,
    where: TariffFilter,
    *,
    after: tuple[str, str, dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Tariff items by code system, code, effective time and id, after the keyset cursor."""
    t = tariff_items.c
    conditions: list[Any] = []
    if where.code_system is not None:
        conditions.append(t.code_system == where.code_system)
    if where.code is not None:
        conditions.append(t.code == where.code)
    if where.effective_at is not None:
        later = tariff_items.alias("later")
        conditions.append(t.effective_time <= where.effective_at)
        # In force: no later item of the code has taken effect by then.
        conditions.append(
            ~select(later.c.id)
            .where(
                later.c.code_system == t.code_system,
                later.c.code == t.code,
                later.c.effective_time > t.effective_time,
                later.c.effective_time <= where.effective_at,
            )
            .exists()
        )
    if after is not None:
        conditions.append(
            tuple_(t.code_system, t.code, t.effective_time, t.id)
            > tuple_(*(literal(value) for value in after))
        )
    query = (
        select(*_TARIFF_COLUMNS)
        .where(and_(True, *conditions))
        .order_by(t.code_system, t.code, t.effective_time, t.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


# --- charge items -----------------------------------------------------------------------------


def source_taken(error: IntegrityError) -> AlreadyExists | None:
    """ALREADY_EXISTS when an active charge item has the same source and code."""
    if integrity_violation(error) == (UNIQUE_VIOLATION, "charge_items_one_per_source"):
        return AlreadyExists(
            "a charge item that is not aborted has the same source and code",
            reason="SOURCE_ALREADY_CHARGED",
        )
    return None


async def insert_charge(
    session: AsyncSession, values: dict[str, Any], request: tuple[str, str] | None
) -> Row[Any] | None:
    """A new BILLABLE manual charge; None when its request id was used before."""
    request_id = request[0] if request else None
    statement = insert(charge_items).values(
        id=uuid.uuid4(),
        status="billable",
        total_minor=total(values["unit_price_minor"], values["quantity_value"]),
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, charge_items.c.create_request_id)
    return (await session.execute(statement.returning(*charge_items.c))).first()


async def charge_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The charge item created by the CreateChargeItem call with this request id."""
    return await _one(session, charge_items, charge_items.c.create_request_id == request_id)


async def find_charge(
    session: AsyncSession, charge_id: uuid.UUID, *, lock: bool = False
) -> Row[Any] | None:
    """One charge item, or None."""
    return await _one(session, charge_items, charge_items.c.id == charge_id, lock=lock)


@dataclass(frozen=True)
class ChargeFilter:
    """The filters of ListChargeItems, validated."""

    patient_id: uuid.UUID | None
    encounter_id: uuid.UUID | None
    source: str | None
    status: str | None

    def fingerprint(self) -> str:
        return repr(("charges", self.patient_id, self.encounter_id, self.source, self.status))


async def list_charges(
    session: AsyncSession,
    where: ChargeFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Charge items newest first, (create time, id) descending, after the keyset cursor."""
    c = charge_items.c
    conditions: list[Any] = []
    if where.patient_id is not None:
        conditions.append(c.patient_id == where.patient_id)
    if where.encounter_id is not None:
        conditions.append(c.encounter_id == where.encounter_id)
    if where.source is not None:
        conditions.append(c.source == where.source)
    if where.status is not None:
        conditions.append(c.status == where.status)
    return await _newest_first(session, charge_items, conditions, after, limit)


async def cancel_charge(
    session: AsyncSession, charge_id: uuid.UUID, reason: str, etag: str
) -> tuple[Row[Any], bool]:
    """Abort a charge that is not billed: (the charge, whether it changed)."""
    current = await find_charge(session, charge_id, lock=True)
    if current is None:
        raise not_found(charge_item_name(charge_id))
    check_etag(etag, current.version)
    if current.status == "aborted":
        return current, False
    if current.status == "billed":
        raise refused(
            "CHARGE_ITEM_BILLED",
            "the charge item is billed; cancel its invoice first",
            invoice=invoice_name(current.invoice_id),
        )
    return await _abort(session, charge_id, reason), True


async def _abort(session: AsyncSession, charge_id: uuid.UUID, reason: str) -> Row[Any]:
    c = charge_items.c
    statement = (
        update(charge_items)
        .where(c.id == charge_id)
        .values(
            status="aborted", cancel_reason=reason, version=c.version + 1, update_time=func.now()
        )
        .returning(*charge_items.c)
    )
    return (await session.execute(statement)).one()


# --- charges from events ----------------------------------------------------------------------


async def newer_source(session: AsyncSession, source: str, revision: int, status: str) -> bool:
    """Record the source's state at `revision`; False when one as new or newer was applied (the
    event then changes nothing)."""
    statement = insert(sources).values(source=source, revision=revision, status=status)
    statement = statement.on_conflict_do_update(
        index_elements=[sources.c.source],
        set_={
            "revision": statement.excluded.revision,
            "status": statement.excluded.status,
            "update_time": func.now(),
        },
        where=sources.c.revision < statement.excluded.revision,
    )
    return (await session.execute(statement.returning(sources.c.source))).first() is not None


async def charge_from_event(session: AsyncSession, values: dict[str, Any]) -> Row[Any] | None:
    """The charge of a rendered service, priced by the tariff item in force at its occurrence
    (PLANNED when none is); None when its source already has a charge of the code or the event
    made one before (the unique indexes: nothing is charged twice)."""
    price = await price_at(
        session, values["code_system"], values["code"], values["occurrence_time"]
    )
    priced: dict[str, Any] = {"status": "planned", "unit_price_minor": None, "total_minor": None}
    if price is not None:
        priced = {
            "status": "billable",
            "unit_price_minor": price.unit_price_minor,
            "total_minor": total(price.unit_price_minor, values["quantity_value"]),
        }
    statement = (
        insert(charge_items)
        .values(id=uuid.uuid4(), **values, **priced)
        .on_conflict_do_nothing()
        .returning(*charge_items.c)
    )
    return (await session.execute(statement)).first()


async def reverse_source(
    session: AsyncSession, source: str, reason: str, event_id: uuid.UUID
) -> None:
    """A rendered service reversed: its charge is aborted if not billed yet, credited (a charge
    item with `reverses` and the negative total) if billed. Nothing when it has no charge."""
    c = charge_items.c
    query = (
        select(*charge_items.c)
        .where(c.source == source, c.status != "aborted", c.reverses_id.is_(None))
        .with_for_update()
    )
    for charge in (await session.execute(query)).all():
        if charge.status in ("billable", "planned"):
            await _abort(session, charge.id, reason)
            continue
        credit = {
            key: getattr(charge, key)
            for key in (
                "patient_id",
                "encounter_id",
                "code_system",
                "code",
                "code_display",
                "quantity_value",
                "quantity_unit",
                "currency",
                "source",
                "department_id",
                "occurrence_time",
            )
        }
        await session.execute(
            insert(charge_items)
            .values(
                id=uuid.uuid4(),
                **credit,
                status="billable",
                unit_price_minor=-charge.unit_price_minor,
                total_minor=-charge.total_minor,
                reverses_id=charge.id,
                source_event=event_id,
            )
            .on_conflict_do_nothing()
        )


# --- invoices ---------------------------------------------------------------------------------


async def lines_of(
    session: AsyncSession, invoice_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """The charge item ids of each invoice, in line order."""
    if not invoice_ids:
        return {}
    query = (
        select(invoice_lines.c.invoice_id, invoice_lines.c.charge_item_id)
        .where(invoice_lines.c.invoice_id.in_(list(invoice_ids)))
        .order_by(invoice_lines.c.invoice_id, invoice_lines.c.position)
    )
    found: dict[uuid.UUID, list[uuid.UUID]] = {ident: [] for ident in invoice_ids}
    for row in (await session.execute(query)).all():
        found[row.invoice_id].append(row.charge_item_id)
    return found


async def find_invoice(
    session: AsyncSession, invoice_id: uuid.UUID, *, lock: bool = False
) -> Row[Any] | None:
    """One invoice, or None."""
    return await _one(session, invoices, invoices.c.id == invoice_id, lock=lock)


async def invoice_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The invoice created by the CreateInvoice call with this request id."""
    return await _one(session, invoices, invoices.c.create_request_id == request_id)


@dataclass(frozen=True)
class Invoicing:
    """What CreateInvoice bills: the patient's (and encounter's) listed or billable charges."""

    patient_id: uuid.UUID
    encounter_id: uuid.UUID | None
    listed: list[uuid.UUID]
    currency: str
    request: tuple[str, str] | None


async def _charges_to_bill(session: AsyncSession, ask: Invoicing) -> list[Row[Any]]:
    c = charge_items.c
    if not ask.listed:
        conditions = [c.patient_id == ask.patient_id, c.status == "billable"]
        if ask.encounter_id is not None:
            conditions.append(c.encounter_id == ask.encounter_id)
        query = select(*charge_items.c).where(*conditions).order_by(c.occurrence_time, c.id)
        rows = list((await session.execute(query)).all())
        if not rows:
            raise refused("NO_BILLABLE_CHARGES", "the patient has no billable charge item")
        return rows
    found = {
        row.id: row
        for row in (
            await session.execute(select(*charge_items.c).where(c.id.in_(ask.listed)))
        ).all()
    }
    rows = []
    for charge_id in ask.listed:
        row = found.get(charge_id)
        name = charge_item_name(charge_id)
        if row is None:
            raise refused(
                "CHARGE_ITEM_NOT_FOUND", "a listed charge item does not exist", charge_item=name
            )
        if row.patient_id != ask.patient_id:
            raise refused(
                "CHARGE_ITEM_OTHER_PATIENT",
                "a listed charge item belongs to another patient",
                charge_item=name,
            )
        if ask.encounter_id is not None and row.encounter_id != ask.encounter_id:
            raise refused(
                "CHARGE_ITEM_OTHER_ENCOUNTER",
                "a listed charge item belongs to another encounter",
                charge_item=name,
            )
        if row.status != "billable":
            raise refused(
                "CHARGE_ITEM_NOT_BILLABLE",
                f"a listed charge item is {row.status}",
                charge_item=name,
            )
        if row.currency != ask.currency:
            raise refused(
                "CURRENCY_MISMATCH",
                "the charge items are in different currencies",
                charge_item=name,
            )
        rows.append(row)
    return rows


async def create_invoice(session: AsyncSession, ask: Invoicing) -> Row[Any] | None:
    """A draft invoice billing the charges; None when its request id was used before. ABORTED when
    a concurrent request billed one of them first (this transaction then rolls back)."""
    rows = await _charges_to_bill(session, ask)
    request_id = ask.request[0] if ask.request else None
    invoice_id = uuid.uuid4()
    statement = insert(invoices).values(
        id=invoice_id,
        patient_id=ask.patient_id,
        encounter_id=ask.encounter_id,
        status="draft",
        currency=ask.currency,
        total_minor=sum(row.total_minor for row in rows),
        create_request_id=request_id,
        create_request_fingerprint=ask.request[1] if ask.request else None,
    )
    statement = skip_taken(statement, request_id, invoices.c.create_request_id)
    invoice = (await session.execute(statement.returning(*invoices.c))).first()
    if invoice is None:
        return None
    ids = [row.id for row in rows]
    c = charge_items.c
    billed = await session.execute(
        update(charge_items)
        .where(c.id.in_(ids), c.status == "billable")
        .values(
            status="billed", invoice_id=invoice_id, version=c.version + 1, update_time=func.now()
        )
        .returning(c.id)
    )
    if len(billed.all()) != len(ids):
        raise Aborted(
            "a charge item was billed or cancelled by a concurrent request; try again",
            reason="CONCURRENT_CHANGE",
        )
    await session.execute(
        insert(invoice_lines),
        [
            {"invoice_id": invoice_id, "charge_item_id": ident, "position": position}
            for position, ident in enumerate(ids)
        ],
    )
    return invoice


@dataclass(frozen=True)
class InvoiceFilter:
    """The filters of ListInvoices, validated."""

    patient_id: uuid.UUID | None
    encounter_id: uuid.UUID | None
    status: str | None

    def fingerprint(self) -> str:
        return repr(("invoices", self.patient_id, self.encounter_id, self.status))


async def list_invoices(
    session: AsyncSession,
    where: InvoiceFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Invoices newest first, (create time, id) descending, after the keyset cursor."""
    i = invoices.c
    conditions: list[Any] = []
    if where.patient_id is not None:
        conditions.append(i.patient_id == where.patient_id)
    if where.encounter_id is not None:
        conditions.append(i.encounter_id == where.encounter_id)
    if where.status is not None:
        conditions.append(i.status == where.status)
    return await _newest_first(session, invoices, conditions, after, limit)


async def _locked_invoice(session: AsyncSession, invoice_id: uuid.UUID, etag: str) -> Row[Any]:
    current = await find_invoice(session, invoice_id, lock=True)
    if current is None:
        raise not_found(invoice_name(invoice_id))
    check_etag(etag, current.version)
    return current


async def issue_invoice(
    session: AsyncSession, invoice_id: uuid.UUID, etag: str
) -> tuple[Row[Any], bool]:
    """Issue a draft invoice (BALANCED at once when nothing is due): (invoice, whether changed)."""
    current = await _locked_invoice(session, invoice_id, etag)
    if current.status in ("issued", "balanced"):
        return current, False
    if current.status == "cancelled":
        raise refused("INVOICE_CANCELLED", "the invoice is cancelled")
    i = invoices.c
    statement = (
        update(invoices)
        .where(i.id == invoice_id)
        .values(
            status=case((i.total_minor <= 0, "balanced"), else_="issued"),
            issue_time=func.now(),
            version=i.version + 1,
            update_time=func.now(),
        )
        .returning(*invoices.c)
    )
    return (await session.execute(statement)).one(), True


async def cancel_invoice(
    session: AsyncSession, invoice_id: uuid.UUID, reason: str, etag: str
) -> tuple[Row[Any], bool]:
    """Cancel a draft or issued invoice without completed payments and release its charges:
    (invoice, whether changed)."""
    current = await _locked_invoice(session, invoice_id, etag)
    if current.status == "cancelled":
        return current, False
    if current.status == "balanced":
        raise refused("INVOICE_BALANCED", "the invoice is paid; refund its payments first")
    paid = await session.execute(
        select(payments.c.id)
        .where(payments.c.invoice_id == invoice_id, payments.c.status == "completed")
        .limit(1)
    )
    if paid.first() is not None:
        raise refused(
            "INVOICE_HAS_PAYMENTS", "the invoice has a completed payment; refund it first"
        )
    i = invoices.c
    row = (
        await session.execute(
            update(invoices)
            .where(i.id == invoice_id)
            .values(
                status="cancelled",
                cancel_reason=reason,
                version=i.version + 1,
                update_time=func.now(),
            )
            .returning(*invoices.c)
        )
    ).one()
    c = charge_items.c
    await session.execute(
        update(charge_items)
        .where(c.invoice_id == invoice_id, c.status == "billed")
        .values(status="billable", invoice_id=None, version=c.version + 1, update_time=func.now())
    )
    return row, True


async def patients_of(session: AsyncSession, invoice_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """`patients/{id}` of each invoice."""
    if not invoice_ids:
        return {}
    query = select(invoices.c.id, invoices.c.patient_id).where(invoices.c.id.in_(invoice_ids))
    return {row.id: f"patients/{row.patient_id}" for row in (await session.execute(query)).all()}


# --- payments ---------------------------------------------------------------------------------


async def payment_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The payment recorded by the RecordPayment call with this request id."""
    return await _one(session, payments, payments.c.create_request_id == request_id)


async def find_payment(
    session: AsyncSession, invoice_id: uuid.UUID, payment_id: uuid.UUID, *, lock: bool = False
) -> Row[Any] | None:
    """One payment of an invoice, or None."""
    p = payments.c
    return await _one(session, payments, p.id == payment_id, p.invoice_id == invoice_id, lock=lock)


async def refunds_of(
    session: AsyncSession, payment_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Row[Any]]]:
    """The refunds of each payment, oldest first."""
    found: dict[uuid.UUID, list[Row[Any]]] = {ident: [] for ident in payment_ids}
    if not payment_ids:
        return found
    query = (
        select(*refunds.c)
        .where(refunds.c.payment_id.in_(list(payment_ids)))
        .order_by(refunds.c.payment_id, refunds.c.refund_time, refunds.c.id)
    )
    for row in (await session.execute(query)).all():
        found[row.payment_id].append(row)
    return found


async def record_payment(
    session: AsyncSession,
    invoice_id: uuid.UUID,
    values: dict[str, Any],
    cashier_id: uuid.UUID | None,
    request: tuple[str, str] | None,
) -> tuple[Row[Any], str] | None:
    """Record a payment and count it towards its invoice: (the payment, `patients/{id}` of the
    invoice); None when its request id was used before. FAILED_PRECONDITION when the invoice is
    not issued or the amount exceeds the balance due (the transaction then rolls back the
    payment); an invoice that does not exist fails the payment's foreign key (IntegrityError,
    the caller's to tell from a replay)."""
    request_id = request[0] if request else None
    statement = insert(payments).values(
        id=uuid.uuid4(),
        invoice_id=invoice_id,
        status="completed",
        cashier_id=cashier_id,
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, payments.c.create_request_id)
    payment = (await session.execute(statement.returning(*payments.c))).first()
    if payment is None:
        return None
    i = invoices.c
    amount = values["amount_minor"]
    counted = await session.execute(
        update(invoices)
        .where(i.id == invoice_id, i.status == "issued", i.paid_minor + amount <= i.total_minor)
        .values(
            paid_minor=i.paid_minor + amount,
            status=case((i.paid_minor + amount >= i.total_minor, "balanced"), else_="issued"),
            version=i.version + 1,
            update_time=func.now(),
        )
        .returning(i.patient_id)
    )
    patient = counted.first()
    if patient is None:
        current = await find_invoice(session, invoice_id)
        if current is None:
            raise not_found(invoice_name(invoice_id))
        if current.status != "issued":
            raise refused(
                "INVOICE_NOT_ISSUED", f"the invoice is {current.status}", status=current.status
            )
        raise refused(
            "OVERPAYMENT",
            "the amount exceeds the invoice's balance due",
            balance_due=str(max(current.total_minor - current.paid_minor, 0)),
        )
    return payment, f"patients/{patient.patient_id}"


@dataclass(frozen=True)
class PaymentFilter:
    """The filters of ListPayments, validated."""

    invoice_id: uuid.UUID | None
    received_from: dt.datetime | None
    received_before: dt.datetime | None
    method: str | None
    cashier_id: uuid.UUID | None

    def fingerprint(self) -> str:
        return repr(
            (
                "payments",
                self.invoice_id,
                self.received_from,
                self.received_before,
                self.method,
                self.cashier_id,
            )
        )


async def list_payments(
    session: AsyncSession,
    where: PaymentFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Payments oldest first, (received time, id) ascending, after the keyset cursor."""
    p = payments.c
    conditions: list[Any] = []
    if where.invoice_id is not None:
        conditions.append(p.invoice_id == where.invoice_id)
    if where.received_from is not None:
        conditions.append(p.received_time >= where.received_from)
    if where.received_before is not None:
        conditions.append(p.received_time < where.received_before)
    if where.method is not None:
        conditions.append(p.method == where.method)
    if where.cashier_id is not None:
        conditions.append(p.cashier_id == where.cashier_id)
    if after is not None:
        conditions.append(
            tuple_(p.received_time, p.id) > tuple_(literal(after[0]), literal(after[1]))
        )
    query = (
        select(*payments.c)
        .where(and_(True, *conditions))
        .order_by(p.received_time, p.id)
        .limit(limit)
    )
    return list((await session.execute(query)).all())


@dataclass(frozen=True)
class Refunding:
    """One RefundPayment: the payment, how much (None: all that is left) and the rest."""

    invoice_id: uuid.UUID
    payment_id: uuid.UUID
    amount_minor: int | None
    reason: str
    refund_reference: str
    cashier_id: uuid.UUID | None
    request: tuple[str, str] | None


async def refund_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    """The refund made by the RefundPayment call with this request id."""
    return await _one(session, refunds, refunds.c.request_id == request_id)


async def refund(session: AsyncSession, ask: Refunding) -> tuple[Row[Any], bool]:
    """Give back (part of) a payment and add it to the invoice's balance due: (the payment,
    whether anything changed). A full refund of a refunded payment changes nothing; a partial
    refund whose request id was used before returns the payment (the caller checks the id)."""
    name = payment_name(ask.invoice_id, ask.payment_id)
    # The invoice first, then the payment (RecordPayment's order: no deadlock between them).
    if await find_invoice(session, ask.invoice_id, lock=True) is None:
        raise not_found(name)
    payment = await find_payment(session, ask.invoice_id, ask.payment_id, lock=True)
    if payment is None:
        raise not_found(name)
    left = payment.amount_minor - payment.refunded_minor
    amount = left if ask.amount_minor is None else ask.amount_minor
    if ask.amount_minor is None and left == 0:
        return payment, False
    if amount > left:
        raise FailedPrecondition(
            "the amount is more than what is left of the payment",
            reason="REFUND_EXCEEDS_PAYMENT",
            metadata={"refundable": str(left)},
        )
    request_id = ask.request[0] if ask.request else None
    statement = insert(refunds).values(
        id=uuid.uuid4(),
        payment_id=ask.payment_id,
        amount_minor=amount,
        reason=ask.reason,
        refund_reference=ask.refund_reference,
        cashier_id=ask.cashier_id,
        request_id=request_id,
        request_fingerprint=ask.request[1] if ask.request else None,
    )
    statement = skip_taken(statement, request_id, refunds.c.request_id)
    if (await session.execute(statement.returning(refunds.c.id))).first() is None:
        return payment, False
    p = payments.c
    changed = (
        await session.execute(
            update(payments)
            .where(p.id == ask.payment_id)
            .values(
                refunded_minor=p.refunded_minor + amount,
                status=case(
                    (p.refunded_minor + amount >= p.amount_minor, "refunded"), else_="completed"
                ),
            )
            .returning(*payments.c)
        )
    ).one()
    i = invoices.c
    await session.execute(
        update(invoices)
        .where(i.id == ask.invoice_id)
        .values(
            paid_minor=i.paid_minor - amount,
            status=case((i.status == "balanced", "issued"), else_=i.status),
            version=i.version + 1,
            update_time=func.now(),
        )
    )
    return changed, True


# --- balance and reconciliation ---------------------------------------------------------------


@dataclass(frozen=True)
class Balance:
    """What one patient owes, in minor units."""

    unbilled: int
    invoiced_due: int
    unpriced: int


async def balance(session: AsyncSession, patient_id: uuid.UUID) -> Balance:
    """The sums of GetPatientBalance."""
    c = charge_items.c
    charges = (
        await session.execute(
            select(
                func.coalesce(func.sum(c.total_minor).filter(c.status == "billable"), 0),
                func.count().filter(c.status == "planned"),
            ).where(c.patient_id == patient_id)
        )
    ).one()
    i = invoices.c
    due = (
        await session.execute(
            select(
                func.coalesce(func.sum(func.greatest(i.total_minor - i.paid_minor, 0)), 0)
            ).where(i.patient_id == patient_id, i.status == "issued")
        )
    ).scalar_one()
    return Balance(unbilled=int(charges[0]), invoiced_due=int(due), unpriced=int(charges[1]))


async def event_charges(session: AsyncSession, start: dt.datetime, end: dt.datetime) -> list[Any]:
    """The charge items from events (not credits, not aborted) occurring in [start, end)."""
    c = charge_items.c
    query = (
        select(c.id, c.source, c.code_system, c.code, c.code_display, c.status)
        .where(
            c.source != "",
            c.reverses_id.is_(None),
            c.status != "aborted",
            c.occurrence_time >= start,
            c.occurrence_time < end,
        )
        .order_by(c.source, c.create_time, c.id)
    )
    return list((await session.execute(query)).all())


async def charges_of_sources(session: AsyncSession, names: Sequence[str]) -> list[Any]:
    """The active charge items (not credits) of these sources, whenever they occurred."""
    if not names:
        return []
    c = charge_items.c
    # One array parameter, however many sources a month rendered (an IN list binds one
    # parameter each, and the driver takes at most 32,767).
    wanted = bindparam("sources", list(names), type_=ARRAY(Text))
    query = select(c.id, c.source, c.code_system, c.code, c.code_display, c.status).where(
        c.source == any_(wanted), c.reverses_id.is_(None), c.status != "aborted"
    )
    return list((await session.execute(query)).all())
