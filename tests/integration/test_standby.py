"""Two ``forum run`` processes on one database: one acts, the other stands by and takes
over when the active one is killed (issue #14). Real processes, the session Synapse, real
PostgreSQL and SQLite; the people knock and count what the bots answer."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w
from sqlalchemy import func, select, text

import forum.app
from forum.app import Service
from forum.homeserver import free_port
from forum.settings import Settings
from forum.storage import Database, LeaseLost
from forum.storage.models import OutboxRow, ServiceLeaseRow
from moderation import membership
from tests.faults import RateLimitProxy
from tests.harness import (
    CHARTER_EN,
    CONFIG_DIR,
    MEMBERSHIP_OPTIONS,
    PUBLICATION_Q,
    Forum,
    eventually,
    forum_data,
    merge,
    register_bots,
    settings_from,
)
from tests.integration.test_encrypted_dms import from_bot, open_encrypted_dm
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver

ROOT = Path(__file__).resolve().parents[2]
#: short, to keep the test short; the takeover must still come within 10 s
LEASE_SECONDS = 4
TAKEOVER_LIMIT = 10.0


@dataclass
class Process:
    """A ``forum run`` in its own process, its output in a file, its web app on ``port``."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def wait_output(self, marker: str, timeout: float = 90) -> None:
        async def seen() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.output[-4000:]}")
            return marker in self.output

        await eventually(seen, timeout, f"{self.name} prints {marker!r}", interval=0.2)

    async def health(self) -> dict[str, Any] | None:
        """``/healthz``, or None while nothing listens."""
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{self.port}/healthz", timeout=aiohttp.ClientTimeout(total=3)
                ) as resp,
            ):
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def status(self, path: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}{path}") as resp,
        ):
            return resp.status

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as resp,
        ):
            return await resp.text()

    async def role(self) -> str | None:
        health = await self.health()
        return None if health is None else health.get("role")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(40):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_run(tmp: Path, data: dict[str, Any], name: str) -> Process:
    """``forum run`` on ``data`` with its own web port, home and name (another machine)."""
    port = free_port()
    config = merge(dict(data), {"web": {"port": port}, "service": {"instance": f"forum-{name}"}})
    path = tmp / f"forum-{name}.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    (tmp / "charter").exists() or (tmp / "charter").symlink_to(ROOT / "forum/config/charter")
    home = tmp / f"home-{name}"
    log = tmp / f"{name}.log"
    env = dict(os.environ, FORUM_HOME=str(home), PYTHONPATH=str(ROOT))
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "forum",
            "--config",
            str(path),
            "run",
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    return Process(name, proc, port, log)


def base_data(synapse: Any, db_url: str) -> dict[str, Any]:
    data = forum_data(synapse, db_url=db_url)
    data["service"] = {"lease_seconds": LEASE_SECONDS, "standby_poll_seconds": 0.5}
    return data


async def forum_rooms(user: TestUser, settings: Settings) -> dict[str, str]:
    ids = {
        key: await user.resolve_alias(settings.alias_id(spec.alias))
        for key, spec in (
            ("space", settings.rooms.space),
            ("lobby", settings.rooms.lobby),
            ("announcements", settings.rooms.announcements),
        )
    }
    for t in settings.topics:
        ids[f"topic:{t.slug}"] = await user.resolve_alias(settings.alias_id(t.effective_alias))
    return ids


def bot_bodies(svc: Forum, user: TestUser, room: str) -> list[str]:
    """What the membership bot said to ``user`` in ``room``, in order."""
    return [
        str(e["content"].get("body", ""))
        for e in user.events
        if e["room_id"] == room
        and e["type"] == "m.room.message"
        and e["sender"] == svc.membership_bot_id
    ]


async def answered_once(svc: Forum, user: TestUser, room: str) -> None:
    """The knock of ``user`` got one DM and each of the bot's messages once: the answer to
    their next message (the publication question) is the marker after which nothing more
    of the first answer may come."""
    mark = user.mark()
    await user.send_text(room, "oui")
    await svc.wait_bot_text(user, room, *PUBLICATION_Q, after=mark, timeout=30)
    assert len(svc.dm_invites(user)) == 1, f"{user.user_id}: {svc.dm_invites(user)}"
    said = bot_bodies(svc, user, room)
    assert any("Charte" in b or "Charter" in b for b in said), said
    assert len(said) == len(set(said)), f"{user.user_id} was told something twice: {said}"


async def knock(svc: Forum, user: TestUser) -> None:
    await user.knock(svc.rooms["space"], "Bonjour, je voudrais participer", via=svc.via)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Seconds until ``check`` holds (polled every 0.1 s)."""
    started = time.monotonic()
    await eventually(check, timeout, what, interval=0.1)
    return time.monotonic() - started


async def takes_over(process: Process, timeout: float = 30) -> None:
    try:
        await until(lambda: acting(process), timeout, f"{process.name} takes over")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{process.output[-6000:]}") from None


async def acting(process: Process) -> bool:
    """Active, with its bots syncing (the whole app served)."""
    health = await process.health()
    return (
        health is not None
        and health.get("role") == "active"
        and {"sync:membership", "sync:moderation", "outbox"} <= set(health.get("tasks", {}))
    )


@pytest.mark.parametrize("db_backend", ["postgresql"])
async def test_sigkill_of_the_active_forum_the_standby_takes_over(
    synapse, make_user, db_url, tmp_path
):
    data = base_data(synapse, db_url)
    settings = settings_from(data)
    await register_bots(synapse, settings)
    a = await start_run(tmp_path, data, "a")
    b: Process | None = None
    try:
        await a.wait_output("Press Ctrl-C to stop")
        b = await start_run(tmp_path, data, "b")
        await b.wait_output("Standing by")
        await until(lambda: _role_is(b, "standby"), 30, "b answers /healthz as standby")
        health_a, health_b = await a.health(), await b.health()
        assert health_a is not None
        assert health_b is not None
        assert health_a["role"] == "active"
        assert health_b["lease"]["holder"] == health_a["lease"]["instance"]
        assert health_b["lease"]["instance"].startswith("forum-b:")
        assert health_b["database"] == "ok"
        assert 'forum_role{role="standby"} 1.0' in await b.metrics()
        # a load balancer's check sends visitors to the active process only
        assert await b.status("/healthz") == 200
        assert await b.status("/healthz?active") == 503
        assert await a.status("/healthz?active") == 200

        first = await make_user("fo-before")
        ids = await forum_rooms(first, settings)
        svc = Forum(synapse, settings, ids)
        await knock(svc, first)
        room_first = await svc.wait_dm(first, timeout=30)
        await svc.wait_bot_text(first, room_first, "Charte", "Charter")
        # the standby never acted: it prepared its start (log-ins, rate limits, reading
        # the rooms), it never synced, sent, invited or changed a room
        await b.wait_output("ready to take over")
        kinds = standby_request_kinds(await b.metrics())
        assert kinds, "the standby did not prepare its start"
        assert kinds <= PREPARING, f"the standby acted: {sorted(kinds - PREPARING)}"
        assert (await b.health() or {}).get("tasks", {}) == {}
        handled = re.findall(r"^forum_events_handled_total\{.*\} (\S+)$", await b.metrics(), re.M)
        assert handled, "no count of the events the standby's bots handled"
        assert all(float(n) == 0 for n in handled), f"the standby handled events: {handled}"
        # its bots' devices are published: members' clients encrypt for them too
        bot = svc.membership_bot_id
        assert devices_of(b, bot)
        assert devices_of(b, bot).isdisjoint(devices_of(a, bot))
        assert await published_devices(first, bot) == devices_of(a, bot) | devices_of(b, bot)
        # a member in an encrypted DM (as Element X opens it): the room key of their
        # first answer goes to both processes' devices; the standby receives its copy
        ama = await make_user("fo-encrypted", encrypted=True)
        dm = await open_encrypted_dm(ama, bot)
        await ama.wait_for(from_bot(dm, bot, "Which language"), 30)
        mark = ama.mark()
        await ama.send_text(dm, "English")
        await ama.wait_for(from_bot(dm, bot, CHARTER_EN), 30, after=mark)

        # the active forum dies; someone knocks while nobody acts
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await a.proc.wait()
        gap = await make_user("fo-gap")
        await knock(svc, gap)
        # in the gap, the member answers under the same room key, shared before the
        # active process's last sync position: the process taking over reads it
        mark = ama.mark()
        await ama.send_text(dm, "I accept")
        await takes_over(b)
        took = time.monotonic() - killed
        assert took < TAKEOVER_LIMIT, f"b took {took:.1f} s to take over:\n" + "\n".join(
            line for line in b.output.splitlines() if "lease" in line or "provisioned" in line
        )
        # what it prepared is used: no second log-in, no second reading of the rooms
        assert "bots logged in while standing by" in b.output
        assert "taking over with the rooms read" in b.output
        await ama.wait_for(from_bot(dm, bot, *PUBLICATION_Q), 30, after=mark)

        after = await make_user("fo-after")
        await knock(svc, after)
        room_gap = await svc.wait_dm(gap, timeout=30)
        room_after = await svc.wait_dm(after, timeout=30)
        for user, room in ((gap, room_gap), (after, room_after)):
            await svc.wait_bot_text(user, room, "Charte", "Charter", timeout=30)
        # each knock answered exactly once: before, during the gap and after
        for user, room in ((first, room_first), (gap, room_gap), (after, room_after)):
            await answered_once(svc, user, room)

        database = await Database.open(db_url)
        try:
            async with database.sessionmaker() as s:
                lease = await s.scalar(select(ServiceLeaseRow))
                dedupe = await s.execute(
                    select(OutboxRow.dedupe_key, func.count())
                    .where(OutboxRow.dedupe_key.is_not(None))
                    .group_by(OutboxRow.dedupe_key)
                    .having(func.count() > 1)
                )
                assert dedupe.all() == []
            assert lease is not None
            assert lease.holder is not None
            assert lease.holder.startswith("forum-b:")
            assert lease.token == 2
        finally:
            await database.close()
    finally:
        for process in (a, b):
            if process is not None:
                await process.stop()


#: what a standby asks the homeserver while it prepares its start: log-ins (``whoami``),
#: the rate-limit exemption (admin API ``users``), reading the rooms (aliases, state), the
#: room keys for its devices (a ``sync`` that reads no room), whether its devices' keys are
#: published (``keys/query``); and its ``/healthz``'s check of the homeserver (``versions``)
PREPARING = {
    "GET account", "POST users", "GET directory", "GET state", "GET sync", "POST keys",
    "GET versions",
}  # fmt: skip


def standby_request_kinds(metrics: str) -> set[str]:
    """The kinds of the bots' requests counted in a process's ``/metrics``."""
    return set(re.findall(r'^forum_actions_total\{[^}]*kind="([^"]+)"', metrics, re.MULTILINE))


def devices_of(process: Process, user_id: str) -> set[str]:
    """The devices whose keys ``process`` published for ``user_id`` (its log says)."""
    return set(
        re.findall(re.escape(user_id) + r": end-to-end encryption on, device (\w+)", process.output)
    )


async def published_devices(user: TestUser, of: str) -> set[str]:
    """The devices of ``of`` whose keys a member's client finds (``keys/query``)."""
    found = await user.request("POST", "/_matrix/client/v3/keys/query", {"device_keys": {of: []}})
    return set(found.get("device_keys", {}).get(of, {}))


async def _role_is(process: Process, role: str) -> bool:
    return await process.role() == role


async def test_sqlite_second_process_stands_by_and_takes_over_a_clean_stop(
    synapse, make_user, tmp_path
):
    """On one machine with SQLite: the second process on the same file waits; when the
    first stops cleanly it hands the lease over at once. Its configuration has one more
    topic (an upgrade rolled out to the standby first): what it read while standing by
    differs from it, so taking over provisions the forum again and the topic's room is
    made."""
    data = base_data(synapse, f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    settings = settings_from(data)
    await register_bots(synapse, settings)
    a = await start_run(tmp_path, data, "a")
    b: Process | None = None
    data_b = copy.deepcopy(data)
    new_topic = {
        "slug": "nouveau",
        "alias": f"nouveau-{secrets.token_hex(3)}",
        "name": {"fr": "Nouveau sujet", "en": "New topic"},
        "topic": {"fr": "Ajouté", "en": "Added"},
    }
    data_b["topics"].append(new_topic)
    try:
        await a.wait_output("Press Ctrl-C to stop")
        b = await start_run(tmp_path, data_b, "b")
        await b.wait_output("Standing by")
        await until(lambda: _role_is(b, "standby"), 30, "b answers /healthz as standby")
        assert await a.role() == "active"
        await b.wait_output("ready to take over")
        assert re.search(r"ready to take over: .* [1-9]\d* change\(s\) to make", b.output)

        stopped = time.monotonic()
        await a.stop()
        assert a.proc.returncode == 0, a.output[-3000:]
        await takes_over(b)
        assert time.monotonic() - stopped < TAKEOVER_LIMIT + 5  # no wait for the expiry
        assert "Taking over" in b.output
        assert "taking over with the rooms read" not in b.output  # read again, provisioned

        user = await make_user("sqlite-standby")
        alias = f"#{new_topic['alias']}:{synapse.server_name}"
        await user.resolve_alias(alias)  # the new topic's room was made at the takeover
        svc = Forum(synapse, settings, await forum_rooms(user, settings))
        await knock(svc, user)
        room = await svc.wait_dm(user, timeout=30)
        await svc.wait_bot_text(user, room, "Charte", "Charter")
        await answered_once(svc, user, room)
    finally:
        for process in (a, b):
            if process is not None:
                await process.stop()


@pytest.mark.parametrize("db_backend", ["postgresql"])
async def test_active_forum_that_loses_its_lease_steps_down(start_forum, db_url):
    """The active process loses its exclusive hold on the lease (the connection holding
    the advisory lock is gone: the database server dropped it): it stops acting at once
    (no sync, no outbox, no feature's loop) and refuses to write, rather than risk acting
    beside the process that will take over. (A database merely locked or slow past the
    lease does not do this: see test_lease.py.)"""
    forum = await start_forum("membership", db_url=db_url, config={"service": {"lease_seconds": 2}})
    service = forum.service
    assert service is not None
    assert service.role == "active"
    assert {"lease", "outbox"} <= set(service.tasks.names)
    lease = service.lease
    assert lease is not None
    assert lease._lock_conn is not None
    pid = await lease._lock_conn.scalar(text("SELECT pg_backend_pid()"))
    blocker = await Database.open(db_url)
    try:
        async with blocker.engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        async def stepped_down() -> bool:
            return service.role == "stepped-down"

        await eventually(stepped_down, 6, "the active forum steps down")
        async with asyncio.timeout(5):
            await service.wait_failed()
        await eventually(
            lambda: _no_tasks(service), 10, "every loop of the stepped-down forum stopped"
        )
        status, body, _ = await forum.get("/healthz")
        assert status == 503
        assert '"role": "stepped-down"' in body
        with pytest.raises(LeaseLost):
            async with service.db.sessionmaker() as s, s.begin():
                pass
    finally:
        await blocker.close()


async def _no_tasks(service: Any) -> bool:
    return service.tasks.names == []


@pytest.mark.parametrize("db_backend", ["postgresql"])
async def test_a_standby_logs_in_again_and_takes_over_when_the_room_keys_cannot_come(
    synapse, start_forum, make_user, db_url, tmp_path, monkeypatch, caplog
):
    """Two fault paths of a standby, in one process beside the active forum: the operator
    removes the standby bot's device while it waits (it logs in again at its next round,
    as a new device with its keys published); at the takeover the homeserver refuses the syncs that
    receive the room keys waiting for its devices (it says so and starts anyway: knocks
    are answered)."""
    monkeypatch.setattr(forum.app, "DRAIN_SECONDS", 0.5)
    proxy = RateLimitProxy(synapse)
    await proxy.start()
    a = await start_forum("membership", db_url=db_url, config={"service": {"lease_seconds": 2}})
    data = copy.deepcopy(a.data)
    data["homeserver"]["url"] = proxy.url
    settings = settings_from(data)
    b = Service(
        settings,
        config_dir=CONFIG_DIR,
        home=tmp_path / "home-b",
        features=[membership.feature(**MEMBERSHIP_OPTIONS)],
        web_port=0,
        migrate_apart=False,
    )
    operator = await make_user("operator", admin=True)
    standing: asyncio.Future[None] | None = None
    try:
        await b.open()
        assert not await b.try_lead()
        standing = asyncio.ensure_future(b.stand_by())

        async def ready() -> bool:
            return b._logged_in and b._observation is not None

        await eventually(ready, 60, "the standby ready to take over")
        gateway = b.gateways["membership"]
        device, token = gateway.device_id, gateway.access_token
        assert device is not None
        assert device != a.ctx.membership_gateway.device_id
        removed = f"/_synapse/admin/v2/users/{gateway.user_id}/devices/{device}"
        await operator.request("DELETE", removed)

        async def logged_in_again() -> bool:
            return b._logged_in and gateway.access_token not in (None, token)

        await eventually(logged_in_again, 20, "the standby's bot logged in again")
        assert "a bot's session ended" in caplog.text
        assert gateway.device_id != device  # the removed device's keys were gone with it
        assert await published_devices(operator, gateway.user_id) == {
            gateway.device_id,
            a.ctx.membership_gateway.device_id,
        }

        # the takeover: every sync reading the room keys for the standby's devices fails
        proxy.fail_next("set_presence=offline", 1000, status=400)
        await start_forum.stop(a)
        async with asyncio.timeout(TAKEOVER_LIMIT):
            await standing
        ctx = await b.start()
        assert "the room keys waiting for the bots' devices could not be received" in caplog.text
        svc = Forum(synapse, settings, ctx.rooms, service=b)
        newcomer = await make_user("after-takeover")
        await knock(svc, newcomer)
        room = await svc.wait_dm(newcomer, timeout=30)
        await svc.wait_bot_text(newcomer, room, "Charte", "Charter", timeout=30)
    finally:
        if standing is not None and not standing.done():
            standing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await standing
        await b.stop()
        await proxy.close()
