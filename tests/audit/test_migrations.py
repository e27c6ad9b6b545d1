"""The audit schema migrates forward and back, and starts as an empty chain."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from tests.schema import downgraded_and_upgraded
from tests.support import fresh_database

_DATABASE = "his_audit_migrations"


async def _run(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(async_url(url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text(sql))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def test_audit_schema_upgrades_downgrades_and_upgrades_again(
    postgres: EmbeddedPostgres,
) -> None:
    url = await fresh_database(postgres.url, _DATABASE, "audit")
    head = await _run(url, "SELECT id, last_sequence_number, last_hash FROM audit.chain_head")
    assert head == [(1, 0, bytes(32))]
    # No checkpoint yet: the row exists (updates lock it) but carries no signature.
    checkpoint = await _run(url, "SELECT id, sequence_number, mac FROM audit.verify_checkpoint")
    assert checkpoint == [(1, 0, b"")]

    migrated, downgraded, _ = await downgraded_and_upgraded(url, "audit")
    assert migrated == {
        "alembic_version",
        "events",
        "chain_head",
        "verify_checkpoint",
        "chain_checkpoints",
        "checkpoint_requests",
    }
    assert downgraded == {"alembic_version"}
    assert len(await _run(url, "SELECT * FROM audit.chain_head")) == 1
