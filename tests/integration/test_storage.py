"""Storage layer against real databases: every ``db`` test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text, update
from sqlalchemy.exc import StatementError

from forum.storage import (
    BotSessions,
    Database,
    DatabaseTooNew,
    Outbox,
    OutboxWorker,
    ProcessedEvents,
    RoomRegistry,
    SyncTokens,
    alembic_config,
    create_engine,
    drop_database,
    head_revisions,
    known_revisions,
    utcnow,
)
from forum.storage import db as db_module
from forum.storage.models import Base, ProcessedEvent, SyncToken
from tests.harness import eventually

pytest_plugins = ["tests.storage_fixtures"]

FOUNDATION_TABLES = {"sync_tokens", "bot_sessions", "rooms", "processed_events", "outbox"}


def script_heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


# ------------------------------------------------------------------ migrations


async def test_migrations_reach_every_head(db: Database) -> None:
    assert "0001_foundation" in known_revisions()
    assert await db.current_revisions() == script_heads()

    def tables(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    async with db.engine.connect() as conn:
        assert await conn.run_sync(tables) >= FOUNDATION_TABLES


def test_heads_read_from_the_files_are_alembics() -> None:
    """The service knows the heads without loading Alembic: read from the migration
    files, they are the ones Alembic finds."""
    script = ScriptDirectory.from_config(alembic_config())
    assert head_revisions() == script_heads()
    assert known_revisions() == {rev.revision for rev in script.walk_revisions()}


async def test_migrating_apart_a_fresh_and_an_older_database(db_url: str) -> None:
    """The service's way (a child process migrates): a fresh database reaches the heads;
    one left at an older revision, with its rows, reaches them too."""
    database = await Database.open(db_url, migrate_apart=True)
    try:
        assert await database.current_revisions() == script_heads()
    finally:
        await database.close()
    await drop_database(db_url)
    if "postgresql" in db_url:
        from forum.storage import create_database_if_missing

        await create_database_if_missing(db_url)

    from alembic import command

    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0001_foundation"))
            await conn.execute(
                text(
                    "INSERT INTO sync_tokens (account, next_batch, updated_at) "
                    "VALUES ('@bot:x', 's7', CURRENT_TIMESTAMP)"
                )
            )
    finally:
        await engine.dispose()
    database = await Database.open(db_url, migrate_apart=True)
    try:
        assert await database.current_revisions() == script_heads()
        async with database.sessionmaker() as session:
            assert await SyncTokens(session).get("@bot:x") == "s7"
    finally:
        await database.close()


async def test_migrating_apart_refuses_a_newer_database(db: Database, db_url: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM alembic_version"))
        await conn.execute(
            text("INSERT INTO alembic_version (version_num) VALUES ('9999_from_the_future')")
        )
    await db.close()
    with pytest.raises(DatabaseTooNew, match="9999_from_the_future"):
        await Database.open(db_url, migrate_apart=True)


async def test_the_service_process_never_loads_alembic(tmp_path: Path) -> None:
    """A process that opens its database the service's way, fresh or at the heads, has
    not imported Alembic (nor Mako, nor Pygments): 11 MB of resident memory."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'forum.db'}"
    script = (
        "import asyncio, sys\n"
        "from forum.storage import Database\n"
        "async def main():\n"
        "    for _ in range(2):  # fresh, then at the heads\n"
        f"        db = await Database.open({url!r}, migrate_apart=True)\n"
        "        await db.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('alembic', 'mako', 'pygments') if m in sys.modules))\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_models_match_migrations(db: Database) -> None:
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                # tables of other features' branches are not in this metadata
                "include_object": lambda obj, name, type_, reflected, other: (
                    not (reflected and other is None)
                ),
            },
        )
        return list(compare_metadata(ctx, Base.metadata))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_second_open_is_a_noop_migration(db: Database, db_url: str) -> None:
    async with db.sessionmaker() as session, session.begin():
        await SyncTokens(session).set("@bot:x", "s1")
    before = await db.current_revisions()

    again = await Database.open(db_url)
    try:
        assert await again.current_revisions() == before
        async with again.sessionmaker() as session:
            assert await SyncTokens(session).get("@bot:x") == "s1"
    finally:
        await again.close()


async def test_open_without_migrate_leaves_an_empty_database_alone(db_url: str) -> None:
    database = await Database.open(db_url, migrate=False)
    try:
        assert await database.current_revisions() == set()
        async with database.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert not names & FOUNDATION_TABLES
    finally:
        await database.close()


async def test_database_newer_than_code_is_refused(db: Database, db_url: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO alembic_version (version_num) VALUES ('9999_from_the_future')")
        )
    await db.close()

    with pytest.raises(DatabaseTooNew, match="9999_from_the_future") as caught:
        await Database.open(db_url)
    assert caught.value.unknown == {"9999_from_the_future"}
    # refused before touching anything, with or without migrating
    with pytest.raises(DatabaseTooNew):
        await Database.open(db_url, migrate=False)


async def test_sqlite_parent_directory_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "forum.db"
    database = await Database.open(f"sqlite:///{path}")
    try:
        assert path.exists()
        assert database.engine.url.drivername == "sqlite+aiosqlite"
        async with database.engine.connect() as conn:
            assert (await conn.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await conn.scalar(text("PRAGMA foreign_keys"))) == 1
            assert (await conn.scalar(text("PRAGMA busy_timeout"))) == 5000
            assert (await conn.scalar(text("PRAGMA cache_size"))) == -512  # KiB
    finally:
        await database.close()


async def test_a_crowd_of_sqlite_writers_waits_in_line_past_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve write units of work of one process, each holding the write lock 150 ms (a
    loaded machine), wait 1.8 s in all for the last one: past a busy timeout of 0.5 s,
    none fails with "database is locked" (they used to poll SQLite's lock in no order)."""
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 500)
    database = await Database.open(f"sqlite:///{tmp_path / 'forum.db'}")
    try:

        async def write(i: int) -> None:
            async with database.sessionmaker() as s, s.begin():
                s.add(SyncToken(account=f"writer{i}", next_batch="t"))
                await s.flush()
                await asyncio.sleep(0.15)

        results = await asyncio.gather(*(write(i) for i in range(12)), return_exceptions=True)
        assert [r for r in results if r is not None] == []
        async with database.sessionmaker() as s:
            count = await s.scalar(text("SELECT count(*) FROM sync_tokens"))
        assert count == 12
    finally:
        await database.close()


# ------------------------------------------------------------------ health


async def test_ping(db: Database) -> None:
    assert await db.ping() is True


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("port_fixture", ["closed_port", "silent_port"])
async def test_ping_is_false_when_the_server_is_unreachable(
    port_fixture: str, request: pytest.FixtureRequest
) -> None:
    port = request.getfixturevalue(port_fixture)
    database = Database(create_engine(f"postgresql://postgres@127.0.0.1:{port}/forum"))
    started = time.monotonic()
    try:
        assert await database.ping(timeout=1.0) is False
    finally:
        await database.close()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("db_backend", ["postgresql"])  # SQLite recreates a missing file
async def test_ping_is_false_after_the_database_went_away(db_url: str) -> None:
    database = await Database.open(db_url)
    try:
        assert await database.ping() is True
        await drop_database(db_url)  # terminates our pooled connection too
        assert await database.ping(timeout=2.0) is False
    finally:
        await database.close()


# ------------------------------------------------------------------ repositories


async def test_sync_tokens_upsert(db: Database) -> None:
    async with db.sessionmaker() as session, session.begin():
        tokens = SyncTokens(session)
        assert await tokens.get("@membership:x") is None
        await tokens.set("@membership:x", "s1")
        await tokens.set("@membership:x", "s2")
        await tokens.set("@moderation:x", "m1")
    async with db.sessionmaker() as session:
        tokens = SyncTokens(session)
        assert await tokens.get("@membership:x") == "s2"
        assert await tokens.get("@moderation:x") == "m1"


async def test_bot_sessions(db: Database) -> None:
    async with db.sessionmaker() as session, session.begin():
        sessions = BotSessions(session)
        await sessions.save("@bot:x", "https://hs", "DEV1", "tok-1")
        await sessions.save("@bot:x", "https://hs", "DEV2", "tok-2")
    async with db.sessionmaker() as session, session.begin():
        sessions = BotSessions(session)
        stored = await sessions.get("@bot:x")
        assert stored is not None
        assert (stored.device_id, stored.access_token) == ("DEV2", "tok-2")
        assert stored.updated_at.tzinfo is not None
        assert "tok-2" not in repr(stored)
        with pytest.raises(AttributeError):
            stored.device_id = "x"  # type: ignore[misc]
        await sessions.delete("@bot:x")
        await sessions.delete("@nobody:x")
    async with db.sessionmaker() as session:
        assert await BotSessions(session).get("@bot:x") is None


async def test_room_registry(db: Database) -> None:
    async with db.sessionmaker() as session, session.begin():
        rooms = RoomRegistry(session)
        space = await rooms.upsert("space", "!space:x", "space", "#forum:x")
        assert space.created_at.tzinfo is not None
        await rooms.upsert("lobby", "!lobby:x", "lobby", None)
        await rooms.upsert("topic:droits-enfants", "!t1:x", "topic", "#droits:x")
        with pytest.raises(ValueError, match="kind"):
            await rooms.upsert("odd", "!odd:x", "garden", None)

    async with db.sessionmaker() as session, session.begin():
        rooms = RoomRegistry(session)
        assert [r.key for r in await rooms.all()] == ["lobby", "space", "topic:droits-enfants"]
        topic = await rooms.by_room_id("!t1:x")
        assert topic is not None
        assert (topic.key, topic.kind, topic.alias, topic.detached) == (
            "topic:droits-enfants",
            "topic",
            "#droits:x",
            False,
        )
        assert await rooms.mark_detached("topic:droits-enfants") is True
        assert await rooms.mark_detached("topic:nope") is False
        assert [r.key for r in await rooms.all()] == ["lobby", "space"]
        detached = await rooms.get("topic:droits-enfants")
        assert detached is not None
        assert detached.detached is True
        assert len(await rooms.all(include_detached=True)) == 3

        # upsert moves the key to a new room and attaches it again
        moved = await rooms.upsert("topic:droits-enfants", "!t2:x", "topic", None)
        assert (moved.room_id, moved.alias, moved.detached) == ("!t2:x", None, False)
        assert moved.created_at == topic.created_at
        assert await rooms.by_room_id("!t1:x") is None
        assert await rooms.get("missing") is None


async def test_processed_events_are_idempotent(db: Database) -> None:
    async with db.sessionmaker() as session, session.begin():
        events = ProcessedEvents(session)
        assert await events.seen("@bot:x", "$a") is False
        assert await events.mark("@bot:x", "$a") is True
        assert await events.mark("@bot:x", "$a") is False  # same transaction, no error
        assert await events.seen("@bot:x", "$a") is True
        assert await events.seen("@other:x", "$a") is False
    async with db.sessionmaker() as session, session.begin():
        events = ProcessedEvents(session)
        assert await events.mark("@bot:x", "$a") is False  # another transaction
        assert await events.mark("@other:x", "$a") is True
        many = [f"$e{i}" for i in range(1200)]
        for event_id in many[::2]:
            await events.mark("@bot:x", event_id)
    async with db.sessionmaker() as session:
        seen = await ProcessedEvents(session).seen_many("@bot:x", [*many, "$a", "$zz"])
        assert seen == {*many[::2], "$a"}
        assert await ProcessedEvents(session).seen_many("@bot:x", []) == set()


async def test_processed_events_prune(db: Database) -> None:
    async with db.sessionmaker() as session, session.begin():
        events = ProcessedEvents(session)
        await events.mark("@bot:x", "$old")
        await events.mark("@bot:x", "$new")
        old = utcnow() - timedelta(days=30)
        await session.execute(
            update(ProcessedEvent).where(ProcessedEvent.event_id == "$old").values(processed_at=old)
        )
    async with db.sessionmaker() as session, session.begin():
        events = ProcessedEvents(session)
        assert await events.prune(utcnow() - timedelta(days=7)) == 1
        assert await events.seen("@bot:x", "$old") is False
        assert await events.seen("@bot:x", "$new") is True


async def test_naive_datetimes_are_refused(db: Database) -> None:
    async with db.sessionmaker() as session:
        with pytest.raises(StatementError, match="naive datetime"):
            await ProcessedEvents(session).prune(datetime(2024, 1, 1))  # noqa: DTZ001


async def test_outbox_dedupe_keeps_the_transaction_usable(db: Database) -> None:
    async with db.sessionmaker() as session, session.begin():
        outbox = Outbox(session)
        first = await outbox.add("invite", {"user": "@a:x"}, dedupe_key="invite:@a:x")
        assert first is not None
        assert await outbox.add("invite", {"user": "@a:x"}, dedupe_key="invite:@a:x") is None
        # still usable after the duplicate
        second = await outbox.add("invite", {"user": "@b:x"})
        third = await outbox.add("invite", {"user": "@b:x"})
        assert second is not None
        assert third is not None
        assert first < second < third
    async with db.sessionmaker() as session, session.begin():
        outbox = Outbox(session)
        assert await outbox.add("invite", {}, dedupe_key="invite:@a:x") is None
        assert await outbox.pending_count() == 3
        item = await outbox.get(first)
        assert item is not None
        assert item.payload == {"user": "@a:x"}
        assert item.dedupe_key == "invite:@a:x"


async def test_outbox_due_failure_and_done(db: Database) -> None:
    ids = await add_items(db, *[("k", {"n": n, "nested": {"list": [1, "é"]}}) for n in range(3)])
    now = utcnow()
    async with db.sessionmaker() as session, session.begin():
        outbox = Outbox(session)
        due = await outbox.due(now)
        assert [i.id for i in due] == ids
        assert due[0].payload == {"n": 0, "nested": {"list": [1, "é"]}}
        assert [i.id for i in await outbox.due(now, limit=2)] == ids[:2]
        await outbox.mark_done(ids[0])
        await outbox.mark_failed(ids[1], "boom", now + timedelta(minutes=5))
    async with db.sessionmaker() as session, session.begin():
        outbox = Outbox(session)
        assert [i.id for i in await outbox.due(now)] == [ids[2]]
        later = await outbox.due(now + timedelta(minutes=6))
        assert [i.id for i in later] == ids[1:]
        failed = later[0]
        assert (failed.attempts, failed.last_error) == (1, "boom")
        assert failed.next_attempt_at == now + timedelta(minutes=5)
        assert await outbox.pending_count() == 2
        done = await outbox.get(ids[0])
        assert done is not None
        assert done.done_at is not None
        # abandoned: never due again, not pending
        await outbox.mark_failed(ids[2], "gave up", None)
        assert [i.id for i in await outbox.due(now + timedelta(days=365))] == [ids[1]]
        assert await outbox.pending_count() == 1
        assert [i.id for i in await outbox.abandoned()] == [ids[2]]


# ------------------------------------------------------------------ outbox worker


async def pending(db: Database) -> int:
    async with db.sessionmaker() as session:
        return await Outbox(session).pending_count()


async def wait_until(
    probe: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 10.0
) -> None:
    """Poll ``probe`` until it returns ``expected`` (a database condition: nothing signals
    it)."""

    async def reached() -> bool:
        return bool(await probe() == expected)

    await eventually(reached, timeout, f"{expected!r}", interval=0.02)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


async def add_items(db: Database, *items: tuple[str, dict[str, Any]]) -> list[int]:
    async with db.sessionmaker() as session, session.begin():
        outbox = Outbox(session)
        ids = [await outbox.add(kind, payload) for kind, payload in items]
    assert all(i is not None for i in ids)
    return [i for i in ids if i is not None]


async def test_worker_runs_each_item_exactly_once_in_order(db: Database) -> None:
    calls: list[dict[str, Any]] = []

    async def invite(payload: dict[str, Any]) -> None:
        calls.append(payload)

    await add_items(db, ("invite", {"n": 1}), ("invite", {"n": 2}))
    worker = OutboxWorker(db.sessionmaker, {"invite": invite})
    assert await worker.run_once() == 2
    assert await worker.run_once() == 0
    assert calls == [{"n": 1}, {"n": 2}]
    async with db.sessionmaker() as session:
        assert await Outbox(session).pending_count() == 0


async def test_worker_retries_a_failing_executor_with_backoff(db: Database) -> None:
    failures = 2
    calls = 0

    async def flaky(payload: dict[str, Any]) -> None:
        nonlocal calls, failures
        calls += 1
        if failures:
            failures -= 1
            raise RuntimeError("homeserver said 502")

    [item_id] = await add_items(db, ("flaky", {}))
    clock = Clock()  # after the item was queued: it is due now
    worker = OutboxWorker(db.sessionmaker, {"flaky": flaky}, clock=clock, backoff_base=10)

    assert await worker.run_once() == 1
    async with db.sessionmaker() as session:
        item = await Outbox(session).get(item_id)
    assert item is not None
    assert item.attempts == 1
    assert item.last_error == "RuntimeError: homeserver said 502"
    assert item.next_attempt_at == clock.now + timedelta(seconds=10)

    assert await worker.run_once() == 0  # not yet due
    clock.now += timedelta(seconds=10)
    assert await worker.run_once() == 1  # second failure: 20 s backoff
    clock.now += timedelta(seconds=19)
    assert await worker.run_once() == 0
    clock.now += timedelta(seconds=1)
    assert await worker.run_once() == 1
    assert calls == 3
    async with db.sessionmaker() as session:
        item = await Outbox(session).get(item_id)
        assert item is not None
        assert item.done_at is not None
        assert item.attempts == 3
        assert await Outbox(session).pending_count() == 0


async def test_worker_records_unknown_kinds_and_gives_up(db: Database) -> None:
    [item_id] = await add_items(db, ("mystery", {}))
    clock = Clock()
    worker = OutboxWorker(db.sessionmaker, {}, clock=clock, max_attempts=2, backoff_base=1)
    assert await worker.run_once() == 1
    clock.now += timedelta(hours=1)
    assert await worker.run_once() == 1
    clock.now += timedelta(days=30)
    assert await worker.run_once() == 0
    async with db.sessionmaker() as session:
        outbox = Outbox(session)
        item = await outbox.get(item_id)
        assert item is not None
        assert item.last_error == "no executor for outbox kind 'mystery'"
        assert item.attempts == 2
        assert item.next_attempt_at is None
        assert [i.id for i in await outbox.abandoned()] == [item_id]


async def test_worker_runs_different_people_side_by_side_and_one_person_in_order(
    db: Database,
) -> None:
    """Items of different lanes (people) run at the same time: a slow homeserver answering
    each invite in seconds must not make the hundredth newcomer wait for the ninety-nine
    before (found by the long fault run: each member's nine invites at 4-16 s each, run one
    after another, kept a newcomer waiting more than 300 s for the welcome). One person's
    items still run in order: the welcome after the invites."""
    started: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    order: list[str] = []

    async def invite(payload: dict[str, Any]) -> None:
        who = payload["user_id"]
        order.append(f"invite {who} {payload['n']}")
        if payload["n"] == 1:
            started[who].set()
            other = "b" if who == "a" else "a"
            # each first invite waits until the other person's is under way too
            await asyncio.wait_for(started[other].wait(), timeout=5)

    async def notify(payload: dict[str, Any]) -> None:
        order.append(f"welcome {payload['lane']}")

    await add_items(
        db,
        ("invite", {"user_id": "a", "n": 1}),
        ("invite", {"user_id": "a", "n": 2}),
        ("notify", {"room_id": "dm-a", "lane": "a"}),
        ("invite", {"user_id": "b", "n": 1}),
        ("notify", {"room_id": "dm-b", "lane": "b"}),
    )
    worker = OutboxWorker(db.sessionmaker, {"invite": invite, "notify": notify})
    assert await worker.run_once() == 5
    assert await pending(db) == 0  # nothing failed (a first invite waiting alone would)
    mine = [x for x in order if x.endswith(" a") or " a " in x]
    assert mine == ["invite a 1", "invite a 2", "welcome a"]
    assert order.index("welcome b") > order.index("invite b 1")


async def test_worker_loop_wakes_on_notify_and_stops_on_cancel(db: Database) -> None:
    done = asyncio.Event()
    calls = 0

    async def execute(payload: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        done.set()

    # a poll interval far longer than the test: only notify() can wake it
    worker = OutboxWorker(db.sessionmaker, {"k": execute}, poll_interval=3600)
    task = asyncio.create_task(worker.run())
    try:
        await add_items(db, ("k", {}))
        worker.notify()
        await asyncio.wait_for(done.wait(), timeout=10)
        await wait_until(lambda: pending(db), 0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == 1


BRANCH_TEMPLATE = """
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "0001_foundation"
branch_labels = ("{label}",)
depends_on = None


def upgrade() -> None:
    op.create_table("{label}_things", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("{label}_things")
"""


async def test_feature_branches_migrate_and_older_code_refuses_them(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later features add branches off 0001: ``upgrade heads`` applies them all, and a
    release that does not know them refuses the database, naming every unknown head."""
    import shutil

    from forum.storage import db as db_module

    newer = tmp_path / "newer_migrations"
    shutil.copytree(db_module.MIGRATIONS_DIR, newer, ignore=shutil.ignore_patterns("__pycache__"))
    branches = {"0001_test_branch_a", "0001_test_branch_b"}
    for label in ("test_branch_a", "test_branch_b"):
        text_ = BRANCH_TEMPLATE.format(rev=f"0001_{label}", label=label)
        (newer / "versions" / f"0001_{label}.py").write_text(text_)

    with monkeypatch.context() as patch:
        patch.setattr(db_module, "MIGRATIONS_DIR", newer)
        database = await Database.open(db_url)
        try:
            heads = set(ScriptDirectory.from_config(db_module.alembic_config()).get_heads())
            assert heads >= branches
            assert await database.current_revisions() == heads
        finally:
            await database.close()

    with pytest.raises(DatabaseTooNew) as caught:
        await Database.open(db_url)
    assert caught.value.unknown == branches
    assert all(name in str(caught.value) for name in branches)


async def test_concurrent_units_of_work_read_then_write(db: Database) -> None:
    """Sessions that read then write, concurrently, all commit (SQLite: no SQLITE_BUSY)."""

    async def handle(n: int) -> None:
        async with db.sessionmaker() as session, session.begin():
            events = ProcessedEvents(session)
            if not await events.seen("@bot:x", f"$e{n}"):
                await asyncio.sleep(0)  # let the others interleave
                await events.mark("@bot:x", f"$e{n}")
                await SyncTokens(session).set("@bot:x", f"s{n}")

    await asyncio.gather(*(handle(n) for n in range(20)))
    async with db.sessionmaker() as session:
        seen = await ProcessedEvents(session).seen_many("@bot:x", [f"$e{n}" for n in range(20)])
        assert len(seen) == 20
        assert await SyncTokens(session).get("@bot:x") is not None


async def test_opening_waits_for_another_process_write_lock(tmp_path):
    """A forum starting while another process (one stopping, an operator's command) holds
    SQLite's write lock past the busy timeout waits for it instead of failing."""
    import sqlite3
    import threading

    path = tmp_path / "forum.db"
    first = await Database.open(f"sqlite+aiosqlite:///{path}")
    await first.close()
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(6.5)  # past the 5 s busy timeout
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 5)
        db = await Database.open(f"sqlite+aiosqlite:///{path}")
        await db.close()
    finally:
        await asyncio.to_thread(holder.join)
