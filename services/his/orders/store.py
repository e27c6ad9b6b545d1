"""Queries of the orders schema, inside the caller's session (a transaction for writes).

Both kinds of order share the same shape of life: created ACTIVE, moved through FHIR request
statuses, every change bumping `revision` (the etag, and the revision of the Changed event the
servicer stores with it).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Table, and_, case, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, FailedPrecondition, NotFound
from his.orders.mapping import total_quantity
from his.orders.tables import dispenses, medication_requests, service_requests
from his.runtime.idempotency import skip_taken

# Where each status may be reached from, per table (FHIR request status, as this service uses it).
TRANSITIONS: Mapping[str, Mapping[str, frozenset[str]]] = {
    "service_requests": {
        "revoked": frozenset({"active", "on_hold"}),
        "on_hold": frozenset({"active"}),
        "active": frozenset({"on_hold"}),
        "entered_in_error": frozenset({"active", "on_hold", "revoked"}),
        "completed": frozenset({"active"}),
    },
    "medication_requests": {
        "cancelled": frozenset({"active", "on_hold"}),
        "on_hold": frozenset({"active"}),
        "active": frozenset({"on_hold"}),
        "entered_in_error": frozenset({"active", "on_hold", "cancelled"}),
        "completed": frozenset({"active"}),
    },
}


def not_found(name: str) -> NotFound:
    return NotFound(f"{name} not found", metadata={"name": name})


def check_etag(etag: str, revision: int) -> None:
    """ABORTED unless `etag` is empty or the stored revision."""
    if etag and etag != str(revision):
        raise Aborted(
            "the order was changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(revision)},
        )


async def insert_order(
    session: AsyncSession, table: Table, values: dict[str, Any], request: tuple[str, str] | None
) -> Row[Any] | None:
    """A new ACTIVE order; None when its request id was used before (see order_by_request)."""
    request_id = request[0] if request else None
    statement = insert(table).values(
        id=uuid.uuid4(),
        status="active",
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, table.c.create_request_id)
    return (await session.execute(statement.returning(*table.c))).first()


async def order_by_request(session: AsyncSession, table: Table, request_id: str) -> Row[Any] | None:
    """The order created by the call with this request id."""
    query = select(*table.c).where(table.c.create_request_id == request_id)
    return (await session.execute(query)).first()


async def find_order(
    session: AsyncSession, table: Table, ident: uuid.UUID, *, lock: bool = False
) -> Row[Any] | None:
    """One order (locked for update with `lock`), or None."""
    query = select(*table.c).where(table.c.id == ident)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def get_order(session: AsyncSession, table: Table, ident: uuid.UUID, name: str) -> Row[Any]:
    """One order locked for update, or NOT_FOUND."""
    row = await find_order(session, table, ident, lock=True)
    if row is None:
        raise not_found(name)
    return row


async def _change(
    session: AsyncSession, table: Table, ident: uuid.UUID, values: dict[str, Any]
) -> Row[Any]:
    statement = (
        update(table)
        .where(table.c.id == ident)
        .values(**values, revision=table.c.revision + 1, update_time=func.now())
        .returning(*table.c)
    )
    return (await session.execute(statement)).one()


async def transition(
    session: AsyncSession,
    table: Table,
    current: Row[Any],
    to: str,
    *,
    etag: str,
    values: dict[str, Any] | None = None,
) -> Row[Any] | None:
    """Move a locked order to `to`; None when it is there already (a no-op whatever the etag)."""
    if current.status == to:
        return None
    check_etag(etag, current.revision)
    if current.status not in TRANSITIONS[table.name][to]:
        raise FailedPrecondition(
            f"an order that is {current.status} cannot become {to}",
            reason="ILLEGAL_TRANSITION",
            metadata={"status": current.status, "requested": to},
        )
    return await _change(session, table, current.id, {"status": to, **(values or {})})


async def update_fields(
    session: AsyncSession, table: Table, current: Row[Any], values: dict[str, Any], etag: str
) -> Row[Any]:
    """Change an ACTIVE order's fields (locked by the caller)."""
    check_etag(etag, current.revision)
    if current.status != "active":
        raise FailedPrecondition(
            f"only an active order can change; this one is {current.status}",
            reason="ORDER_NOT_ACTIVE",
            metadata={"status": current.status},
        )
    return await _change(session, table, current.id, values)


@dataclass(frozen=True)
class OrderFilter:
    """The filters of a List call, validated."""

    patient_id: uuid.UUID | None = None
    encounter_id: uuid.UUID | None = None
    performer_id: uuid.UUID | None = None
    statuses: tuple[str, ...] = ()
    # Completed during [start, end) (service requests' complete_period).
    completed: tuple[dt.datetime | None, dt.datetime | None] | None = None

    def fingerprint(self, table: Table) -> str:
        """A stable text of the filters, binding page tokens to them."""
        return repr(
            (
                table.name,
                self.patient_id,
                self.encounter_id,
                self.performer_id,
                self.statuses,
                self.completed,
            )
        )


async def list_orders(
    session: AsyncSession,
    table: Table,
    where: OrderFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row[Any]]:
    """Orders newest first, (create time, id) descending, after the keyset cursor."""
    c = table.c
    conditions: list[Any] = []
    if where.patient_id is not None:
        conditions.append(c.patient_id == where.patient_id)
    if where.encounter_id is not None:
        conditions.append(c.encounter_id == where.encounter_id)
    if where.performer_id is not None:
        conditions.append(c.performer_id == where.performer_id)
    if where.statuses:
        conditions.append(c.status.in_(where.statuses))
    else:
        conditions.append(c.status != "entered_in_error")
    if where.completed is not None:
        conditions += completed_in(table, *where.completed)
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


def completed_in(table: Table, start: dt.datetime | None, end: dt.datetime | None) -> list[Any]:
    """Conditions: a service request completed during [start, end). A completed service request
    never changes again (TRANSITIONS leads nowhere from "completed", and a second report finds it
    completed already), so the update time of a completed one is the time it was completed."""
    assert table is service_requests, "a completed prescription may still change"
    c = table.c
    conditions: list[Any] = [c.status == "completed"]
    if start is not None:
        conditions.append(c.update_time >= start)
    if end is not None:
        conditions.append(c.update_time < end)
    return conditions


# --- what the lab and the pharmacy report ----------------------------------------------------


async def complete_by_report(
    session: AsyncSession, order_id: uuid.UUID, report_id: uuid.UUID
) -> Row[Any] | None:
    """Complete an ACTIVE or ON_HOLD service request with its first report; None when nothing
    changes (unknown, completed already, revoked or entered in error: the result is recorded by
    the lab, the order stays as it is)."""
    current = await find_order(session, service_requests, order_id, lock=True)
    if current is None or current.status not in ("active", "on_hold"):
        return None
    return await _change(
        session,
        service_requests,
        order_id,
        {"status": "completed", "report_id": report_id, "status_reason": None},
    )


async def record_dispense(
    session: AsyncSession,
    *,
    dispense_id: uuid.UUID,
    order_id: uuid.UUID,
    quantity: int,
    status: str,
    revision: int,
) -> bool:
    """Keep the dispense as of `revision` unless a newer revision is kept; whether it changed."""
    statement = insert(dispenses).values(
        id=dispense_id,
        medication_request_id=order_id,
        quantity=quantity,
        status=status,
        revision=revision,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[dispenses.c.id],
        set_={
            "quantity": statement.excluded.quantity,
            "status": statement.excluded.status,
            "revision": statement.excluded.revision,
            "update_time": func.now(),
        },
        where=dispenses.c.revision < statement.excluded.revision,
    )
    return (await session.execute(statement.returning(dispenses.c.id))).first() is not None


async def recount(session: AsyncSession, order_id: uuid.UUID) -> Row[Any] | None:
    """Sum a prescription's dispenses again; complete it once the handed-over quantity reaches
    what it allows. The changed row, or None when the prescription is unknown or unchanged."""
    current = await find_order(session, medication_requests, order_id, lock=True)
    if current is None:
        return None
    d = dispenses.c
    sums = (
        await session.execute(
            select(
                func.coalesce(
                    func.sum(case((d.status.in_(("in_progress", "completed")), d.quantity))), 0
                ),
                func.coalesce(func.sum(case((d.status == "completed", d.quantity))), 0),
            ).where(d.medication_request_id == order_id)
        )
    ).one()
    dispensed, handed_over = float(sums[0]), float(sums[1])
    values: dict[str, Any] = {}
    if (dispensed, handed_over) != (current.dispensed, current.handed_over):
        values.update(dispensed=dispensed, handed_over=handed_over)
    if current.status == "active" and handed_over >= total_quantity(current):
        values["status"] = "completed"
    if not values:
        return None
    return await _change(session, medication_requests, order_id, values)
