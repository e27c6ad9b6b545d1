"""Fixtures of the scheduling tests: read access to the scheduling schema for invariant checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from his.runtime.server import RunningService


@pytest.fixture(scope="session")
async def scheduling_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to count rows behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
def states_copied(
    patient_service: RunningService, scheduling_service: RunningService
) -> Callable[[], Awaitable[None]]:
    """Wait until the patient service delivered every state change so far to scheduling's copy
    (bookings read the copy; a change reaches it after the relay's delay). The session's
    scheduling service receives them, into the table every scheduling server of the session
    reads."""
    relay = patient_service.relay
    assert relay is not None
    return lambda: relay.drain(20, ("scheduling",))
