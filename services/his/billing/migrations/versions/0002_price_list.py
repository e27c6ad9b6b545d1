"""The hospital's price list of stable codes: the consultation fees of the appointment service
types the clinics book and the laboratory tests of the lab's catalogue (its migration 0001).
Medications are priced by the demo loader instead: their codes are ids the pharmacy assigns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERVICE_TYPES = "http://terminology.hl7.org/CodeSystem/service-type"
LOINC = "http://loinc.org"
# In force from the start of 2026 (before any demo visit), in CNY fen. Frozen as written: a later
# price is a new tariff item (CreateTariffItem), never an edit of these rows.
EFFECTIVE = "2026-01-01T00:00:00Z"
PRICES: tuple[tuple[str, str, str, int], ...] = (
    (SERVICE_TYPES, "17", "Cardiology", 5000),
    (SERVICE_TYPES, "124", "General Practice", 2500),
    (SERVICE_TYPES, "353", "Paediatrics", 3000),
    (LOINC, "58410-2", "CBC panel - Blood by Automated count", 4000),
    (LOINC, "51990-0", "Basic metabolic panel - Blood", 8000),
    (LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood", 1000),
    (LOINC, "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", 800),
    (LOINC, "6690-2", "Leukocytes [#/volume] in Blood by Automated count", 1000),
    (LOINC, "777-3", "Platelets [#/volume] in Blood by Automated count", 1000),
    (LOINC, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", 1200),
    (LOINC, "6299-2", "Urea nitrogen [Mass/volume] in Blood", 1500),
    (LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", 1500),
    (LOINC, "17861-6", "Calcium [Mass/volume] in Serum or Plasma", 1000),
    (LOINC, "2951-2", "Sodium [Moles/volume] in Serum or Plasma", 1200),
    (LOINC, "2823-3", "Potassium [Moles/volume] in Serum or Plasma", 1200),
    (LOINC, "2075-0", "Chloride [Moles/volume] in Serum or Plasma", 1200),
    (LOINC, "2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", 1200),
    (LOINC, "10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", 9000),
)


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def upgrade() -> None:
    rows = ",\n  ".join(
        f"(gen_random_uuid(), {_quoted(system)}, {_quoted(code)}, {_quoted(display)}, 'CNY', "
        f"{price}, TIMESTAMPTZ {_quoted(EFFECTIVE)})"
        for system, code, display, price in PRICES
    )
    op.execute(
        "INSERT INTO billing.tariff_items "
        "(id, code_system, code, code_display, currency, unit_price_minor, effective_time) "
        f"VALUES\n  {rows}\nON CONFLICT (code_system, code, effective_time) DO NOTHING"
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM billing.tariff_items WHERE create_request_id IS NULL "  # noqa: S608 (constants)
        f"AND effective_time = TIMESTAMPTZ {_quoted(EFFECTIVE)}"
    )
