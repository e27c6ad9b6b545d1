"""Queries of patient sign-ins and of the attempts their rate limits count (iam schema).

Each function runs inside the caller's session. The limits are counted under transaction-scoped
advisory locks on the phone number and the source (`lock_keys`, always in that order), so two
replicas serving the same number at once cannot both slip under a limit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from his.iam.tables import patient_sign_ins, sign_in_attempts

_SIGN_IN = tuple(patient_sign_ins.c)
# How long an ended sign-in is kept (for an incident's questions) before it is deleted.
KEEP_ENDED = dt.timedelta(days=1)


async def now(session: AsyncSession) -> dt.datetime:
    """The database's clock (every replica shares it): the transaction's start."""
    return (await session.execute(select(func.now()))).scalar_one()


async def lock_keys(session: AsyncSession, phone_key: bytes, source: str) -> None:
    """Serialise, until the transaction ends, everything counted for this number and source."""
    statement = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
    await session.execute(statement, {"key": "his-iam-sign-in-phone-" + phone_key.hex()})
    await session.execute(statement, {"key": "his-iam-sign-in-source-" + source})


@dataclass(frozen=True)
class Count:
    """How many attempts of a kind a number or source made in the window, and the oldest."""

    count: int
    oldest: dt.datetime | None


def retry_after(
    now: dt.datetime, window: dt.timedelta, counts: tuple[tuple[Count, int], ...]
) -> float | None:
    """Seconds until every count is under its limit again; None when all are under now."""
    waits = [
        (counted.oldest + window - now).total_seconds()
        for counted, limit in counts
        if counted.count >= limit and counted.oldest is not None
    ]
    return max(waits) if waits else None


async def count_attempts(
    session: AsyncSession,
    kind: str,
    since: dt.datetime,
    *,
    phone_key: bytes | None = None,
    source: str | None = None,
) -> Count:
    """The `kind` attempts since `since` for this number, or from this source (one of them)."""
    c = sign_in_attempts.c
    who = c.phone_key == phone_key if phone_key is not None else c.source == source
    query = select(func.count(), func.min(c.at)).where(c.kind == kind, who, c.at > since)
    count, oldest = (await session.execute(query)).one()
    return Count(int(count), oldest)


async def add_attempt(
    session: AsyncSession, kind: str, phone_key: bytes, source: str, at: dt.datetime
) -> None:
    """Count one start or one wrong code."""
    await session.execute(
        sign_in_attempts.insert().values(kind=kind, phone_key=phone_key, source=source, at=at)
    )


async def forget_old(session: AsyncSession, *, attempts_before: dt.datetime) -> None:
    """Delete attempts no window counts any more, and sign-ins long ended."""
    await session.execute(delete(sign_in_attempts).where(sign_in_attempts.c.at < attempts_before))
    await session.execute(
        delete(patient_sign_ins).where(
            patient_sign_ins.c.expire_time < attempts_before - KEEP_ENDED
        )
    )


async def retire_open(session: AsyncSession, phone_key: bytes, at: dt.datetime) -> None:
    """Void the number's sign-ins still open: asking again retires the previous code."""
    c = patient_sign_ins.c
    await session.execute(
        update(patient_sign_ins)
        .where(c.phone_key == phone_key, c.used_time.is_(None), c.void_time.is_(None))
        .values(void_time=at)
    )


async def insert_sign_in(session: AsyncSession, **values: Any) -> None:
    """Store one sign-in."""
    await session.execute(patient_sign_ins.insert().values(**values))


async def sign_in_for_update(session: AsyncSession, sign_in_id: uuid.UUID) -> Row[Any] | None:
    """One sign-in, locked until the transaction ends (completions of it run one at a time)."""
    query = select(*_SIGN_IN).where(patient_sign_ins.c.id == sign_in_id).with_for_update()
    return (await session.execute(query)).first()


async def mark(session: AsyncSession, sign_in_id: uuid.UUID, **values: Any) -> None:
    """Set a sign-in's used_time or void_time."""
    await session.execute(
        update(patient_sign_ins).where(patient_sign_ins.c.id == sign_in_id).values(**values)
    )
