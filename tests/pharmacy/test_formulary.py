"""CreateMedication, GetMedication, ListMedications and UpdateMedication: the formulary."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from his.common.v1 import types_pb2
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from tests.identity import ISSUER, metadata
from tests.pharmacy.helpers import (
    DOMAIN,
    PHARMACIST,
    Pharmacy,
    create_medication,
    medication,
    missing,
    request_id,
)
from tests.support import fails, invalid_in


async def test_a_pharmacist_adds_a_medication_that_clinicians_orders_and_billing_read(
    pharmacy: Pharmacy,
) -> None:
    made = await create_medication(pharmacy, atc="C09AA05", display_name="Ramipril 5 mg tablet")
    assert made.name.startswith("medications/")
    assert made.active
    assert made.etag == "1"
    assert made.code.code == "C09AA05"
    for token in (
        ISSUER.staff("DOCTOR"),
        ISSUER.staff("NURSE"),
        ISSUER.service("orders"),
        ISSUER.staff("PHARMACIST"),
        # The billing office prices the formulary's medications (its price list), so it reads them.
        ISSUER.staff("BILLING_CLERK"),
    ):
        got = await pharmacy.GetMedication(
            pb.GetMedicationRequest(name=made.name), metadata=metadata(token)
        )
        assert got == made


async def test_others_do_not_read_or_write_the_formulary(pharmacy: Pharmacy) -> None:
    made = await create_medication(pharmacy)
    for role in ("REGISTRAR", "LAB_TECHNICIAN", "AUDITOR"):
        failure = await fails(
            pharmacy.GetMedication(
                pb.GetMedicationRequest(name=made.name), metadata=metadata(ISSUER.staff(role))
            )
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED, role
    for token in (ISSUER.staff("DOCTOR"), ISSUER.staff("BILLING_CLERK"), ISSUER.service("orders")):
        failure = await fails(
            pharmacy.CreateMedication(
                pb.CreateMedicationRequest(medication=medication()), metadata=metadata(token)
            )
        )
        assert failure.code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_replayed_create_returns_the_first(pharmacy: Pharmacy) -> None:
    request = pb.CreateMedicationRequest(medication=medication(), request_id=request_id())
    first = await pharmacy.CreateMedication(request, metadata=PHARMACIST)
    assert await pharmacy.CreateMedication(request, metadata=PHARMACIST) == first
    other = pb.CreateMedicationRequest(medication=medication(), request_id=request.request_id)
    fields = await invalid_in(DOMAIN, pharmacy.CreateMedication(other, metadata=PHARMACIST))
    assert fields == ["request_id"]


async def test_the_same_drug_form_and_strength_exists_once(pharmacy: Pharmacy) -> None:
    first = medication()
    await pharmacy.CreateMedication(
        pb.CreateMedicationRequest(medication=first), metadata=PHARMACIST
    )
    failure = await fails(
        pharmacy.CreateMedication(pb.CreateMedicationRequest(medication=first), metadata=PHARMACIST)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MEDICATION_EXISTS")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code": types_pb2.Coding(system="http://www.whocc.no/atc", code="N02")}, "code.code"),
        ({"code": types_pb2.Coding(system="atc", code="N02BE01")}, "code.system"),
        ({"display_name": ""}, "display_name"),
        ({"form": types_pb2.Coding(code="385055001")}, "form.system"),
        ({"strength": types_pb2.Quantity(value=0, unit="mg")}, "strength.value"),
        ({"strength": types_pb2.Quantity(value=float("nan"), unit="mg")}, "strength.value"),
        ({"strength": types_pb2.Quantity(value=5, unit="")}, "strength.unit"),
        ({"dispense_unit": "a tablet"}, "dispense_unit"),
        (
            {"unit_price": types_pb2.Money(currency_code="cny", amount_minor=1)},
            "unit_price.currency_code",
        ),
        (
            {"unit_price": types_pb2.Money(currency_code="CNY", amount_minor=-1)},
            "unit_price.amount_minor",
        ),
    ],
)
async def test_a_bad_medication_names_the_field(
    pharmacy: Pharmacy, change: dict[str, object], field: str
) -> None:
    bad = medication()
    for key, value in change.items():
        if isinstance(value, str):
            setattr(bad, key, value)
        else:
            getattr(bad, key).CopyFrom(value)
    fields = await invalid_in(
        DOMAIN,
        pharmacy.CreateMedication(pb.CreateMedicationRequest(medication=bad), metadata=PHARMACIST),
    )
    assert f"medication.{field}" in fields


async def test_get_of_a_bad_or_missing_name(pharmacy: Pharmacy) -> None:
    assert await invalid_in(
        DOMAIN, pharmacy.GetMedication(pb.GetMedicationRequest(name="drugs/1"), metadata=PHARMACIST)
    ) == ["name"]
    failure = await fails(
        pharmacy.GetMedication(
            pb.GetMedicationRequest(name=missing("medications")), metadata=PHARMACIST
        )
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND


async def test_update_changes_the_masked_fields_and_checks_the_etag(pharmacy: Pharmacy) -> None:
    made = await create_medication(pharmacy, price=10)
    change = pb.Medication(
        name=made.name,
        display_name="Renamed",
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=12),
        etag=made.etag,
    )
    updated = await pharmacy.UpdateMedication(
        pb.UpdateMedicationRequest(
            medication=change, update_mask=FieldMask(paths=["display_name", "unit_price"])
        ),
        metadata=PHARMACIST,
    )
    assert (updated.display_name, updated.unit_price.amount_minor, updated.etag) == (
        "Renamed",
        12,
        "2",
    )
    assert updated.code == made.code
    stale = await fails(
        pharmacy.UpdateMedication(
            pb.UpdateMedicationRequest(
                medication=change, update_mask=FieldMask(paths=["display_name"])
            ),
            metadata=PHARMACIST,
        )
    )
    assert stale.code == grpc.StatusCode.ABORTED
    for paths, field in ((["code"], "update_mask"), ([], "update_mask")):
        fields = await invalid_in(
            DOMAIN,
            pharmacy.UpdateMedication(
                pb.UpdateMedicationRequest(
                    medication=pb.Medication(name=made.name), update_mask=FieldMask(paths=paths)
                ),
                metadata=PHARMACIST,
            ),
        )
        assert field in fields
    missing_one = await fails(
        pharmacy.UpdateMedication(
            pb.UpdateMedicationRequest(
                medication=pb.Medication(name=missing("medications"), active=True),
                update_mask=FieldMask(paths=["active"]),
            ),
            metadata=PHARMACIST,
        )
    )
    assert missing_one.code == grpc.StatusCode.NOT_FOUND


async def test_update_into_another_products_strength_already_exists(pharmacy: Pharmacy) -> None:
    first = await create_medication(pharmacy)
    second = await create_medication(pharmacy)
    failure = await fails(
        pharmacy.UpdateMedication(
            pb.UpdateMedicationRequest(
                medication=pb.Medication(name=second.name, strength=first.strength),
                update_mask=FieldMask(paths=["strength"]),
            ),
            metadata=PHARMACIST,
        )
    )
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS


async def test_list_filters_orders_and_pages(pharmacy: Pharmacy) -> None:
    marker = f"Zq{request_id()[-8:]}"
    names = []
    for index in range(5):
        made = await create_medication(
            pharmacy, atc="J01CA04", display_name=f"{marker} amoxicillin {4 - index}"
        )
        names.append(made.name)
    await pharmacy.UpdateMedication(
        pb.UpdateMedicationRequest(
            medication=pb.Medication(name=names[0], active=False),
            update_mask=FieldMask(paths=["active"]),
        ),
        metadata=PHARMACIST,
    )
    seen: list[str] = []
    token = ""
    while True:
        page = await pharmacy.ListMedications(
            pb.ListMedicationsRequest(
                display_name_prefix=marker.lower(), page_size=2, page_token=token
            ),
            metadata=PHARMACIST,
        )
        seen += [m.display_name for m in page.medications]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"{marker} amoxicillin {i}" for i in range(4)]
    everything = await pharmacy.ListMedications(
        pb.ListMedicationsRequest(display_name_prefix=marker, include_inactive=True),
        metadata=PHARMACIST,
    )
    assert len(everything.medications) == 5
    by_atc = await pharmacy.ListMedications(
        pb.ListMedicationsRequest(atc_code_prefix="J01C", display_name_prefix=marker),
        metadata=PHARMACIST,
    )
    assert len(by_atc.medications) == 4
    for request, field in (
        (pb.ListMedicationsRequest(page_size=-1), "page_size"),
        (pb.ListMedicationsRequest(atc_code_prefix="j01"), "atc_code_prefix"),
        (pb.ListMedicationsRequest(page_token="garbage"), "page_token"),
    ):
        fields = await invalid_in(DOMAIN, pharmacy.ListMedications(request, metadata=PHARMACIST))
        assert fields == [field]
