"""Any PostgreSQL URL becomes an asyncpg URL; nothing else is accepted."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from his.runtime.database import async_url


def test_pgserver_unix_socket_url_keeps_its_host_directory() -> None:
    url = make_url(async_url("postgresql://postgres:@/postgres?host=/tmp/pg"))
    assert url.drivername == "postgresql+asyncpg"
    assert url.query["host"] == "/tmp/pg"
    assert url.database == "postgres"


def test_network_url_keeps_credentials() -> None:
    url = async_url("postgresql://his:secret@db.example:5432/his")
    assert url == "postgresql+asyncpg://his:secret@db.example:5432/his"


def test_non_postgresql_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        async_url("sqlite:///tmp/x.db")
