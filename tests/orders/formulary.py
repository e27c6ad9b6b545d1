"""The formulary orders asks before prescribing, for tests: medications created in the session's
pharmacy service through its API, as a pharmacist."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask

from his.common.v1 import types_pb2
from his.pharmacy.v1 import pharmacy_service_pb2 as pb

ATC = "http://www.whocc.no/atc"
TABLET = "{tablet}"


@dataclass(frozen=True)
class Formulary:
    """The medications prescriptions may name: one active, one inactive."""

    active: pb.Medication
    inactive: pb.Medication
    other: pb.Medication


def medication(code: str, display: str, price_minor: int, *, active: bool = True) -> pb.Medication:
    """A formulary medication dispensed in tablets, of a strength the demo formulary does not
    stock (the session's pharmacy refuses a second entry of the same drug, form and strength)."""
    return pb.Medication(
        code=types_pb2.Coding(system=ATC, code=code, display=display),
        display_name=f"{display} tablet",
        form=types_pb2.Coding(system="http://snomed.info/sct", code="385055001", display="Tablet"),
        strength=types_pb2.Quantity(value=325, unit="mg"),
        dispense_unit=TABLET,
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=price_minor),
        active=active,
    )


def catalogue() -> Formulary:
    """The medications of the tests, not yet named."""
    return Formulary(
        active=medication("N02BE01", "Paracetamol", 35),
        inactive=medication("M01AE01", "Ibuprofen", 50, active=False),
        other=medication("C07AB07", "Bisoprolol", 120),
    )


async def in_pharmacy(stub: Any, pharmacist: Any) -> Formulary:
    """The medications created in the real pharmacy service by a pharmacist (`pharmacist.md`)."""
    made = catalogue()
    created = []
    for item in (made.active, made.inactive, made.other):
        new = await stub.CreateMedication(
            pb.CreateMedicationRequest(medication=item), metadata=pharmacist.md
        )
        if not item.active:
            new = await stub.UpdateMedication(
                pb.UpdateMedicationRequest(
                    medication=pb.Medication(name=new.name, active=False),
                    update_mask=FieldMask(paths=["active"]),
                ),
                metadata=pharmacist.md,
            )
        created.append(new)
    return Formulary(*created)
