"""The audit schema migrates forward and back, and starts as an empty chain."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade, upgrade

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
    await _run(postgres.url, f'DROP DATABASE IF EXISTS "{_DATABASE}"')
    await _run(postgres.url, f'CREATE DATABASE "{_DATABASE}"')
    url = make_url(postgres.url).set(database=_DATABASE).render_as_string(hide_password=False)
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'audit'"

    await asyncio.to_thread(upgrade, "audit", url)
    assert {row[0] for row in await _run(url, tables)} == {
        "alembic_version",
        "events",
        "chain_head",
        "verify_checkpoint",
    }
    head = await _run(url, "SELECT id, last_sequence_number, last_hash FROM audit.chain_head")
    assert head == [(1, 0, bytes(32))]
    # No checkpoint yet: the row exists (updates lock it) but carries no signature.
    checkpoint = await _run(url, "SELECT id, sequence_number, mac FROM audit.verify_checkpoint")
    assert checkpoint == [(1, 0, b"")]

    await asyncio.to_thread(downgrade, "audit", url, "base")
    assert {row[0] for row in await _run(url, tables)} == {"alembic_version"}
    await asyncio.to_thread(upgrade, "audit", url)
    assert len(await _run(url, "SELECT * FROM audit.chain_head")) == 1
