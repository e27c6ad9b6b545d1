"""The billing schema: the migrations build exactly tables.py and run back and forth; the
database itself refuses what the service never does (a payment beyond the invoice, a refund
beyond the payment, a second charge of one source and code)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from his.billing.tables import metadata
from his.runtime.embedded_pg import EmbeddedPostgres
from tests.billing.helpers import Billing, charge, issued, missing, pay
from tests.schema import downgraded_and_upgraded, migration_differences
from tests.support import fresh_database


async def test_migration_builds_what_tables_py_declares(billing_db: AsyncEngine) -> None:
    assert await migration_differences(billing_db, "billing", metadata) == []


async def test_the_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, "billing_schema", "billing")
    migrated, downgraded, upgraded = await downgraded_and_upgraded(url, "billing")
    assert migrated == {
        "alembic_version",
        "tariff_items",
        "charge_items",
        "invoices",
        "invoice_lines",
        "payments",
        "refunds",
        "sources",
        "outbox",
        "inbox",
    }
    assert downgraded == {"alembic_version"}
    assert "charge_items" in upgraded


async def _refused(engine: AsyncEngine, statement: str, constraint: str, **values: str) -> bool:
    async with engine.connect() as connection:
        try:
            await connection.execute(text(statement), values)
        except IntegrityError as error:
            return constraint in str(error)
        finally:
            await connection.rollback()
    return False


async def test_the_database_refuses_more_paid_or_refunded_than_due(
    billing: Billing, patient: str, billing_db: AsyncEngine
) -> None:
    made = await issued(billing, patient, 100)
    paid = await pay(billing, made.name, 60)
    invoice_id = made.name.removeprefix("invoices/")
    payment_id = paid.name.rsplit("/", 1)[-1]
    assert await _refused(
        billing_db,
        "UPDATE billing.invoices SET paid_minor = 101 WHERE id = :id",
        "paid_within_total",
        id=invoice_id,
    )
    assert await _refused(
        billing_db,
        "UPDATE billing.payments SET refunded_minor = 61 WHERE id = :id",
        "refunds_within_payment",
        id=payment_id,
    )


async def test_the_database_refuses_a_second_charge_of_one_source_and_code(
    billing: Billing, patient: str, billing_db: AsyncEngine
) -> None:
    item = await charge(billing, patient, source=missing("serviceRequests"))
    assert await _refused(
        billing_db,
        "INSERT INTO billing.charge_items (id, patient_id, code_system, code, quantity_value, "
        "quantity_unit, currency, unit_price_minor, total_minor, source, occurrence_time, "
        "status) SELECT gen_random_uuid(), patient_id, code_system, code, quantity_value, "
        "quantity_unit, currency, unit_price_minor, total_minor, source, occurrence_time, "
        "'billable' FROM billing.charge_items WHERE id = :id",
        "charge_items_one_per_source",
        id=item.name.removeprefix("chargeItems/"),
    )
