"""Review rev17: how scheduling 0005's backfill scales (all rows loaded, one INSERT per row).
Prints the figures; asserts only that every row got its event."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
import uuid

from his.runtime.embedded_pg import EmbeddedPostgres
from his.runtime.migrations import downgrade
from tests.care_backfill import execute
from tests.support import fresh_database

ROWS = int(
    os.environ.get("REV17_ROWS", "20000")
)  # at 8343403: +25 MB, 42 s; streamed+batched: +5 MB, 14 s


async def test_backfill_memory_and_time(postgres: EmbeddedPostgres) -> None:
    url = await fresh_database(postgres.url, f"his_rev17_{uuid.uuid4().hex[:8]}", "scheduling")
    await asyncio.to_thread(downgrade, "scheduling", url, "0004")
    schedule, slot, ward = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    st = "'urn:test', 'consult'"
    await execute(
        url,
        "INSERT INTO scheduling.schedules (id, department_id, service_type_system, "
        f"service_type_code, horizon_start) VALUES (:s, :w, {st}, now())",
        s=schedule,
        w=ward,
    )
    await execute(
        url,
        "INSERT INTO scheduling.slots (id, schedule_id, department_id, service_type_system, "
        "service_type_code, start_time, end_time, capacity, booked_count) VALUES "
        f"(:id, :s, :w, {st}, now() + interval '2 hours', now() + interval '150 minutes', 1, 1)",
        id=slot,
        s=schedule,
        w=ward,
    )
    await execute(
        url,
        "INSERT INTO scheduling.appointments (id, patient_id, slot_id, department_id, "
        "service_type_system, service_type_code, service_type_display, start_time, end_time) "
        f"SELECT gen_random_uuid(), gen_random_uuid(), :slot, :w, {st}, 'General consultation', "
        "now() + make_interval(mins => g), now() + make_interval(mins => g + 20) "
        "FROM generate_series(1, :n) g",
        slot=slot,
        w=ward,
        n=ROWS,
    )
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    code = (
        "import sys; from his.runtime.migrations import upgrade; "
        "upgrade('scheduling', sys.argv[1], sys.argv[2]); "
        "print('REV17 child', sys.argv[2], "
        "[l for l in open('/proc/self/status') if l.startswith('VmHWM')])"
    )
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code, url, "0004"], check=True, capture_output=False
    )
    base_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, url, "0005"], check=True)
    took = time.perf_counter() - started
    after_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    before_kb = base_kb
    stored = await execute(url, "SELECT count(*) FROM scheduling.outbox")
    print(
        f"\nREV17 rows={ROWS} took={took:.1f}s child_maxrss_noop={before_kb // 1024}MiB "
        f"child_maxrss_backfill={after_kb // 1024}MiB (+{(after_kb - before_kb) // 1024}MiB)"
    )
    assert stored[0][0] == ROWS
