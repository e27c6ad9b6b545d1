"""The demo price list: every formulary medication priced at its formulary price, once however
often the demo loads, and the charges of dispenses handed over before it priced by it."""

from __future__ import annotations

import datetime as dt

from his.billing import demo
from his.billing.v1 import billing_service_pb2 as pb
from his.runtime.server import RunningService
from his_client import HisClients
from his_client.config import ClientConfig
from his_client.credentials import static_token
from tests.billing.helpers import (
    CLERK,
    CLERK_TOKEN,
    MEDICATION,
    PHARMACY,
    Billing,
    charges_of,
    deliver,
    dispense_changed,
    now,
)
from tests.pharmacy.helpers import Pharmacy, create_medication


async def test_the_demo_prices_the_formulary_once_and_prices_what_waited(
    billing: Billing,
    pharmacy: Pharmacy,
    patient: str,
    billing_service: RunningService,
    pharmacy_service: RunningService,
) -> None:
    drug = await create_medication(pharmacy, price=37)
    medication_id = drug.name.removeprefix("medications/")
    waiting = dispense_changed(
        patient, drug.name, 3, revision=2, when=now() - dt.timedelta(hours=1)
    )
    await deliver(billing, PHARMACY, waiting)
    [planned] = await charges_of(billing, waiting.subject)
    assert planned.status == pb.CHARGE_ITEM_STATUS_PLANNED
    addresses = {"billing": billing_service.address, "pharmacy": pharmacy_service.address}
    async with HisClients(
        ClientConfig(addresses=addresses), token=static_token(CLERK_TOKEN)
    ) as his:
        first = await demo.load(his)
        again = await demo.load(his)
    assert first == again
    assert first.startswith("price list of ")
    items = await billing.ListTariffItems(
        pb.ListTariffItemsRequest(code_system=MEDICATION, code=medication_id), metadata=CLERK
    )
    assert [i.unit_price.amount_minor for i in items.tariff_items] == [37]
    [priced] = await charges_of(billing, waiting.subject)
    assert priced.status == pb.CHARGE_ITEM_STATUS_BILLABLE
    assert priced.total_price.amount_minor == 3 * 37
