"""Nothing stops the service (issue #11): storage that never blocks, background work
that survives a failure, bounded per-person state, a schedule that catches up."""

from __future__ import annotations

import asyncio
import copy
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from bridge.repositories import DigestStore
from bridge.service import SCHEDULE_STATE_KEY
from bridge.weeks import previous_week
from forum.errors import Forbidden
from forum.events import Message
from forum.gateway import Gateway
from forum.homeserver import EmbeddedHomeserver
from forum.storage import Database, SyncTokens
from forum.storage import db as storage_db
from tests.harness import (
    BASE_CONFIG,
    CHARTER_FR,
    PUBLICATION_Q,
    ForumStarter,
    TestClock,
    config_dir_with_charters,
    eventually,
    is_membership,
)
from tests.matrix_user import TestUser

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


# ------------------------------------------------------------------ background work


@pytest.mark.homeserver
async def test_a_member_who_kicked_the_bot_does_not_stop_the_grace_period(
    start_forum: ForumStarter, make_user: Any, tmp_path: Path
) -> None:
    """A new charter, grace 0 days: the member who kicked the bot from the DM they opened
    cannot be asked; the others are asked and muted on time all the same."""
    config_dir = config_dir_with_charters(tmp_path / "config", versions=(1, 2))
    home = tmp_path / "home"
    first = await start_forum("membership", home=home, config_dir=config_dir)
    data = first.data
    try:
        # "aaa" sorts first: on main the loop stopped on them before reaching the other
        kicker = await make_user("aaa-kicker")
        other = await make_user("zzz-stays")
        # door 3, in a DM where the bot has no power (Element's preset gives it 100)
        kicker_dm = await kicker.create_room(
            is_direct=True, invite=[first.membership_bot_id], preset="private_chat"
        )
        await first.wait_bot_text(kicker, kicker_dm, "Which language")
        mark = kicker.mark()
        await kicker.send_text(kicker_dm, "Bonjour, je voudrais entrer")
        await first.wait_bot_text(kicker, kicker_dm, CHARTER_FR, after=mark)
        mark = kicker.mark()
        await kicker.send_text(kicker_dm, "oui")
        await first.wait_bot_text(kicker, kicker_dm, *PUBLICATION_Q, after=mark)
        await kicker.send_text(kicker_dm, "non")
        await first.wait_invites(kicker)
        other_dm = await first.admit(other)
        # the DM's creator puts the bot out of it
        await kicker.request(
            "POST",
            f"/_matrix/client/v3/rooms/{quote(kicker_dm, safe='')}/kick",
            {"user_id": first.membership_bot_id, "reason": "plus de messages"},
        )
        await kicker.wait_for(is_membership(kicker_dm, first.membership_bot_id, "leave"))
    finally:
        await start_forum.stop(first)

    v2 = copy.deepcopy(data)
    v2["membership"]["charter"].update({"version": 2, "grace_days": 0, "on_expiry": "mute"})
    second = await start_forum("membership", data=v2, home=home, config_dir=config_dir)
    await second.wait_bot_text(other, other_dm, "La charte a changé", timeout=30)
    await second.wait_bot_text(other, other_dm, "ne pouvez plus écrire", timeout=30)
    row = await second.person(other.user_id)
    assert row is not None
    assert row.muted
    second.assert_alive()


@pytest.mark.homeserver
async def test_a_failed_expiry_message_does_not_make_other_mutes_permanent(
    start_forum: ForumStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notice of one expired mute is refused: the mute is lifted all the same, and so
    is the next one, at its time."""
    forum = await start_forum("moderation", moderator=True, moderator_joins="*")
    first = await forum.member("first")
    second = await forum.member("second")
    management = forum.bot.management
    real_say_about = management.say_about

    async def say_about(user: str, body: str) -> None:
        if user == first.user_id:  # the homeserver refuses this one message
            raise Forbidden("M_FORBIDDEN: injected refusal", status=403, errcode="M_FORBIDDEN")
        await real_say_about(user, body)

    monkeypatch.setattr(management, "say_about", say_about)
    await forum.command(f"!mute {first.user_id} 2s premier")
    await forum.command(f"!mute {second.user_id} 6s second")

    async def lifted(user: TestUser) -> bool:
        return all([await forum.power(room, user.user_id) == 0 for room in forum.forum_rooms])

    await eventually(lambda: lifted(first), 30, "the first mute lifted")
    await eventually(lambda: lifted(second), 30, "the second mute lifted after a failed notice")
    await forum.mod.wait_for_text(forum.mgmt, "expiré", timeout=20)


# ------------------------------------------------------------------ the schedule


#: published at the scheduled time without a moderator's release (the schedule's timing is
#: tested here; the moderators' preview in test_digest_preview)
UNREVIEWED = {"digest": {"require_release": False, "preview_hours": 0}}


@pytest.mark.homeserver
async def test_a_weekly_digest_missed_while_down_is_built_once_at_start(
    start_forum: ForumStarter, make_user: Any, tmp_path: Path
) -> None:
    mod = await make_user("mod")
    schedule = BASE_CONFIG["digest"]["schedule"]
    tz = ZoneInfo(BASE_CONFIG["digest"]["timezone"])
    fire = croniter(schedule, datetime.now(tz)).get_next(datetime)
    home = tmp_path / "home"
    # running an hour before the scheduled time, then down when it comes
    first = await start_forum(
        "digest",
        moderator=mod,
        moderator_joins=(),
        home=home,
        clock=TestClock.just_before(fire, by=timedelta(hours=1)),
        schedules=True,
        config=UNREVIEWED,
    )
    data = first.data
    announcements = first.rooms["announcements"]
    await first.join(mod, announcements)
    await start_forum.stop(first)

    mark = mod.mark()
    clock = TestClock(fire + timedelta(hours=2) - datetime.now(UTC))
    second = await start_forum(
        "digest",
        data=data,
        home=home,
        moderator=mod,
        moderator_joins=(),
        clock=clock,
        schedules=True,
    )
    week = previous_week(fire, second.settings.digest.timezone)
    event = await mod.wait_for_text(announcements, f"week/{week}/", timeout=30, after=mark)
    body = event["content"]["body"]
    assert f"Résumé de la semaine {week} (en retard)" in body
    assert f"Digest of week {week} (late)" in body

    # once: the build is recorded, and the next look finds nothing due before next week
    async def recorded() -> bool:
        async with second.ctx.db.sessionmaker() as s:
            stored = await DigestStore(s).get_state(SCHEDULE_STATE_KEY)
        return stored is not None and datetime.fromisoformat(stored) == fire

    await eventually(recorded, 10, "the build recorded")
    assert await second.digest.schedule_step(clock) > 0
    second.assert_alive()


@pytest.mark.homeserver
async def test_the_schedule_follows_a_clock_set_forward(
    start_forum: ForumStarter, make_user: Any
) -> None:
    """The service's clock jumps over the scheduled time (an NTP correction, a suspended
    machine): the build runs, once, instead of waiting the hour it first computed."""
    mod = await make_user("mod")
    schedule = BASE_CONFIG["digest"]["schedule"]
    tz = ZoneInfo(BASE_CONFIG["digest"]["timezone"])
    fire = croniter(schedule, datetime.now(tz)).get_next(datetime)
    clock = TestClock.just_before(fire, by=timedelta(hours=1))
    forum = await start_forum(
        "digest",
        moderator=mod,
        moderator_joins=(),
        clock=clock,
        schedules=True,
        config=UNREVIEWED,
    )
    announcements = forum.rooms["announcements"]
    await forum.join(mod, announcements)
    mark = mod.mark()
    clock.offset += timedelta(hours=1, minutes=1)
    week = previous_week(fire, forum.settings.digest.timezone)
    event = await mod.wait_for_text(announcements, f"week/{week}/", timeout=60, after=mark)
    assert "(late)" not in event["content"]["body"]

    async def recorded() -> bool:
        async with forum.ctx.db.sessionmaker() as s:
            stored = await DigestStore(s).get_state(SCHEDULE_STATE_KEY)
        return stored is not None and datetime.fromisoformat(stored) == fire

    await eventually(recorded, 10, "the build recorded")
    # set back across the scheduled time: nothing is built twice
    clock.offset -= timedelta(hours=1)
    assert await forum.digest.schedule_step(clock) > 0
    forum.assert_alive()


@pytest.mark.homeserver
async def test_a_database_error_in_the_gateways_bookkeeping_is_not_fatal(
    synapse: EmbeddedHomeserver,
    make_user: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holds SQLite's write lock longer than the busy timeout while an
    event is handled: storing the processed id and the sync token fails, is retried with
    backoff and logged, and the sync loop goes on once the lock is released."""
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "gw.db"
    db = await Database.open(f"sqlite:///{path}")
    password = secrets.token_urlsafe(12)
    user_id = await synapse.register(f"bot-{secrets.token_hex(4)}", password)
    alice = await make_user("alice")
    room = await alice.create_room(preset="public_chat")
    seen: list[str] = []

    async def record(ev: Message) -> None:
        seen.append(ev.body)

    gw = Gateway(
        homeserver_url=synapse.url,
        user_id=user_id,
        sessionmaker=db.sessionmaker,
        password=password,
        sync_timeout_ms=1000,
    )
    gw.on(Message, record)
    await gw.login()
    task = asyncio.create_task(gw.run())
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        await gw.wait_synced(30)
        await gw.join(room)
        # in a thread: the service runs on this event loop, and a write of its own in
        # progress must be able to finish while the lock is waited for
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        await alice.send_text(room, "pendant le verrou")

        async def bookkeeping_failed() -> bool:
            return task.done() or any("bookkeeping" in r.getMessage() for r in caplog.records)

        await eventually(bookkeeping_failed, 20, "the bookkeeping tried while locked")
        assert not task.done(), f"the sync loop ended: {task.exception()!r}"
        locker.execute("COMMIT")

        await alice.send_text(room, "après le verrou")

        async def both() -> bool:
            return task.done() or seen == ["pendant le verrou", "après le verrou"]

        await eventually(both, 20, "both messages handled once")
        assert not task.done(), f"the sync loop ended: {task.exception()!r}"
        assert seen == ["pendant le verrou", "après le verrou"]
        async with db.sessionmaker() as s:
            assert await SyncTokens(s).get(user_id) == gw.next_batch
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
        gw.stop()
        await asyncio.wait({task}, timeout=15)
        await gw.close()
        await db.close()


@pytest.mark.homeserver
async def test_the_collector_calls_no_homeserver_inside_a_write_transaction(
    start_forum: ForumStarter, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the homeserver is slow to give a display name, the digest's collector holds
    no write lock: another writer commits at once (SQLite: one writer at a time)."""
    amina = await make_user("amina", display_name="Amina")
    forum = await start_forum("digest")
    await forum.join(amina)
    await forum.consent(amina)
    collector = forum.digest.collector
    gateway = collector.moderation_gateway
    real_get_state_event = gateway.get_state_event
    asked = asyncio.Event()

    async def slow_get_state_event(room_id: str, event_type: str, state_key: str = "") -> Any:
        if event_type == "m.room.member":  # a homeserver slow to answer
            asked.set()
            await asyncio.sleep(4)
        return await real_get_state_event(room_id, event_type, state_key)

    async def join_seen() -> bool:
        return (forum.room(), amina.user_id) in collector.names

    await eventually(join_seen, 20, "the collector saw the join (and its name)")
    monkeypatch.setattr(gateway, "get_state_event", slow_get_state_event)
    collector.names.clear()  # the name is asked of the homeserver again
    await amina.send_text(forum.room(), "Les jeunes du réseau préparent une campagne.")
    await asyncio.wait_for(asked.wait(), 20)

    async def write() -> None:
        async with forum.ctx.db.sessionmaker() as s, s.begin():
            await SyncTokens(s).set("@someone:else", "s1")

    await asyncio.wait_for(write(), timeout=2)

    async def stored() -> bool:
        return len(await forum.stored_bodies()) == 1

    await eventually(stored, 20, "the message stored once the name came")


# ------------------------------------------------------------------ bounded memory


@pytest.mark.homeserver
async def test_a_knock_flood_is_answered_progressively(
    start_forum: ForumStarter, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve knocks at once, three entries at a time: at most three DMs are being
    opened and at most three entry tasks exist at any moment (no task, no room per
    knocker at once), and every knocker gets their DM."""
    forum = await start_forum("membership", membership={"entry_concurrency": 3})
    knockers = await asyncio.gather(*(make_user(f"flood{n}") for n in range(12)))
    gateway = forum.ctx.membership_gateway
    real_create_dm = gateway.create_dm
    opening = 0
    most_opening = 0
    most_tasks = 0

    def count_tasks() -> None:
        nonlocal most_tasks
        entries = [n for n in forum.service.tasks.names if n.startswith("membership:enter")]
        most_tasks = max(most_tasks, len(entries))

    async def create_dm(user_id: str, **kw: Any) -> str:
        nonlocal opening, most_opening
        opening += 1
        most_opening = max(most_opening, opening)
        count_tasks()
        try:
            return await real_create_dm(user_id, **kw)
        finally:
            opening -= 1

    monkeypatch.setattr(gateway, "create_dm", create_dm)
    marks = {k.user_id: k.mark() for k in knockers}
    await asyncio.gather(
        *(k.knock(forum.rooms["space"], "Bonjour", via=forum.via) for k in knockers)
    )
    for knocker in knockers:
        await forum.wait_dm(knocker, timeout=60, after=marks[knocker.user_id])
        count_tasks()
    assert most_opening <= 3
    assert most_tasks <= 3
    forum.assert_alive()
