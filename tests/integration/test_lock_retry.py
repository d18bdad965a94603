"""Nothing is lost to a locked database (issue #11): a knock whose entry failed while
another connection held SQLite's write lock longer than the busy timeout, and a
moderator's command whose run failed the same way, are tried again in the running
process with backoff, and each is done and answered once after the lock, without a
restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import pytest
from sqlalchemy import select

from forum.storage import db as storage_db
from moderation.bot.models import AuditEntry
from tests.harness import (
    CHARTER_EN,
    CHARTER_FR,
    Forum,
    ForumStarter,
    eventually,
    is_membership,
    is_reply,
)

#: shorter than the lock the tests hold, so that the service's writes fail while it is held
BUSY_TIMEOUT_MS = 1000
#: the service's lease outlasts the lock (a lock longer than the lease makes it step down)
CONFIG = {"service": {"lease_seconds": 30}}


def _sqlite_path(forum: Forum) -> str:
    url = forum.ctx.db.url
    assert url.get_backend_name() == "sqlite", url
    assert url.database, url
    return url.database


def _logged(caplog: pytest.LogCaptureFixture, needle: str) -> bool:
    return any(needle in r.getMessage() for r in caplog.records)


@pytest.mark.homeserver
async def test_a_knock_during_a_database_lock_is_answered_after_it(
    start_forum: ForumStarter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The entry of a knock fails with "database is locked"; once the lock is released the
    person gets their DM and the charter question, once, with no restart."""
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
    forum = await start_forum("membership", config=CONFIG)
    path = _sqlite_path(forum)
    anna = await forum.user("anna")
    # the bot's start-up events handled first: their bookkeeping, held up by the lock,
    # would hold up the knock behind them (seen once: the entry never tried while locked)
    await forum.caught_up(forum.ctx.membership_gateway)
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        # in a thread: the service runs on this event loop, and a write of its own in
        # progress must be able to finish while the lock is waited for
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        began = time.monotonic()
        mark = anna.mark()
        await anna.knock(forum.rooms["space"], "Bonjour", via=forum.via)

        async def entry_failed() -> bool:
            return _logged(caplog, f"the entry of {anna.user_id}")

        await eventually(entry_failed, 20, "the entry tried while the database is locked")
        # the lock is held ~7 s (longer than the busy timeout, as a slow backup would)
        await asyncio.sleep(max(0.0, 7 - (time.monotonic() - began)))
        locker.execute("ROLLBACK")

        room = await forum.wait_dm(anna, timeout=25, after=mark)
        await forum.wait_bot_text(anna, room, CHARTER_FR, CHARTER_EN, timeout=20)
        assert forum.dm_invites(anna) == {room}
        person = await forum.person(anna.user_id)
        assert person is not None
        assert person.dm_room_id == room
        forum.assert_alive()
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()


def _lock_once_command_pending(path: str, target: str) -> tuple[sqlite3.Connection, int]:
    """Wait until a command is stored as pending (it runs at once), then take the write
    lock; returns the locking connection and how many bans of ``target`` were audited
    when the lock was taken (0: the command's run meets the lock)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute("SELECT 1 FROM moderation_state WHERE key LIKE 'command:%'").fetchone()
        if row is not None:
            break
        time.sleep(0.002)  # a thread polling the file, not the test waiting
    else:
        conn.close()
        raise AssertionError("no command stored as pending within 30 s")
    conn.execute("BEGIN EXCLUSIVE")
    audited = conn.execute(
        "SELECT count(*) FROM moderation_audit WHERE action = 'ban' AND target = ?", (target,)
    ).fetchone()[0]
    return conn, int(audited)


@pytest.mark.homeserver
async def test_a_command_during_a_database_lock_is_done_and_answered_once(
    start_forum: ForumStarter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A moderator's ``!ban`` whose run meets the lock (its audit record cannot be
    written): after the lock the ban is recorded and answered once, with no restart."""
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
    forum = await start_forum("moderation", config=CONFIG, moderator=True)
    path = _sqlite_path(forum)
    spam = await forum.member("spam")
    mod = forum.mod
    locking = asyncio.create_task(asyncio.to_thread(_lock_once_command_pending, path, spam.user_id))
    locker: sqlite3.Connection | None = None
    try:
        mark = mod.mark()
        event_id = await mod.send_text(forum.mgmt, f"!ban {spam.user_id} spam")
        locker, audited = await asyncio.wait_for(locking, 30)
        began = time.monotonic()
        assert audited == 0, "the lock came after the ban's audit record (the test raced)"

        async def command_failed() -> bool:
            return _logged(caplog, event_id)

        await eventually(command_failed, 20, "the command tried while the database is locked")
        await asyncio.sleep(max(0.0, 7 - (time.monotonic() - began)))
        locker.execute("ROLLBACK")

        reply = await mod.wait_for(is_reply(forum.mgmt, forum.bot_id, event_id), 25, after=mark)
        assert spam.user_id in str(reply["content"]["body"])
        banned = is_membership(forum.topic, spam.user_id, "ban")
        await spam.wait_for(lambda e: e["_section"].endswith("timeline") and banned(e), 20)

        async def audited_once() -> bool:
            async with forum.ctx.db.sessionmaker() as s:
                return len((await s.execute(_audit_bans(spam.user_id))).all()) >= 1

        await eventually(audited_once, 10, "the ban recorded in the audit log")
        replies = [e for e in mod.events if _replies(forum, event_id, e)]
        assert len(replies) == 1, replies
        async with forum.ctx.db.sessionmaker() as s:
            assert len((await s.execute(_audit_bans(spam.user_id))).all()) == 1
        forum.assert_alive()
    finally:
        if not locking.done():
            locking.cancel()
        if locker is not None:
            if locker.in_transaction:
                locker.execute("ROLLBACK")
            locker.close()


def _replies(forum: Forum, event_id: str, e: dict[str, Any]) -> bool:
    """Whether ``e`` is the moderation bot's answer to ``event_id``."""
    try:
        return is_reply(forum.mgmt, forum.bot_id, event_id)(e)
    except (KeyError, TypeError):
        return False


def _audit_bans(user_id: str) -> Any:
    return select(AuditEntry.id).where(AuditEntry.action == "ban", AuditEntry.target == user_id)
