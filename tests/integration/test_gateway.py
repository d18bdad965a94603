"""The gateway against a real Synapse: isolation of handlers, resuming, gaps, 429s, power."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.exc import OperationalError

from forum.errors import Forbidden, HomeserverUnavailable, NotFound
from forum.events import Message, Reaction
from forum.gateway import Gateway
from forum.homeserver import EmbeddedHomeserver, free_port
from forum.storage import Database
from forum.storage.repositories import ProcessedEvents
from tests.faults import RateLimitProxy
from tests.harness import eventually
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver


async def new_account(hs: EmbeddedHomeserver, name: str = "bot") -> tuple[str, str]:
    password = secrets.token_urlsafe(12)
    user_id = await hs.register(f"{name}-{secrets.token_hex(4)}", password)
    return user_id, password


@asynccontextmanager
async def running(gw: Gateway):
    """Log in, start the sync loop, yield, stop it cleanly."""
    await gw.login()
    task = asyncio.create_task(gw.run())
    try:
        await gw.wait_synced(30)
        yield gw
    finally:
        gw.stop()  # a batch being handled finishes; the long poll is interrupted
        await asyncio.wait_for(task, 15)
        await gw.close()


def gateway(
    hs: EmbeddedHomeserver | RateLimitProxy, db: Database, user_id: str, password: str, **kw
) -> Gateway:
    return Gateway(
        homeserver_url=hs.url,
        user_id=user_id,
        sessionmaker=db.sessionmaker,
        password=password,
        sync_timeout_ms=2000,
        **kw,
    )


@pytest_asyncio.fixture
async def sqlite_db(tmp_path: Path):
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    yield db
    await db.close()


async def bot_and_room(hs: EmbeddedHomeserver, make_user) -> tuple[str, str, TestUser, str]:
    """A bot account (id, password) and Alice with a public room of hers."""
    user_id, pw = await new_account(hs)
    alice = await make_user("alice")
    room = await alice.create_room(preset="public_chat")
    return user_id, pw, alice, room


class Seen(list):
    """What handlers received; ``wait_until`` wakes on every new item (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()

    async def add(self, item: str) -> None:
        async with self.changed:
            self.append(item)
            self.changed.notify_all()

    async def record(self, ev: Message) -> None:
        """A handler that keeps message bodies."""
        await self.add(ev.body)

    async def wait_until(self, cond, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(cond)


async def test_failing_handler_does_not_stop_the_loop(synapse, make_user, sqlite_db):
    user_id, pw, alice, room = await bot_and_room(synapse, make_user)
    seen, reactions = Seen(), Seen()

    async def explode(ev: Message) -> None:
        raise RuntimeError(f"boom on {ev.body}")

    async def on_reaction(ev: Reaction) -> None:
        await reactions.add(ev.key)

    gw = gateway(synapse, sqlite_db, user_id, pw)
    gw.on(Message, explode)
    gw.on(Message, seen.record)
    gw.on(Reaction, on_reaction)
    async with running(gw):
        await gw.join(room)
        first = await alice.send_text(room, "un")
        await alice.send_text(room, "deux")
        await alice.react(room, first, "✅")
        await seen.wait_until(lambda: seen == ["un", "deux"])
        await reactions.wait_until(lambda: reactions == ["✅"])
        assert gw.stats.handler_failures == 2
        own = await gw.send_text(room, "from the bot itself")
        trois = await alice.send_text(room, "trois")
        await seen.wait_until(lambda: "trois" in seen)
        # the bot's own message came before the marker in the room, and was not delivered
        await alice.wait_for(lambda e: e["event_id"] == trois)
        order = [e["event_id"] for e in alice.events if e.get("event_id") in (own, trois)]
        assert order == [own, trois]
        assert "from the bot itself" not in seen


def database_error() -> OperationalError:
    return OperationalError("UPDATE ...", {}, Exception("database is locked"))


class Flaky:
    """A handler that fails the first ``failures[body]`` times it sees a message (for
    ever if ``None``), then records it; counts every call by body."""

    def __init__(self, failures: dict[str, int | None]) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.done = Seen()

    async def __call__(self, ev: Message) -> None:
        self.calls[ev.body] = self.calls.get(ev.body, 0) + 1
        limit = self.failures.get(ev.body, 0)
        if limit is None or self.calls[ev.body] <= limit:
            raise database_error()
        await self.done.add(ev.body)


FAST_RETRIES = {"handler_retry_initial": 0.2, "handler_max_attempts": 4}


async def test_failed_handler_is_retried_not_lost(synapse, make_user, sqlite_db, caplog):
    """A handler that failed leaves its event unprocessed: it is called again (only it),
    succeeds once, does not block later events, and is abandoned (logged) after a bounded
    number of attempts when it keeps failing."""
    caplog.set_level(logging.ERROR, logger="forum.gateway")
    user_id, pw, alice, room = await bot_and_room(synapse, make_user)
    flaky = Flaky({"flaky": 2, "doomed": None})
    steady = Seen()

    gw = gateway(synapse, sqlite_db, user_id, pw, **FAST_RETRIES)
    gw.on(Message, flaky)
    gw.on(Message, steady.record)
    async with running(gw):
        await gw.join(room)
        await alice.send_text(room, "flaky")
        await alice.send_text(room, "doomed")
        await alice.send_text(room, "after")
        # later events are not blocked by the failing ones
        await steady.wait_until(lambda: steady == ["flaky", "doomed", "after"])
        await flaky.done.wait_until(lambda: "after" in flaky.done)

        async def flaky_handled() -> bool:
            return "flaky" in flaky.done

        await eventually(flaky_handled, 20, "the failed handler is called again and succeeds")
        assert flaky.calls["flaky"] == 3  # two failures, one success

        async def doomed_abandoned() -> bool:
            return any(
                "abandoned" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
            )

        await eventually(doomed_abandoned, 30, "a handler that keeps failing is abandoned")
        assert flaky.calls["doomed"] == FAST_RETRIES["handler_max_attempts"]
        # the loop goes on, and the abandoned event is not tried again
        await alice.send_text(room, "marker")
        await steady.wait_until(lambda: "marker" in steady)
        await flaky.done.wait_until(lambda: "marker" in flaky.done)
        assert flaky.calls["doomed"] == FAST_RETRIES["handler_max_attempts"]
    # the handlers that succeeded ran once per event, never again
    assert steady == ["flaky", "doomed", "after", "marker"]
    # each once ("flaky" after its retries: before or after "after", as syncs fall)
    assert sorted(flaky.done) == ["after", "flaky", "marker"]
    assert flaky.calls["flaky"] == 3


async def test_failed_handler_is_retried_after_restart(synapse, make_user, db):
    """A handler still failing when the gateway stops is tried again by the next one
    (same database); the handlers that had succeeded are not called again."""
    user_id, pw, alice, room = await bot_and_room(synapse, make_user)
    flaky = Flaky({"redact me": None})
    steady = Seen()

    gw = gateway(synapse, db, user_id, pw, **FAST_RETRIES)
    gw.on(Message, flaky)
    gw.on(Message, steady.record)
    async with running(gw):
        await gw.join(room)
        await alice.send_text(room, "redact me")
        await steady.wait_until(lambda: steady == ["redact me"])

        async def failed_once() -> bool:
            return flaky.calls.get("redact me", 0) >= 1

        await eventually(failed_once, 20, "the handler failed")
    assert "redact me" not in flaky.done

    flaky.failures["redact me"] = 0  # the database is back
    again = gateway(synapse, db, user_id, pw, **FAST_RETRIES)
    again.on(Message, flaky)
    again.on(Message, steady.record)
    async with running(again):

        async def handled() -> bool:
            return "redact me" in flaky.done

        await eventually(handled, 20, "the failed handler is retried after a restart")
        await alice.send_text(room, "later")
        await steady.wait_until(lambda: "later" in steady)
        await flaky.done.wait_until(lambda: "later" in flaky.done)
    assert flaky.done == ["redact me", "later"]
    assert steady == ["redact me", "later"]  # not called again for the retried event


async def test_restart_resumes_without_double_delivery(synapse, make_user, db):
    user_id, pw, alice, room = await bot_and_room(synapse, make_user)
    seen = Seen()

    gw = gateway(synapse, db, user_id, pw)
    gw.on(Message, seen.record)
    async with running(gw):
        await gw.join(room)
        await alice.send_text(room, "before restart")
        await seen.wait_until(lambda: seen == ["before restart"])
        device = gw.device_id

    await alice.send_text(room, "while stopped")
    again = gateway(synapse, db, user_id, pw)
    again.on(Message, seen.record)
    async with running(again):
        assert again.device_id == device  # the stored token was reused, no new login
        await alice.send_text(room, "after restart")
        await seen.wait_until(lambda: seen[-1:] == ["after restart"])
    assert seen == ["before restart", "while stopped", "after restart"]


async def test_events_in_skipped_rooms_reach_no_handler_and_cost_no_bookkeeping(
    synapse, make_user, sqlite_db
):
    """A handler registered with ``skip_rooms`` (the welcome bot's, for the forum's busy
    rooms) is not called for events there; an event no handler wants is not even marked
    processed (no write for each message of a busy room)."""
    user_id, pw, alice, busy = await bot_and_room(synapse, make_user)
    quiet = await alice.create_room(preset="public_chat")
    seen = Seen()
    gw = gateway(synapse, sqlite_db, user_id, pw)
    gw.on(Message, seen.record, skip_rooms={busy})
    async with running(gw):
        await gw.join(busy)
        await gw.join(quiet)
        skipped = await alice.send_text(busy, "in the busy room")
        await alice.send_text(quiet, "in the quiet room")
        await seen.wait_until(lambda: "in the quiet room" in seen)
    assert seen == ["in the quiet room"]
    async with sqlite_db.sessionmaker() as s:
        assert not await ProcessedEvents(s).seen_many(user_id, [skipped])


async def test_a_slow_handler_in_one_room_does_not_hold_up_another_room(
    synapse, make_user, sqlite_db
):
    """The events of one batch that share no room and no person are handled side by side
    (lanes): another room's message is handled while a handler waits in the first room;
    each room's own events keep their order."""
    user_id, pw, alice, room_a = await bot_and_room(synapse, make_user)
    bob = await make_user("bob")
    room_b = await bob.create_room(preset="public_chat")
    go = asyncio.Event()
    seen = Seen()

    async def handler(ev: Message) -> None:
        if ev.body == "slow":  # handled one after another, "go" would come after this
            async with asyncio.timeout(5):
                await go.wait()
        if ev.body == "go":
            go.set()
        await seen.add(ev.body)

    gw = gateway(synapse, sqlite_db, user_id, pw)
    gw.on(Message, handler)
    await gw.login()
    try:
        await gw.join(room_a)
        await gw.join(room_b)
        await gw.sync_once(0)
        await alice.send_text(room_a, "slow")
        await alice.send_text(room_a, "after slow")
        await bob.send_text(room_b, "go")
        async with asyncio.timeout(20):  # all three in one batch: sent before this sync
            while len(seen) < 3:
                await gw.sync_once(1000)
    finally:
        await gw.close()
    assert seen == ["go", "slow", "after slow"]
    assert gw.stats.handler_failures == 0


async def test_replayed_sync_does_not_deliver_twice(synapse, make_user, sqlite_db):
    """Handlers ran but the token was not stored (a crash): the replay skips the events."""
    user_id, pw, alice, room = await bot_and_room(synapse, make_user)
    seen = Seen()

    gw = gateway(synapse, sqlite_db, user_id, pw)
    gw.on(Message, seen.record)
    await gw.login()
    await gw.join(room)
    await gw.sync_once(0)
    token = gw.next_batch
    await alice.send_text(room, "once")
    async with asyncio.timeout(20):
        while "once" not in seen:
            await gw.sync_once(1000)
    gw.next_batch = token  # as if the token had not been persisted
    await gw.sync_once(0)
    await gw.close()
    assert seen.count("once") == 1


async def test_limited_timeline_gap_is_filled(synapse, make_user, sqlite_db):
    user_id, pw, alice, room = await bot_and_room(synapse, make_user)
    seen = Seen()

    gw = gateway(synapse, sqlite_db, user_id, pw, timeline_limit=20)
    gw.on(Message, seen.record)
    await gw.login()
    await gw.join(room)
    await gw.sync_once(0)
    sent = [f"m{i}" for i in range(150)]
    for chunk in range(0, 150, 25):
        await asyncio.gather(*(alice.send_text(room, b) for b in sent[chunk : chunk + 25]))
    async with asyncio.timeout(30):
        while len(seen) < 150:
            await gw.sync_once(1000)
    await gw.close()
    assert sorted(seen) == sorted(sent)
    assert len(seen) == 150


async def test_power_levels_read_from_state_in_room_v12(synapse, sqlite_db):
    user_id, pw = await new_account(synapse)
    other, _ = await new_account(synapse, "other")
    gw = gateway(synapse, sqlite_db, user_id, pw)
    await gw.login()
    room = await gw.create_room({"room_version": "12", "preset": "private_chat"})
    pl = await gw.power_levels(room)
    assert pl.level(user_id) == math.inf
    assert pl.can(user_id, "ban")
    assert pl.can(user_id, "kick")
    assert not pl.can(other, "ban")
    room11 = await gw.create_room({"room_version": "11", "preset": "private_chat"})
    assert (await gw.power_levels(room11)).level(user_id) == 100
    await gw.close()


async def test_typed_errors(synapse, make_user, sqlite_db):
    user_id, pw = await new_account(synapse)
    alice = await make_user("alice")
    private = await alice.create_room(preset="private_chat")
    gw = gateway(synapse, sqlite_db, user_id, pw)
    await gw.login()
    with pytest.raises(Forbidden):
        await gw.get_state(private)
    with pytest.raises(NotFound):
        await gw.join("#no-such-room:forum.test")
    assert await gw.resolve_alias("#absent:forum.test") is None
    await gw.close()

    down = Gateway(
        homeserver_url=f"http://127.0.0.1:{free_port()}",
        user_id=user_id,
        sessionmaker=sqlite_db.sessionmaker,
        password=pw,
        max_retries=2,
    )
    with pytest.raises(HomeserverUnavailable):
        await down.login()
    assert await down.ping() is False
    await down.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def strict_synapse(tmp_path_factory):
    """A Synapse with strict message rate limits (the default ones are stricter still)."""
    hs = EmbeddedHomeserver(
        tmp_path_factory.mktemp("strict"),
        server_name="strict.test",
        port=free_port(),
        for_tests=True,
        extra_config={"rc_message": {"per_second": 2, "burst_count": 3}},
    )
    await hs.start()
    yield hs
    await hs.stop()


async def test_burst_under_strict_rate_limits_completes(strict_synapse, sqlite_db):
    user_id, pw = await new_account(strict_synapse)
    gw = gateway(strict_synapse, sqlite_db, user_id, pw, max_retries=50)
    await gw.login()
    room = await gw.create_room({"preset": "private_chat"})
    ids = await asyncio.gather(*(gw.send_text(room, f"burst {i}") for i in range(15)))
    assert len(set(ids)) == 15
    assert gw.stats.retries > 0  # 429s happened and were waited out
    data = await gw.messages(room, limit=50)
    bodies = {e["content"].get("body") for e in data["chunk"] if e["type"] == "m.room.message"}
    assert {f"burst {i}" for i in range(15)} <= bodies
    await gw.close()


async def test_encryption_keys_are_published_through_a_slow_and_failing_homeserver(
    synapse, sqlite_db, tmp_path
):
    """A homeserver too slow to answer the device's first key upload, then answering it
    502 (as a loaded one does at a takeover): the upload is retried as every other request
    is, and the log-in completes with the keys published."""
    proxy = RateLimitProxy(synapse)
    await proxy.start()
    user_id, pw = await new_account(synapse)
    gw = gateway(
        proxy, sqlite_db, user_id, pw, request_timeout=1.5, crypto_store=tmp_path / "crypto"
    )
    try:
        proxy.fail_next("/keys/upload", 1, stall=3)  # longer than the request timeout
        proxy.fail_next("/keys/upload", 1, status=502)
        await gw.login()
        assert gw.crypto is not None
        assert gw.crypto.client.olm.account.shared
        assert proxy.faulted == ["/_matrix/client/v3/keys/upload"] * 2
        keys = await TestUser.create(synapse, "reader", sync=False)
        try:
            found = await keys.request(
                "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}}
            )
            assert gw.device_id in found["device_keys"][user_id]
        finally:
            await keys.close()
    finally:
        await gw.close()
        await proxy.close()
