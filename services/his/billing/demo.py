"""Demo of billing for `his up --demo`: the price list of the demo formulary, as the billing
office's clerk sets it.

The consultation fees of the clinics' service types and the laboratory tests are seeded by
billing's migration 0002 (stable codes, on every start with or without the demo). A medication is
billed by its formulary id, which the pharmacy assigns when the demo formulary is loaded: so this
loader lists the formulary (after pharmacy's demo) and prices each active medication at its
formulary price, in force from 2026-01-01. Every item carries a request id derived from the
medication, so loading twice creates nothing twice; a medication that already has a price (a
clerk set one) is left as it is. Charges of dispenses handed over before this ran were recorded
PLANNED and are priced now.
"""

from __future__ import annotations

import datetime as dt

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from his.billing.events import MEDICATION_SYSTEM
from his.billing.v1 import billing_service_pb2 as pb
from his.common.v1 import types_pb2
from his.pharmacy.v1 import pharmacy_service_pb2 as pharmacy_pb
from his_client import HisClients

# Loaded as this demo staff member: the billing office's clerk.
USER = "bill.garcia"

EFFECTIVE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# Already priced: by an earlier load under another clerk, or by hand.
_PRICED = {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION}


async def load(his: HisClients) -> str:
    """Price the demo formulary; what was priced, in one line."""
    since = Timestamp()
    since.FromDatetime(EFFECTIVE)
    priced = 0
    for medication in await _formulary(his):
        medication_id = medication.name.removeprefix("medications/")
        item = pb.TariffItem(
            code=types_pb2.Coding(
                system=MEDICATION_SYSTEM, code=medication_id, display=medication.display_name
            ),
            unit_price=medication.unit_price,
            effective_time=since,
        )
        try:
            await his.billing.CreateTariffItem(
                pb.CreateTariffItemRequest(
                    tariff_item=item, request_id=f"demo-billing-{medication_id}"
                )
            )
        except grpc.aio.AioRpcError as error:
            if error.code() not in _PRICED:
                raise
        priced += 1
    seeded = "consultation and laboratory prices seeded by the billing migration"
    return f"price list of {priced} formulary medications ({seeded})"


async def _formulary(his: HisClients) -> list[pharmacy_pb.Medication]:
    """Every active medication of the formulary, page by page."""
    found: list[pharmacy_pb.Medication] = []
    token = ""
    while True:
        page = await his.pharmacy.ListMedications(
            pharmacy_pb.ListMedicationsRequest(page_size=500, page_token=token)
        )
        found.extend(page.medications)
        token = page.next_page_token
        if not token:
            return found
