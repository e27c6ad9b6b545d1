"""Demo of the laboratory for `his up --demo`: the Clinical Laboratory's worklist, as its lab
technician sees it.

The test catalogue (the CBC and basic metabolic panels and thirteen single tests, with UCUM units
and reference ranges by sex and age) is seeded by the lab's migration 0001, so every start has it
with or without the demo. Lab orders reach the worklist only from the orders service (its
ServiceRequestChanged events, a moment after they are placed); this loader waits until the
worklist holds the laboratory's active orders that orders has (the demo's, loaded just before)
and changes nothing.
"""

from __future__ import annotations

import asyncio

from his.iam import demo as iam_demo
from his.lab.v1 import lab_service_pb2 as pb
from his.orders.v1 import orders_service_pb2 as orders_pb
from his_client import HisClients

# Loaded as this demo staff member: the technician of the Clinical Laboratory.
USER = "lab.ivanova"


# How long to wait for orders' relay to deliver the demo's lab orders.
WAIT_S = 10.0


async def load(his: HisClients) -> str:
    """Read the laboratory's worklist once it has caught up; what it holds, in a few words."""
    laboratory = (await iam_demo.directory(his)).departments[iam_demo.LABORATORY]
    placed = await his.orders.ListServiceRequests(
        orders_pb.ListServiceRequestsRequest(
            performer=laboratory,
            statuses=[orders_pb.SERVICE_REQUEST_STATUS_ACTIVE],
            page_size=500,
        )
    )
    expected = {order.name for order in placed.service_requests}
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        listed = await _worklist(his, laboratory)
        if expected <= listed or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    seeded = "test catalogue seeded by the lab migration"
    late = len(expected - listed)
    waiting = f", {late} of orders' still on their way" if late else ""
    return f"lab worklist of {len(listed)} active orders{waiting} ({seeded})"


async def _worklist(his: HisClients, laboratory: str) -> set[str]:
    names: set[str] = set()
    token = ""
    while True:
        page = await his.lab.ListLabOrders(
            pb.ListLabOrdersRequest(laboratory=laboratory, page_size=500, page_token=token)
        )
        names.update(order.name for order in page.service_requests)
        token = page.next_page_token
        if not token:
            return names
