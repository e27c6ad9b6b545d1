"""Fixtures of the scheduling tests: read access to the scheduling schema for invariant checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url


@pytest.fixture(scope="session")
async def scheduling_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to count rows behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()
