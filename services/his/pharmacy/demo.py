"""Demo formulary and stock for `his up --demo`, through the public API: common drugs of the
demo clinics (cardiology, general medicine, paediatrics), each with two lots in the hospital
pharmacy, the earlier-expiring one smaller (so first-expiry-first-out shows on the second
dispense).

Loaded as the pharmacist (`USER`), after iam's demo data (the pharmacy department). Every create
and delivery carries a request id derived from what it makes, so loading twice — the same day or
a later one — creates and adds nothing twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc

from his.common.v1 import types_pb2
from his.iam import demo as iam_demo
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his_client import HisClients

# Loaded as this demo staff member: the hospital pharmacist.
USER = "pharm.sato"

ATC = "http://www.whocc.no/atc"
SNOMED = "http://snomed.info/sct"
# Dose forms (SNOMED CT code → display).
TABLET = "385055001"
ORAL_SUSPENSION = "385024007"
FORMS = {TABLET: "Tablet", ORAL_SUSPENSION: "Oral suspension"}


@dataclass(frozen=True)
class Drug:
    """One demo formulary entry and how much of it the pharmacy holds."""

    atc: str
    substance: str
    display_name: str
    strength: float
    strength_unit: str
    price_fen: int
    stock: int
    form: str = TABLET
    dispense_unit: str = "{tablet}"


DRUGS = (
    Drug("C07AB07", "bisoprolol", "Bisoprolol 2.5 mg tablet", 2.5, "mg", 45, 600),
    Drug("C08CA01", "amlodipine", "Amlodipine 5 mg tablet", 5, "mg", 38, 900),
    Drug("C10AA05", "atorvastatin", "Atorvastatin 20 mg tablet", 20, "mg", 120, 900),
    Drug("C09AA05", "ramipril", "Ramipril 5 mg tablet", 5, "mg", 60, 600),
    Drug("B01AC06", "acetylsalicylic acid", "Aspirin 100 mg tablet", 100, "mg", 12, 1200),
    Drug("N02BE01", "paracetamol", "Paracetamol 500 mg tablet", 500, "mg", 8, 2000),
    Drug(
        "N02BE01",
        "paracetamol",
        "Paracetamol 24 mg/mL oral suspension",
        24,
        "mg/mL",
        3,
        5000,
        form=ORAL_SUSPENSION,
        dispense_unit="mL",
    ),
    Drug("J01CA04", "amoxicillin", "Amoxicillin 500 mg tablet", 500, "mg", 35, 800),
    Drug("A10BA02", "metformin", "Metformin 500 mg tablet", 500, "mg", 15, 1500),
)


async def load(his: HisClients) -> str:
    """Add the demo formulary and its stock; what was made, in one line."""
    names = await iam_demo.directory(his)
    pharmacy = names.departments[iam_demo.PHARMACY]
    this_year = dt.datetime.now(dt.UTC).year
    lots = 0
    for drug in DRUGS:
        key = f"demo-pharmacy-{drug.atc.lower()}-{drug.form}"
        medication = await _formulary_entry(his, drug, key)
        # Two lots: a small one expiring next year, the rest the year after (dates stay valid
        # for any load in this year).
        for year, quantity in ((this_year + 1, drug.stock // 5), (this_year + 2, drug.stock)):
            await his.pharmacy.ReceiveStock(
                pb.ReceiveStockRequest(
                    parent=medication.name,
                    location=pharmacy,
                    lot_number=f"{drug.atc}-{year}",
                    expiry_date=types_pb2.Date(year=year, month=6, day=30),
                    quantity=quantity,
                    request_id=f"{key}-lot-{year}",
                )
            )
            lots += 1
    return f"{len(DRUGS)} formulary medications with {lots} lots in the hospital pharmacy"


async def _formulary_entry(his: HisClients, drug: Drug, key: str) -> pb.Medication:
    """The drug's formulary entry: created by the demo, or the one already there for the same ATC
    code, form and strength (the formulary refuses a second; a pharmacist may have added it)."""
    try:
        return await his.pharmacy.CreateMedication(
            pb.CreateMedicationRequest(
                medication=pb.Medication(
                    code=types_pb2.Coding(system=ATC, code=drug.atc, display=drug.substance),
                    display_name=drug.display_name,
                    form=types_pb2.Coding(system=SNOMED, code=drug.form, display=FORMS[drug.form]),
                    strength=types_pb2.Quantity(value=drug.strength, unit=drug.strength_unit),
                    dispense_unit=drug.dispense_unit,
                    unit_price=types_pb2.Money(currency_code="CNY", amount_minor=drug.price_fen),
                ),
                request_id=key,
            )
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    found = await his.pharmacy.ListMedications(
        pb.ListMedicationsRequest(atc_code_prefix=drug.atc, page_size=500)
    )
    return next(
        m
        for m in found.medications
        if m.code.code == drug.atc
        and m.form.code == drug.form
        and (m.strength.value, m.strength.unit) == (drug.strength, drug.strength_unit)
    )
