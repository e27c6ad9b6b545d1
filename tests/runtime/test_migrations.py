"""Each service's migrations run forward and back, and racing replicas migrate once."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from his.runtime.embedded_pg import EmbeddedPostgres
from tests.schema import downgraded_and_upgraded


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
        migrated, downgraded, upgraded = await downgraded_and_upgraded(url, "patient")
        assert migrated == {
            "alembic_version",
            "patients",
            "patient_merges",
            "consents",
            "data_keys",
            "outbox",
            "inbox",
            "care_relationships",
        }
        assert downgraded == {"alembic_version"}
        assert "patients" in upgraded
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
