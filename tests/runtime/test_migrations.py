"""Each service's migrations run forward and back, and racing replicas migrate once."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from his.runtime.database import async_url
from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade, upgrade


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'patient'"
                )
            )
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def test_patient_schema_upgrades_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    url = await asyncio.to_thread(pg.start)
    try:
        # Four replicas starting at once (own processes): the advisory lock serialises them.
        env = {**os.environ, "HIS_DATABASE_URL": url}
        replicas = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "his.cli",
                "migrate",
                "patient",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(4)
        ]
        results = await asyncio.gather(*(replica.communicate() for replica in replicas))
        assert [replica.returncode for replica in replicas] == [0, 0, 0, 0], results
        assert await _tables(url) == {
            "alembic_version",
            "patients",
            "patient_merges",
            "consents",
            "data_keys",
            "outbox",
        }
        await asyncio.to_thread(downgrade, "patient", url, "base")
        assert await _tables(url) == {"alembic_version"}
        await asyncio.to_thread(upgrade, "patient", url)
        assert "patients" in await _tables(url)
    finally:
        await asyncio.to_thread(pg.stop)


@pytest.mark.parametrize(
    "service", ["patient", "scheduling", "iam", "audit", "emr", "orders", "lab", "pharmacy"]
)
def test_the_head_start_up_reads_from_the_files_is_alembics(service: str) -> None:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from his.runtime.migrations import alembic_config  # noqa: PLC0415
    from his.runtime.schema_version import head_revision  # noqa: PLC0415

    script = ScriptDirectory.from_config(alembic_config(service, "postgresql://unused/x"))
    assert head_revision(service) == script.get_current_head()
