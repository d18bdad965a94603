"""Database URLs: async drivers picked, passwords hidden (no database)."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from forum.storage import (
    Database,
    alembic_config,
    create_engine,
    normalize_url,
)

pytest_plugins = ["tests.storage_fixtures"]

FOUNDATION_TABLES = {"sync_tokens", "bot_sessions", "rooms", "processed_events", "outbox"}


def test_urls_pick_async_drivers_and_hide_passwords() -> None:
    pg = normalize_url("postgresql://forum:s3cret@db.example/forum")
    assert pg.drivername == "postgresql+asyncpg"
    assert normalize_url("postgres://u@h/d").drivername == "postgresql+asyncpg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    with pytest.raises(ValueError, match="mysql"):
        normalize_url("mysql://u@h/d")
    database = Database(create_engine(pg))
    assert "s3cret" not in str(database.url)
    assert "s3cret" not in repr(database)


def test_url_helper_builds_async_url() -> None:
    cfg = alembic_config(url="postgresql://u:p@h/d")
    assert make_url(cfg.get_main_option("sqlalchemy.url") or "").drivername == (
        "postgresql+asyncpg"
    )
