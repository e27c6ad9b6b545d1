"""Demo of the laboratory for `his up --demo`: the Clinical Laboratory's worklist, as its lab
technician sees it.

The test catalogue (the CBC and basic metabolic panels and thirteen single tests, with UCUM units
and reference ranges by sex and age) is seeded by the lab's migration 0001, so every start has it
with or without the demo. Lab orders reach the worklist only from the orders service (its
ServiceRequestChanged events); this loader reads what is there and changes nothing.
"""

from __future__ import annotations

from his.lab.v1 import lab_service_pb2 as pb
from his_client import HisClients

# Loaded as this demo staff member: the technician of the Clinical Laboratory.
USER = "lab.ivanova"


async def load(his: HisClients) -> str:
    """Read the laboratory's worklist; what it holds, in a few words."""
    orders = 0
    token = ""
    while True:
        page = await his.lab.ListLabOrders(pb.ListLabOrdersRequest(page_size=500, page_token=token))
        orders += len(page.service_requests)
        token = page.next_page_token
        if not token:
            break
    return f"lab worklist of {orders} active orders (test catalogue seeded by the lab migration)"
