"""`his up --demo`: the demo staff's roles and memberships approved by writing directly.

The demo data set is loaded through the public API (his.iam.demo) as the one bootstrap
administrator, so under the two-person rule its roles and memberships wait for a second
administrator, and a fresh demo hospital has none. This module BYPASSES THE TWO-PERSON RULE AND
ITS AUDIT: it approves those pending changes in iam's database directly, marked `rule =
'demo_seed'` with no decider (the schema's checks allow an approval without a second person only
under that mark). Only `his up --demo` calls it, with the local database it started; no rpc leads
here, and a hospital's real installation never loads the demo.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from his.iam import approvals
from his.iam.demo import STAFF
from his.iam.tables import access_changes, staff
from his.runtime.database import async_url


async def approve_demo_changes(database_url: str) -> int:
    """Approve the pending access changes of the demo staff (and of nobody else); how many."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    try:
        async with AsyncSession(engine) as session, session.begin():
            query = (
                select(access_changes.c.id)
                .join(staff, staff.c.id == access_changes.c.staff_id)
                .where(
                    access_changes.c.state == approvals.PENDING,
                    staff.c.username.in_([person.username for person in STAFF]),
                )
                .order_by(access_changes.c.create_time, access_changes.c.id)
            )
            pending = [row.id for row in (await session.execute(query)).all()]
            for change_id in pending:
                await approvals.approve(session, change_id, None, rule=approvals.DEMO_SEED)
        return len(pending)
    finally:
        await engine.dispose()
