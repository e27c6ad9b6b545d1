"""Fixtures of the patient tests: direct read access to the patient schema for invariant checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from his.runtime.database import async_url
from his.runtime.fieldcrypt import FieldCipher
from tests.conftest import service_config


@pytest.fixture(scope="session")
async def patient_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session database, used only to count rows behind the API's back."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def patient_cipher() -> FieldCipher:
    """The patient schema's cipher with the session service's keys (blind indexes, decryption)."""
    return FieldCipher.from_config(service_config("patient").crypto, "patient")
