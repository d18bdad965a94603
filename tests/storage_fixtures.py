"""Database fixtures: one real database per test, on SQLite and on PostgreSQL.

Import from the root conftest with ``pytest_plugins = ["tests.storage_fixtures"]``.
Any test that takes ``db`` (or ``db_url``) runs twice: ``[sqlite]`` on a file in the
test's tmp dir and ``[postgresql]`` on a freshly created, randomly named database on
``$FORUM_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import make_url

from forum.storage import Database, create_database_if_missing, drop_database

POSTGRES_BASE_URL = os.environ.get(
    "FORUM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)

DB_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=DB_BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """The database back-end under test ("sqlite" or "postgresql")."""
    return str(request.param)


@pytest_asyncio.fixture(loop_scope="session")
async def db_url(db_backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database of ``db_backend``, removed after the test."""
    if db_backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'forum.db'}"
        yield url
        return
    name = f"forum_test_{secrets.token_hex(6)}"
    parsed = make_url(POSTGRES_BASE_URL).set(database=name)
    await create_database_if_missing(parsed)
    try:
        yield parsed.render_as_string(hide_password=False)
    finally:
        await drop_database(parsed)


@pytest_asyncio.fixture(loop_scope="session")
async def db(db_url: str) -> AsyncIterator[Database]:
    """An open, fully migrated :class:`Database` (SQLite and PostgreSQL)."""
    database = await Database.open(db_url)
    try:
        yield database
    finally:
        await database.close()
