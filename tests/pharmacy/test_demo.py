"""The demo formulary: every drug with two lots in the demo pharmacy, the earlier-expiring one
dispensed first, and loading twice creates and adds nothing twice."""

from __future__ import annotations

from his.iam import demo as iam_demo
from his.orders.v1 import orders_service_pb2 as orders_pb
from his.pharmacy import demo
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.runtime.server import RunningService
from his_client import HisClients
from his_client.config import ClientConfig
from his_client.credentials import static_token
from tests.identity import DEMO_ADMINISTRATOR
from tests.pharmacy.helpers import PHARMACIST, PHARMACIST_TOKEN, Pharmacy, dispensing, prescribe


async def test_the_demo_stocks_the_pharmacy_once_and_dispenses_first_expiry_first(
    pharmacy: Pharmacy, pharmacy_service: RunningService, iam_service: RunningService
) -> None:
    addresses = {"iam": iam_service.address, "pharmacy": pharmacy_service.address}
    async with HisClients(
        ClientConfig(addresses=addresses), token=static_token(DEMO_ADMINISTRATOR)
    ) as admin:
        await iam_demo.load(admin)
    async with HisClients(
        ClientConfig(addresses=addresses), token=static_token(PHARMACIST_TOKEN)
    ) as his:
        first = await demo.load(his)
        again = await demo.load(his)
        location = (await iam_demo.directory(his)).departments[iam_demo.PHARMACY]
    assert (
        first
        == again
        == f"{len(demo.DRUGS)} formulary medications with 18 lots in the hospital pharmacy"
    )
    by_name: dict[str, pb.Medication] = {}
    for drug in demo.DRUGS:
        reply = await pharmacy.ListMedications(
            pb.ListMedicationsRequest(display_name_prefix=drug.display_name), metadata=PHARMACIST
        )
        found = [
            m
            for m in reply.medications
            if (m.code.code, m.form.code, m.strength.value, m.strength.unit)
            == (drug.atc, drug.form, drug.strength, drug.strength_unit)
        ]
        assert len(found) == 1, drug.display_name
        by_name[drug.display_name] = found[0]
    bisoprolol = by_name["Bisoprolol 2.5 mg tablet"]
    lots = await pharmacy.ListStockItems(
        pb.ListStockItemsRequest(parent=bisoprolol.name, location=location),
        metadata=PHARMACIST,
    )
    assert [item.quantity_on_hand for item in lots.stock_items] == [120, 600]
    order = await prescribe(pharmacy, bisoprolol.name, quantity=30)
    assert order.status == orders_pb.MEDICATION_REQUEST_STATUS_ACTIVE
    dispense = await pharmacy.DispenseMedication(
        dispensing(order.name, 30, location=location), metadata=PHARMACIST
    )
    assert dispense.stock_item == lots.stock_items[0].name
