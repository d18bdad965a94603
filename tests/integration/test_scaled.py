"""The scaled profile (`make run-scaled`): `forum run` on Synapse's workers (two event
persisters, a generic worker, a federation sender) over PostgreSQL and Redis, the forum on
PostgreSQL; a moderator's `!ban` lands in every forum room."""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import tomli_w

from forum.homeserver import EmbeddedHomeserver, free_port, port_is_free
from forum.settings import DEFAULT_CONFIG
from tests.integration.test_run import read_until, start_run, stop
from tests.matrix_user import MatrixRequestError, TestUser

pytestmark = pytest.mark.homeserver

REDIS = ("127.0.0.1", 6379)
PG = "postgresql://postgres@127.0.0.1:5432"


def redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_block(size: int) -> int:
    """The first of ``size`` consecutive free ports on loopback, below the ephemeral range
    (where the system picks the source ports of outgoing connections, which may take one
    between this check and the worker's start)."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 32000 - size)
        if all(port_is_free("127.0.0.1", base + i) for i in range(size)):
            return base
    raise RuntimeError(f"no {size} consecutive free ports")


async def drop_databases(*names: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def membership(user: TestUser, room: str, target: str) -> str | None:
    try:
        return (await user.get_state_event(room, "m.room.member", target)).get("membership")
    except MatrixRequestError as exc:
        return f"{exc.status} {exc.errcode}"


async def stored_memberships(database: str, target: str) -> dict[str, list[str]]:
    """What the homeserver's database holds for ``target``, room by room: every membership
    event persisted, and the current state's."""
    conn = await asyncpg.connect(f"{PG}/{database}")
    try:
        rows = await conn.fetch(
            "SELECT m.room_id, m.membership, m.instance_name, c.membership AS current"
            " FROM (SELECT r.room_id, r.membership, e.instance_name FROM room_memberships r"
            " JOIN events e USING (event_id) WHERE r.user_id = $1) m"
            " LEFT JOIN current_state_events c ON c.room_id = m.room_id"
            " AND c.type = 'm.room.member' AND c.state_key = $1",
            target,
        )
    finally:
        await conn.close()
    found: dict[str, list[str]] = {}
    for r in rows:
        found.setdefault(r["room_id"], []).append(
            f"{r['membership']} by {r['instance_name']}, current {r['current']}"
        )
    return found


@pytest.mark.skipif(not redis_reachable(), reason="Redis is not reachable on 127.0.0.1:6379")
async def test_scaled_profile_runs_workers_and_bans_across_rooms(tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    synapse_db, forum_db = f"forum_synapse_t{tag}", f"forum_t{tag}"
    data = copy.deepcopy(tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8")))
    hs_port, web_port, base_port = free_port(), free_port(), free_block(6)
    data["homeserver"]["embedded"]["port"] = hs_port
    data["homeserver"]["embedded"]["scaled"] = {
        "synapse_database": f"{PG}/{synapse_db}",
        "forum_database": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{forum_db}",
        "base_port": base_port,
    }
    data["web"]["port"] = web_port
    config = tmp_path / "forum.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    (tmp_path / "charter").symlink_to(DEFAULT_CONFIG.parent / "charter")
    home = tmp_path / "home"
    env = {"FORUM_PROFILE": "scaled", "FORUM_EVENT_PERSISTERS": "2"}

    proc = await start_run(config, home, env)
    moderator: TestUser | None = None
    target: TestUser | None = None
    try:
        out = await read_until(proc, "Press Ctrl-C to stop", timeout=240)
        assert "2 event persister(s)" in out
        facts = json.loads((home / "demo.json").read_text(encoding="utf-8"))
        assert facts["homeserver_profile"] == "scaled"
        workers = facts["synapse_workers"]
        assert set(workers) == {
            "event_persister1",
            "event_persister2",
            "generic_worker1",
            "federation_sender1",
        }
        async with aiohttp.ClientSession() as http:
            for name, url in workers.items():
                async with http.get(url) as resp:
                    assert resp.status == 200, name
            async with http.get(f"{facts['web_url']}healthz") as resp:
                health = await resp.json()
                assert (health["homeserver"], health["database"]) == ("ok", "ok")

        # The homeserver as a client sees it: its client port and its registration secret.
        hs = EmbeddedHomeserver(
            home / "synapse-scaled", server_name=facts["server_name"], port=hs_port
        )
        mod = next(a for a in facts["accounts"] if a["role"] == "moderator")
        moderator = await TestUser.login(hs, mod["user_id"], mod["password"])
        target = await TestUser.create(hs, "spammer")
        invited = await moderator.wait_for(lambda e: e["_section"] == "invite")
        rooms = {invited["room_id"]}
        async with asyncio.timeout(30):  # the moderator is invited to every forum room
            while len(rooms) < 11:
                known = set(rooms)
                await moderator.wait_for(
                    lambda e, known=known: e["_section"] == "invite" and e["room_id"] not in known
                )
                rooms = {e["room_id"] for e in moderator.events if e["_section"] == "invite"}
        for room in rooms:
            await moderator.join(room, via=[facts["server_name"]])
        management = await moderator.resolve_alias(facts["management_room"])
        policy_alias = f"#{data['rooms']['policy']['alias']}:{facts['server_name']}"
        policy = await moderator.resolve_alias(policy_alias)
        forum_rooms = rooms - {management, policy}  # where a ban applies
        assert len(forum_rooms) >= 9

        target_id = target.user_id
        mark = moderator.mark()
        await moderator.send_text(management, f"!ban {target_id} spam")
        # What the moderator sees: the bot's answer, then the ban in each room's timeline
        # (the rooms' state is read once, after, not polled while the bans are persisted).
        reply = await moderator.wait_for(
            lambda e: e.get("room_id") == management and "salle(s)" in e["content"]["body"],
            60,
            after=mark,
        )
        assert f"{len(forum_rooms)} salle(s)" in reply["content"]["body"], reply["content"]

        def banned_in(room: str) -> Callable[[dict[str, Any]], bool]:
            def match(e: dict[str, Any]) -> bool:
                return (
                    e.get("room_id") == room
                    and e.get("type") == "m.room.member"
                    and e.get("state_key") == target_id
                    and (e.get("content") or {}).get("membership") == "ban"
                )

            return match

        try:
            async with asyncio.timeout(60):
                for room in forum_rooms:
                    await moderator.wait_for(banned_in(room), 60, after=mark)
        except TimeoutError:
            seen = [r for r in forum_rooms if any(map(banned_in(r), moderator.events[mark:]))]
            stored = await stored_memberships(synapse_db, target.user_id)
            raise AssertionError(
                f"the ban reached {len(seen)} of {len(forum_rooms)} rooms' timelines;"
                f" stored: {stored}"
            ) from None
        states = await asyncio.gather(
            *(membership(moderator, r, target.user_id) for r in forum_rooms)
        )
        assert states == ["ban"] * len(forum_rooms), states

        # The events were written by both event persisters (rooms are sharded over them).
        conn = await asyncpg.connect(f"{PG}/{synapse_db}")
        try:
            writers = {
                r["instance_name"]
                for r in await conn.fetch("SELECT DISTINCT instance_name FROM events")
            }
        finally:
            await conn.close()
        assert {"event_persister1", "event_persister2"} <= writers
    except BaseException:
        if proc.returncode is None:
            rest = await stop(proc)
            print(rest[-5000:])
        raise
    finally:
        for user in (moderator, target):
            if user is not None:
                await user.close()
        if proc.returncode is None:
            rest = await stop(proc)
        await drop_databases(synapse_db, forum_db)
    assert proc.returncode == 0, rest
    for port in (hs_port, base_port, base_port + 1, base_port + 2, base_port + 3, base_port + 4):
        assert port_is_free("127.0.0.1", port)  # every worker stopped with it
    left = await asyncio.to_thread(processes_naming, str(home))
    assert not left, f"Synapse processes left running: {left}"


def processes_naming(text: str) -> list[str]:
    """The pids of the processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue  # ended meanwhile
    return found
