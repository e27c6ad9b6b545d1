"""Queries of the lab schema. Each function runs inside the caller's session (a transaction for
writes)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from his.base.errors import Aborted, FailedPrecondition, NotFound
from his.lab.interpretation import Limits
from his.lab.mapping import LOINC, order_name
from his.lab.tables import (
    critical_results,
    lab_orders,
    lab_tests,
    observations,
    panel_items,
    reference_ranges,
    report_specimens,
    report_versions,
    reports,
    specimen_orders,
    specimens,
)
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.runtime.idempotency import skip_taken

ACTIVE = orders_pb.SERVICE_REQUEST_STATUS_ACTIVE


def not_found(name: str) -> NotFound:
    return NotFound(f"{name} not found", metadata={"name": name})


def check_etag(etag: str, version: int) -> None:
    """ABORTED unless `etag` is empty or the stored version."""
    if etag and etag != str(version):
        raise Aborted(
            "the record was changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"etag": str(version)},
        )


# --- the copy of lab orders --------------------------------------------------------------------


def _uuid(name: str, collection: str) -> uuid.UUID | None:
    """The id of a `<collection>/{id}` name the orders service sent; None when absent."""
    prefix = f"{collection}/"
    if not name.startswith(prefix):
        return None
    try:
        return uuid.UUID(name[len(prefix) :])
    except ValueError:
        return None


def _order_time(order: orders_pb.ServiceRequest) -> dt.datetime:
    """When the order was placed; the time it arrived if the event does not say (or says
    something no calendar has)."""
    try:
        if order.HasField("create_time"):
            return order.create_time.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        pass
    return dt.datetime.now(dt.UTC)


async def apply_order(
    session: AsyncSession, order: orders_pb.ServiceRequest, revision: int
) -> bool:
    """Keeps `order` as the laboratory's copy unless a newer revision is kept already; True if
    it was kept. An order without an id or patient is not a lab order the lab can act on."""
    order_id = _uuid(order.name, "serviceRequests")
    patient_id = _uuid(order.patient, "patients")
    if order_id is None or patient_id is None:
        return False
    values = {
        "id": order_id,
        "revision": revision,
        "patient_id": patient_id,
        "encounter_id": _uuid(order.encounter, "encounters"),
        "requester_id": _uuid(order.requester, "staff"),
        "laboratory_id": _uuid(order.performer, "departments"),
        "code_system": order.code.system,
        "code": order.code.code,
        "code_display": order.code.display,
        "priority": int(order.priority),
        "status": int(order.status),
        "body": order.SerializeToString(deterministic=True),
        "order_time": _order_time(order),
    }
    statement = insert(lab_orders).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[lab_orders.c.id],
        set_={k: statement.excluded[k] for k in values if k != "id"},
        where=lab_orders.c.revision < statement.excluded.revision,
    )
    result = await session.execute(statement.returning(lab_orders.c.id))
    return result.first() is not None


async def find_orders(
    session: AsyncSession, order_ids: Sequence[uuid.UUID], *, share: bool = False
) -> dict[uuid.UUID, Row[Any]]:
    """The copies of these orders that are kept, by id; `share` holds them against changes."""
    query = select(*lab_orders.c).where(lab_orders.c.id.in_(list(order_ids)))
    if share:
        query = query.with_for_update(read=True)
    return {row.id: row for row in (await session.execute(query)).all()}


def usable_orders(order_ids: Sequence[uuid.UUID], found: dict[uuid.UUID, Row[Any]]) -> None:
    """FAILED_PRECONDITION unless every order is known here and ACTIVE."""
    for order_id in order_ids:
        row = found.get(order_id)
        if row is None:
            raise FailedPrecondition(
                "the laboratory has not received this service request (yet)",
                reason="ORDER_NOT_KNOWN",
                metadata={"service_request": order_name(order_id)},
            )
        if row.status != ACTIVE:
            raise FailedPrecondition(
                "the service request is not active",
                reason="ORDER_NOT_ACTIVE",
                metadata={"service_request": order_name(order_id)},
            )


@dataclass(frozen=True)
class OrderFilter:
    """The filters of ListLabOrders (laboratories: those the caller may see; None = any)."""

    laboratories: tuple[uuid.UUID, ...] | None
    statuses: tuple[int, ...]
    priorities: tuple[int, ...]
    patient_id: uuid.UUID | None

    def fingerprint(self) -> str:
        labs = "*" if self.laboratories is None else ",".join(map(str, self.laboratories))
        return f"orders {labs} {self.statuses} {self.priorities} {self.patient_id}"


async def list_orders(
    session: AsyncSession, where: OrderFilter, *, after: Any, limit: int
) -> Sequence[Row[Any]]:
    """The worklist: most urgent first, then oldest first."""
    query = select(*lab_orders.c).where(lab_orders.c.status.in_(where.statuses))
    if where.laboratories is not None:
        query = query.where(lab_orders.c.laboratory_id.in_(where.laboratories))
    if where.priorities:
        query = query.where(lab_orders.c.priority.in_(where.priorities))
    if where.patient_id is not None:
        query = query.where(lab_orders.c.patient_id == where.patient_id)
    if after is not None:
        priority, at, ident = after
        query = query.where(
            or_(
                lab_orders.c.priority < priority,
                and_(
                    lab_orders.c.priority == priority,
                    tuple_(lab_orders.c.order_time, lab_orders.c.id) > tuple_(at, ident),
                ),
            )
        )
    query = query.order_by(
        lab_orders.c.priority.desc(), lab_orders.c.order_time, lab_orders.c.id
    ).limit(limit)
    return (await session.execute(query)).all()


# --- the catalogue -----------------------------------------------------------------------------


async def expected_tests(session: AsyncSession, order_code: str) -> list[Any]:
    """The tests (code, display, unit) the catalogue expects for an orderable code, in order."""
    query = (
        select(lab_tests.c.code, lab_tests.c.display, lab_tests.c.unit)
        .join(panel_items, panel_items.c.test_code == lab_tests.c.code)
        .where(panel_items.c.order_code == order_code)
        .order_by(panel_items.c.position)
    )
    return list((await session.execute(query)).all())


async def tests(session: AsyncSession, codes: Sequence[str]) -> dict[str, Row[Any]]:
    """The catalogue's tests among `codes`, by code."""
    query = select(*lab_tests.c).where(lab_tests.c.code.in_(list(codes)))
    return {row.code: row for row in (await session.execute(query)).all()}


async def ranges(session: AsyncSession, codes: Sequence[str]) -> dict[str, list[Limits]]:
    """Every reference range of the tests `codes`, by test code."""
    query = select(*reference_ranges.c).where(reference_ranges.c.test_code.in_(list(codes)))
    found: dict[str, list[Limits]] = defaultdict(list)
    for r in (await session.execute(query)).all():
        found[r.test_code].append(
            Limits(
                r.sex,
                r.age_from_days,
                r.age_to_days,
                r.low,
                r.high,
                r.critical_low,
                r.critical_high,
            )
        )
    return found


# --- specimens ---------------------------------------------------------------------------------


async def insert_specimen(
    session: AsyncSession,
    values: dict[str, Any],
    orders: Sequence[uuid.UUID],
    request: tuple[str, str] | None,
) -> Row[Any] | None:
    """A new specimen with its orders; None when its request id was used before."""
    request_id = request[0] if request else None
    statement = insert(specimens).values(
        id=uuid.uuid4(),
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, specimens.c.create_request_id)
    row = (await session.execute(statement.returning(*specimens.c))).first()
    if row is not None:
        await session.execute(
            insert(specimen_orders),
            [
                {"specimen_id": row.id, "service_request_id": o, "position": i}
                for i, o in enumerate(orders)
            ],
        )
    return row


async def specimen_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    query = select(*specimens.c).where(specimens.c.create_request_id == request_id)
    return (await session.execute(query)).first()


def _with_requester() -> Any:
    """Specimens with the ordering doctor of their first order (the policy's care relation)."""
    first_order = (
        select(lab_orders.c.requester_id)
        .join(specimen_orders, specimen_orders.c.service_request_id == lab_orders.c.id)
        .where(specimen_orders.c.specimen_id == specimens.c.id)
        .order_by(specimen_orders.c.position)
        .limit(1)
        .scalar_subquery()
    )
    return select(*specimens.c, first_order.label("requester_id"))


async def find_specimen(
    session: AsyncSession, specimen_id: uuid.UUID, *, lock: bool = False
) -> Row[Any] | None:
    query = _with_requester().where(specimens.c.id == specimen_id)
    if lock:
        query = query.with_for_update(of=specimens)
    return (await session.execute(query)).first()


async def orders_of_specimens(
    session: AsyncSession, specimen_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """The orders of each specimen, in the order given on create."""
    query = (
        select(specimen_orders.c.specimen_id, specimen_orders.c.service_request_id)
        .where(specimen_orders.c.specimen_id.in_(list(specimen_ids)))
        .order_by(specimen_orders.c.specimen_id, specimen_orders.c.position)
    )
    found: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for row in (await session.execute(query)).all():
        found[row.specimen_id].append(row.service_request_id)
    return found


@dataclass(frozen=True)
class SpecimenFilter:
    """The filters of ListSpecimens (laboratories: those the caller may see; None = any)."""

    laboratories: tuple[uuid.UUID, ...] | None
    patient_id: uuid.UUID | None
    order_id: uuid.UUID | None
    accession_id: str
    statuses: tuple[str, ...]

    def fingerprint(self) -> str:
        labs = "*" if self.laboratories is None else ",".join(map(str, self.laboratories))
        return (
            f"specimens {labs} {self.patient_id} {self.order_id} {self.accession_id!r} "
            f"{self.statuses}"
        )


async def list_specimens(
    session: AsyncSession, where: SpecimenFilter, *, after: Any, limit: int
) -> Sequence[Row[Any]]:
    """Specimens matching `where`, newest first."""
    query = _with_requester()
    if where.laboratories is not None:
        query = query.where(specimens.c.laboratory_id.in_(where.laboratories))
    if where.patient_id is not None:
        query = query.where(specimens.c.patient_id == where.patient_id)
    if where.order_id is not None:
        query = query.where(
            specimens.c.id.in_(
                select(specimen_orders.c.specimen_id).where(
                    specimen_orders.c.service_request_id == where.order_id
                )
            )
        )
    if where.accession_id:
        query = query.where(specimens.c.accession_id == where.accession_id)
    if where.statuses:
        query = query.where(specimens.c.status.in_(where.statuses))
    if after is not None:
        query = query.where(tuple_(specimens.c.create_time, specimens.c.id) < tuple_(*after))
    query = query.order_by(specimens.c.create_time.desc(), specimens.c.id.desc()).limit(limit)
    return (await session.execute(query)).all()


async def specimen_in_report(session: AsyncSession, specimen_id: uuid.UUID) -> bool:
    query = select(report_specimens.c.report_id).where(
        report_specimens.c.specimen_id == specimen_id
    )
    return (await session.execute(query.limit(1))).first() is not None


async def set_specimen_status(
    session: AsyncSession, specimen_id: uuid.UUID, values: dict[str, Any]
) -> Row[Any]:
    statement = (
        update(specimens)
        .where(specimens.c.id == specimen_id)
        .values(**values, version=specimens.c.version + 1, update_time=func.now())
        .returning(*specimens.c)
    )
    return (await session.execute(statement)).one()


# --- reports -----------------------------------------------------------------------------------


async def insert_report(
    session: AsyncSession,
    values: dict[str, Any],
    specimen_ids: Sequence[uuid.UUID],
    tests: Sequence[tuple[str, str]],
    request: tuple[str, str] | None,
) -> Row[Any] | None:
    """A new REGISTERED report with one REGISTERED result per test (code, display); None when
    its request id was used before."""
    request_id = request[0] if request else None
    statement = insert(reports).values(
        id=uuid.uuid4(),
        status="registered",
        create_request_id=request_id,
        create_request_fingerprint=request[1] if request else None,
        **values,
    )
    statement = skip_taken(statement, request_id, reports.c.create_request_id)
    row = (await session.execute(statement.returning(*reports.c))).first()
    if row is None:
        return None
    await session.execute(
        insert(report_specimens),
        [
            {"report_id": row.id, "specimen_id": s, "position": i}
            for i, s in enumerate(specimen_ids)
        ],
    )
    await session.execute(
        insert(observations),
        [
            {
                "id": uuid.uuid4(),
                "report_id": row.id,
                "position": i,
                "code_system": LOINC,
                "code": code,
                "code_display": display,
                "status": "registered",
            }
            for i, (code, display) in enumerate(tests)
        ],
    )
    return row


async def report_by_request(session: AsyncSession, request_id: str) -> Row[Any] | None:
    query = select(*reports.c).where(reports.c.create_request_id == request_id)
    return (await session.execute(query)).first()


async def find_report(
    session: AsyncSession, report_id: uuid.UUID, *, lock: bool = False
) -> Row[Any] | None:
    query = select(*reports.c).where(reports.c.id == report_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def details(
    session: AsyncSession, report_ids: Sequence[uuid.UUID]
) -> tuple[dict[uuid.UUID, list[uuid.UUID]], dict[uuid.UUID, list[Any]]]:
    """The specimens and the results of each report, in their order."""
    ids = list(report_ids)
    specimens_of: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    query = (
        select(report_specimens.c.report_id, report_specimens.c.specimen_id)
        .where(report_specimens.c.report_id.in_(ids))
        .order_by(report_specimens.c.report_id, report_specimens.c.position)
    )
    for row in (await session.execute(query)).all():
        specimens_of[row.report_id].append(row.specimen_id)
    results_of: dict[uuid.UUID, list[Any]] = defaultdict(list)
    query = (
        select(*observations.c)
        .where(observations.c.report_id.in_(ids))
        .order_by(observations.c.report_id, observations.c.position)
    )
    for row in (await session.execute(query)).all():
        results_of[row.report_id].append(row)
    return specimens_of, results_of


@dataclass(frozen=True)
class ReportFilter:
    """The filters of ListDiagnosticReports."""

    patient_id: uuid.UUID | None
    order_id: uuid.UUID | None
    statuses: tuple[str, ...]

    def fingerprint(self) -> str:
        return f"reports {self.patient_id} {self.order_id} {self.statuses}"


async def list_reports(
    session: AsyncSession, where: ReportFilter, *, after: Any, limit: int
) -> Sequence[Row[Any]]:
    """Reports matching `where`, newest first."""
    query = select(*reports.c)
    if where.patient_id is not None:
        query = query.where(reports.c.patient_id == where.patient_id)
    if where.order_id is not None:
        query = query.where(reports.c.service_request_id == where.order_id)
    if where.statuses:
        query = query.where(reports.c.status.in_(where.statuses))
    if after is not None:
        query = query.where(tuple_(reports.c.create_time, reports.c.id) < tuple_(*after))
    query = query.order_by(reports.c.create_time.desc(), reports.c.id.desc()).limit(limit)
    return (await session.execute(query)).all()


async def set_observation(session: AsyncSession, observation_id: uuid.UUID, **values: Any) -> None:
    await session.execute(
        update(observations)
        .where(observations.c.id == observation_id)
        .values(**values, update_time=func.now())
    )


async def add_observation(session: AsyncSession, report_id: uuid.UUID, **values: Any) -> None:
    position = select(func.coalesce(func.max(observations.c.position), -1) + 1).where(
        observations.c.report_id == report_id
    )
    await session.execute(
        insert(observations).values(
            id=uuid.uuid4(), report_id=report_id, position=position.scalar_subquery(), **values
        )
    )


async def set_report(session: AsyncSession, report_id: uuid.UUID, **values: Any) -> Row[Any]:
    """Changes a report: its etag version and revision count up."""
    statement = (
        update(reports)
        .where(reports.c.id == report_id)
        .values(
            **values,
            version=reports.c.version + 1,
            revision=reports.c.revision + 1,
            update_time=func.now(),
        )
        .returning(*reports.c)
    )
    return (await session.execute(statement)).one()


async def keep_version(
    session: AsyncSession, report_id: uuid.UUID, version: int, body: bytes, at: dt.datetime
) -> None:
    await session.execute(
        insert(report_versions).values(
            report_id=report_id, version=version, body=body, issue_time=at
        )
    )


async def versions(session: AsyncSession, report_id: uuid.UUID) -> list[bytes]:
    query = (
        select(report_versions.c.body)
        .where(report_versions.c.report_id == report_id)
        .order_by(report_versions.c.version)
    )
    return [row.body for row in (await session.execute(query)).all()]


# --- critical results --------------------------------------------------------------------------


async def add_critical(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(critical_results), [{"id": uuid.uuid4(), **r} for r in rows])


async def open_criticals(
    session: AsyncSession, requester_id: uuid.UUID, *, after: Any, limit: int
) -> Sequence[Row[Any]]:
    """The requester's unacknowledged critical results, oldest first."""
    query = select(*critical_results.c).where(
        critical_results.c.requester_id == requester_id,
        critical_results.c.acknowledge_time.is_(None),
    )
    if after is not None:
        query = query.where(
            tuple_(critical_results.c.issue_time, critical_results.c.id) > tuple_(*after)
        )
    query = query.order_by(critical_results.c.issue_time, critical_results.c.id).limit(limit)
    return (await session.execute(query)).all()


async def reports_by_id(
    session: AsyncSession, report_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Row[Any]]:
    query = select(*reports.c).where(reports.c.id.in_(list(report_ids)))
    return {row.id: row for row in (await session.execute(query)).all()}


async def criticals_of(
    session: AsyncSession, observation_id: uuid.UUID, *, lock: bool = False
) -> list[Row[Any]]:
    """Every critical release of one result, oldest first."""
    query = (
        select(*critical_results.c)
        .where(critical_results.c.observation_id == observation_id)
        .order_by(critical_results.c.report_version)
    )
    if lock:
        query = query.with_for_update()
    return list((await session.execute(query)).all())


async def acknowledge(session: AsyncSession, observation_id: uuid.UUID, by: uuid.UUID) -> None:
    """Acknowledges every open critical release of one result."""
    await session.execute(
        update(critical_results)
        .where(
            critical_results.c.observation_id == observation_id,
            critical_results.c.acknowledge_time.is_(None),
        )
        .values(acknowledge_time=func.now(), acknowledged_by=by)
    )
