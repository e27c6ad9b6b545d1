"""ReconcileCharges: what the source services rendered in a period against the charges billing
holds for it.

The sources are asked as billing itself (identity.as_service): the clerk asking for the report may
not read orders or dispenses, and what billing learns from the lists is only which resources were
rendered and their codes. Each List rpc has a period filter for it (appointments by arrival,
service requests by completion, dispenses by hand-over), backed by an index. Nothing remote is
asked with a transaction open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from his.base import identity
from his.billing import store
from his.billing.events import MEDICATION_SYSTEM
from his.billing.mapping import charge_item_name
from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his.runtime.database import Database
from his.scheduling.v1 import scheduling_service_pb2 as scheduling_pb
from his_client import HisClients

# The answer lists at most this many discrepancies (the counts are complete).
MAX_DISCREPANCIES = 1000
PAGE = 500
# Sources of these kinds come from events; other sources (manual charges) are not reconciled.
EVENT_SOURCES = ("appointments/", "serviceRequests/", "medicationDispenses/")
Kind = pb.ChargeDiscrepancy.Kind


@dataclass(frozen=True)
class Rendered:
    """One billable service a source service reports as rendered."""

    source: str
    code: types_pb2.Coding


async def _pages(
    call: Callable[[str], Awaitable[Any]], items: Callable[[Any], Any]
) -> AsyncIterator[Any]:
    token = ""
    while True:
        page = await call(token)
        for item in items(page):
            yield item
        token = page.next_page_token
        if not token:
            return


def _period(start: dt.datetime, end: dt.datetime) -> types_pb2.Period:
    period = types_pb2.Period()
    period.start_time.FromDatetime(start)
    period.end_time.FromDatetime(end)
    return period


async def _appointments(
    clients: HisClients, start: dt.datetime, end: dt.datetime
) -> list[Rendered]:
    """Checked-in appointments (ARRIVED, FULFILLED) that arrived in the period."""
    return [
        Rendered(appointment.name, appointment.service_type)
        async for appointment in _pages(
            lambda token: clients.scheduling.ListAppointments(
                scheduling_pb.ListAppointmentsRequest(
                    arrive_period=_period(start, end),
                    statuses=[
                        scheduling_pb.APPOINTMENT_STATUS_ARRIVED,
                        scheduling_pb.APPOINTMENT_STATUS_FULFILLED,
                    ],
                    page_size=PAGE,
                    page_token=token,
                )
            ),
            lambda page: page.appointments,
        )
    ]


async def _lab_orders(clients: HisClients, start: dt.datetime, end: dt.datetime) -> list[Rendered]:
    """Service requests completed in the period."""
    return [
        Rendered(order.name, order.code)
        async for order in _pages(
            lambda token: clients.orders.ListServiceRequests(
                orders_pb.ListServiceRequestsRequest(
                    statuses=[orders_pb.SERVICE_REQUEST_STATUS_COMPLETED],
                    complete_period=_period(start, end),
                    page_size=PAGE,
                    page_token=token,
                )
            ),
            lambda page: page.service_requests,
        )
    ]


async def _dispenses(clients: HisClients, start: dt.datetime, end: dt.datetime) -> list[Rendered]:
    """Dispenses handed over in the period."""
    found = []
    async for dispense in _pages(
        lambda token: clients.pharmacy.ListMedicationDispenses(
            pharmacy_pb.ListMedicationDispensesRequest(
                status=pharmacy_pb.MEDICATION_DISPENSE_STATUS_COMPLETED,
                handed_over_period=_period(start, end),
                page_size=PAGE,
                page_token=token,
            )
        ),
        lambda page: page.medication_dispenses,
    ):
        medication = dispense.medication.removeprefix("medications/")
        code = types_pb2.Coding(system=MEDICATION_SYSTEM, code=medication)
        found.append(Rendered(dispense.name, code))
    return found


def _coding(row: Any) -> types_pb2.Coding:
    return types_pb2.Coding(system=row.code_system, code=row.code, display=row.code_display)


async def reconcile(
    database: Database, clients: HisClients, start: dt.datetime, end: dt.datetime
) -> pb.ReconcileChargesResponse:
    """The report of ReconcileCharges for [start, end)."""
    with identity.as_service():
        found = await asyncio.gather(
            _appointments(clients, start, end),
            _lab_orders(clients, start, end),
            _dispenses(clients, start, end),
        )
    rendered = [item for kind in found for item in kind]
    names = {r.source for r in rendered}
    async with database.read() as session:
        in_period = await store.event_charges(session, start, end)
        of_rendered = await store.charges_of_sources(session, sorted(names))
    by_source: dict[str, list[Any]] = defaultdict(list)
    for row in of_rendered:
        by_source[row.source].append(row)
    missing, duplicated, unexpected, unpriced = [], [], [], []
    for item in sorted(rendered, key=lambda r: r.source):
        charges = by_source.get(item.source, [])
        if not charges:
            missing.append(
                pb.ChargeDiscrepancy(kind=Kind.KIND_MISSING, source=item.source, code=item.code)
            )
        elif len(charges) > 1:
            duplicated.append(_found(Kind.KIND_DUPLICATED, charges))
    strays: dict[str, list[Any]] = defaultdict(list)
    for row in in_period:
        if row.source not in names and row.source.startswith(EVENT_SOURCES):
            strays[row.source].append(row)
        if row.status == "planned":
            unpriced.append(_found(Kind.KIND_UNPRICED, [row]))
    for source in sorted(strays):
        unexpected.append(_found(Kind.KIND_UNEXPECTED, strays[source]))
        if len(strays[source]) > 1:
            duplicated.append(_found(Kind.KIND_DUPLICATED, strays[source]))
    every = [*missing, *duplicated, *unexpected, *unpriced]
    return pb.ReconcileChargesResponse(
        rendered=len(rendered),
        charge_items=len(in_period),
        missing=len(missing),
        duplicated=len(duplicated),
        discrepancies=every[:MAX_DISCREPANCIES],
    )


def _found(kind: Any, rows: list[Any]) -> pb.ChargeDiscrepancy:
    return pb.ChargeDiscrepancy(
        kind=kind,
        source=rows[0].source,
        code=_coding(rows[0]),
        charge_items=[charge_item_name(row.id) for row in rows],
    )
