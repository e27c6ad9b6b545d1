"""Queries of staff credentials, enrolment codes and failed staff logins (iam schema).

Each function runs inside the caller's session. Failures are counted under transaction-scoped
advisory locks on the username's key and the source (`lock_keys`, always in that order), as
patient sign-in counts its limits (his.iam.sign_in_store), so two replicas cannot both slip
under a limit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from his.iam.sign_in_store import Count
from his.iam.tables import staff_credentials, staff_enrolments, staff_login_failures

# How long a used, retired or expired enrolment is kept (for an incident's questions).
KEEP_ENDED = dt.timedelta(days=30)


async def lock_keys(session: AsyncSession, user_key: bytes, source: str) -> None:
    """Serialise, until the transaction ends, everything counted for this username and source."""
    statement = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
    await session.execute(statement, {"key": "his-iam-staff-login-user-" + user_key.hex()})
    await session.execute(statement, {"key": "his-iam-staff-login-source-" + source})


async def count_failures(
    session: AsyncSession,
    since: dt.datetime,
    *,
    user_key: bytes | None = None,
    source: str | None = None,
) -> Count:
    """The failures since `since` for this username, or from this source (one of them)."""
    c = staff_login_failures.c
    who = c.user_key == user_key if user_key is not None else c.source == source
    query = select(func.count(), func.min(c.at)).where(who, c.at > since)
    count, oldest = (await session.execute(query)).one()
    return Count(int(count), oldest)


async def add_failure(
    session: AsyncSession, user_key: bytes, source: str, at: dt.datetime, since: dt.datetime
) -> None:
    """Count one failed login or enrolment; forget failures no window counts any more."""
    await session.execute(
        staff_login_failures.insert().values(user_key=user_key, source=source, at=at)
    )
    await session.execute(delete(staff_login_failures).where(staff_login_failures.c.at < since))


async def forget_user_failures(session: AsyncSession, user_key: bytes) -> None:
    """A successful login clears its username's failures (not its source's: that is shared)."""
    await session.execute(
        delete(staff_login_failures).where(staff_login_failures.c.user_key == user_key)
    )


async def credential(session: AsyncSession, staff_id: uuid.UUID) -> Row[Any] | None:
    """A staff member's password hash and encrypted TOTP secret, or None (never enrolled)."""
    query = select(*staff_credentials.c).where(staff_credentials.c.staff_id == staff_id)
    return (await session.execute(query)).first()


async def set_credential(
    session: AsyncSession,
    staff_id: uuid.UUID,
    *,
    password_hash: str,
    totp_secret_enc: bytes,
    at: dt.datetime,
    assurance: str,
    enrolment_id: uuid.UUID | None = None,
) -> None:
    """Store (or replace) a staff member's credential, set by `enrolment_id` (None: directly)
    with the administrators behind it (`assurance`, his.iam.enrolment_rule). Replacing one needs
    an open approved two-administrator enrolment, and a credential claims no more than its
    enrolment gave (triggers of migrations 0008 and 0009)."""
    values = {
        "password_hash": password_hash,
        "totp_secret_enc": totp_secret_enc,
        "enrol_time": at,
        "enrolment_id": enrolment_id,
        "assurance": assurance,
    }
    statement = insert(staff_credentials).values(staff_id=staff_id, **values)
    await session.execute(statement.on_conflict_do_update(index_elements=["staff_id"], set_=values))


async def retire_open_enrolments(
    session: AsyncSession, staff_id: uuid.UUID, at: dt.datetime
) -> Sequence[Row[Any]]:
    """Void a staff member's open enrolment codes (a new code retires the previous one); the
    retired rows as they are now."""
    c = staff_enrolments.c
    retired = await session.execute(
        update(staff_enrolments)
        .where(c.staff_id == staff_id, c.used_time.is_(None), c.void_time.is_(None))
        .values(void_time=at)
        .returning(*staff_enrolments.c)
    )
    rows = retired.all()
    await session.execute(delete(staff_enrolments).where(c.expire_time < at - KEEP_ENDED))
    return rows


async def insert_enrolment(session: AsyncSession, **values: Any) -> Row[Any]:
    """Store one enrolment code (as its keyed hash); the row."""
    statement = staff_enrolments.insert().values(**values).returning(*staff_enrolments.c)
    return (await session.execute(statement)).one()


async def enrolment_for_update(
    session: AsyncSession, staff_id: uuid.UUID, enrolment_id: uuid.UUID
) -> Row[Any] | None:
    """One enrolment of the staff member, locked until the transaction ends; None if none."""
    c = staff_enrolments.c
    query = (
        select(*staff_enrolments.c)
        .where(c.id == enrolment_id, c.staff_id == staff_id)
        .with_for_update()
    )
    return (await session.execute(query)).first()


async def approve_enrolment(
    session: AsyncSession,
    enrolment_id: uuid.UUID,
    *,
    approved_by: str,
    approval_code_hash: bytes,
    at: dt.datetime,
) -> Row[Any]:
    """Record the second administrator's approval and the keyed hash of their half."""
    statement = (
        update(staff_enrolments)
        .where(staff_enrolments.c.id == enrolment_id)
        .values(approved_by=approved_by, approve_time=at, approval_code_hash=approval_code_hash)
        .returning(*staff_enrolments.c)
    )
    return (await session.execute(statement)).one()


async def open_enrolments_for_update(
    session: AsyncSession, staff_id: uuid.UUID
) -> Sequence[Row[Any]]:
    """A staff member's enrolments neither used nor retired, locked until the transaction ends
    (completions run one at a time, so a code enrols exactly once)."""
    c = staff_enrolments.c
    query = (
        select(*staff_enrolments.c)
        .where(c.staff_id == staff_id, c.used_time.is_(None), c.void_time.is_(None))
        .with_for_update()
    )
    return (await session.execute(query)).all()


async def mark_enrolment_used(
    session: AsyncSession, enrolment_id: uuid.UUID, at: dt.datetime
) -> Row[Any]:
    """Set an enrolment's used_time: it never works again. The row as it is now."""
    statement = (
        update(staff_enrolments)
        .where(staff_enrolments.c.id == enrolment_id)
        .values(used_time=at)
        .returning(*staff_enrolments.c)
    )
    return (await session.execute(statement)).one()
