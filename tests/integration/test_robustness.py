"""Nothing stops the service (issue #11): storage that never blocks, background work
that survives a failure, bounded per-person state, a schedule that catches up."""

from __future__ import annotations

import asyncio

import pytest

from forum.storage import Database, SyncTokens

pytest_plugins = ["tests.storage_fixtures"]


# ------------------------------------------------------------------ storage


async def test_a_read_session_does_not_block_a_writer(db: Database) -> None:
    """A unit of work that only reads (a plain session, its transaction still open) lets
    a writer commit at once (SQLite: WAL, deferred reads; PostgreSQL: MVCC)."""
    async with db.sessionmaker() as s, s.begin():
        await SyncTokens(s).set("@bot:x", "s0")
    async with db.sessionmaker() as reader:
        assert await SyncTokens(reader).get("@bot:x") == "s0"  # its transaction is open

        async def write() -> None:
            async with db.sessionmaker() as s, s.begin():
                await SyncTokens(s).set("@bot:x", "s1")

        await asyncio.wait_for(write(), timeout=2)
        # the reader still sees its own snapshot or the new value, never an error
        assert await SyncTokens(reader).get("@bot:x") in {"s0", "s1"}
    async with db.sessionmaker() as s:
        assert await SyncTokens(s).get("@bot:x") == "s1"


async def test_two_read_sessions_and_a_writer_at_once(db: Database) -> None:
    async with db.sessionmaker() as r1, db.sessionmaker() as r2:
        await SyncTokens(r1).get("@bot:x")
        await SyncTokens(r2).get("@bot:y")

        async def write(n: int) -> None:
            async with db.sessionmaker() as s, s.begin():
                await SyncTokens(s).set(f"@bot:{n}", f"s{n}")

        await asyncio.wait_for(asyncio.gather(*(write(n) for n in range(5))), timeout=3)
