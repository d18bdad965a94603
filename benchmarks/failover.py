"""Failover of the active forum: two ``forum run`` processes on one PostgreSQL database
and a Synapse started here (test rate limits); people knock one after another while the
active process is killed (SIGKILL); the standby takes over.

Prints JSON: the lease's length, the seconds from the kill until the standby holds the
lease (its standby web app gives way) and until it acts (its bots sync again), the knocks
sent (and how many during the gap), and the knocks lost (never answered) or doubled
(answered twice: a second DM, or a message of the bot said twice) — both must be 0 — with
the machine's core count.

    .venv/bin/python benchmarks/failover.py [--knocks 30] [--interval 0.5] [--kill-after 8]
        [--lease-seconds 6] [--rooms N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import make_url  # noqa: E402

from forum.homeserver import EmbeddedHomeserver, free_port  # noqa: E402
from forum.storage import create_database_if_missing, drop_database  # noqa: E402
from tests.harness import (  # noqa: E402
    PUBLICATION_Q,
    Forum,
    forum_data,
    register_bots,
    settings_from,
)
from tests.integration.test_standby import (  # noqa: E402
    Process,
    acting,
    bot_bodies,
    forum_rooms,
    knock,
    start_run,
)
from tests.matrix_user import TestUser  # noqa: E402

POSTGRES = os.environ.get(
    "FORUM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def answer_of(svc: Forum, user: TestUser, timeout: float) -> str | None:
    """The DM in which the person got the charter (None: never answered). Every DM the
    bot opens is joined, as a client would; a second DM counts as doubled."""
    joined: set[str] = set()

    async def join_every_dm() -> None:
        while True:
            for room in svc.dm_invites(user) - joined:
                joined.add(room)
                await user.join(room)
            await asyncio.sleep(0.2)

    joiner = asyncio.ensure_future(join_every_dm())
    try:
        charter = await user.wait_for(
            lambda e: (
                e["type"] == "m.room.message"
                and e["sender"] == svc.membership_bot_id
                and e["room_id"] in svc.dm_invites(user)
                and ("Charte" in e["content"]["body"] or "Charter" in e["content"]["body"])
            ),
            timeout,
        )
    except TimeoutError:
        print(f"{user.user_id}: no charter in {svc.dm_invites(user) or 'no DM'}", file=sys.stderr)
        return None
    finally:
        joiner.cancel()
    return str(charter["room_id"])


async def doubled(svc: Forum, user: TestUser, room: str) -> bool:
    """Answered more than once: a second DM, or a message of the bot said twice (checked
    after the answer to the person's next message, so that a late duplicate is seen)."""
    mark = user.mark()
    await user.send_text(room, "oui")
    await svc.wait_bot_text(user, room, *PUBLICATION_Q, after=mark, timeout=60)
    said = bot_bodies(svc, user, room)
    if len(svc.dm_invites(user)) != 1:
        print(f"{user.user_id}: {len(svc.dm_invites(user))} DMs", file=sys.stderr)
    return len(svc.dm_invites(user)) != 1 or len(said) != len(set(said))


class Takeover:
    """Watches the standby ``b`` once the active process is killed (:meth:`kill`, or
    :meth:`killed` for a process killed elsewhere): when it holds the lease (its standby
    web app gives way) and when it acts (its bots sync again)."""

    def __init__(self, b: Process) -> None:
        self.b = b
        self.killed_at: float | None = None
        self.leased_at: float | None = None
        self.acting_at: float | None = None

    def kill(self, a: Process) -> None:
        a.proc.send_signal(signal.SIGKILL)
        self.killed()

    def killed(self) -> None:
        self.killed_at = time.monotonic()

    async def run(self) -> None:
        """Returns once the standby acts."""
        while self.acting_at is None:
            if self.killed_at is not None:
                # each time is when the answer came (a slow answer is no earlier takeover)
                health = await self.b.health()
                if self.leased_at is None and (health is None or health["role"] == "active"):
                    self.leased_at = time.monotonic()  # the standby app gave way: leased
                if await acting(self.b):
                    self.acting_at = time.monotonic()
            await asyncio.sleep(0.05)

    def times(self) -> tuple[float, float, float]:
        """(killed, leased, acting), on ``time.monotonic()``."""
        assert self.killed_at is not None
        assert self.leased_at is not None
        assert self.acting_at is not None
        return self.killed_at, self.leased_at, self.acting_at


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="forum-failover-") as tmp_dir:
        tmp = Path(tmp_dir)
        hs = EmbeddedHomeserver(
            tmp / "synapse", server_name="failover.test", port=free_port(), for_tests=True
        )
        db_url = make_url(POSTGRES).set(database=f"forum_failover_{secrets.token_hex(4)}")
        await hs.start()
        await create_database_if_missing(db_url)
        processes: list[Process] = []
        users: list[TestUser] = []
        try:
            data = forum_data(hs, db_url=db_url.render_as_string(hide_password=False))
            data["service"] = {"lease_seconds": args.lease_seconds}
            if args.rooms is not None:  # a bigger forum: its own topic rooms
                data["topics"] = [
                    {
                        "slug": f"room-{i}",
                        "alias": f"room-{i}-{secrets.token_hex(2)}",
                        "name": {"fr": f"Salle {i}", "en": f"Room {i}"},
                        "topic": {"fr": "Banc d'essai", "en": "Benchmark"},
                    }
                    for i in range(args.rooms)
                ]
            settings = settings_from(data)
            await register_bots(hs, settings)
            a = await start_run(tmp, data, "a")
            processes.append(a)
            await a.wait_output("Press Ctrl-C to stop", timeout=900)
            b = await start_run(tmp, data, "b")
            processes.append(b)
            await b.wait_output("Standing by", timeout=180)
            users = [await TestUser.create(hs, f"knock{i}") for i in range(args.knocks)]
            svc = Forum(hs, settings, await forum_rooms(users[0], settings))

            watch = Takeover(b)
            watcher = asyncio.ensure_future(watch.run())
            sent_at: list[float] = []
            started = time.monotonic()
            for i, user in enumerate(users):
                if watch.killed_at is None and time.monotonic() - started >= args.kill_after:
                    watch.kill(a)
                    print(f"{time.strftime('%H:%M:%S')} killed a", file=sys.stderr)
                sent_at.append(time.monotonic())
                await knock(svc, user)
                print(f"{time.strftime('%H:%M:%S')} {user.user_id} knocks", file=sys.stderr)
                if i < len(users) - 1:
                    await asyncio.sleep(args.interval)
            if watch.killed_at is None:
                watch.kill(a)
            async with asyncio.timeout(120):
                await watcher
            killed_at, leased_at, acting_at = watch.times()
            rooms = await asyncio.gather(*(answer_of(svc, u, 90) for u in users))
            answered = [(u, r) for u, r in zip(users, rooms, strict=True) if r is not None]
            twice = await asyncio.gather(*(doubled(svc, u, r) for u, r in answered))
            in_gap = sum(1 for t in sent_at if killed_at <= t < acting_at)
            return {
                "cores": os.cpu_count(),
                "lease_seconds": args.lease_seconds,
                "topic_rooms": len(data["topics"]),
                "takeover_lease_seconds": round(leased_at - killed_at, 2),
                "takeover_acting_seconds": round(acting_at - killed_at, 2),
                "knocks": len(users),
                "knocks_during_gap": in_gap,
                "lost": len(users) - len(answered),
                "doubled": sum(twice),
            }
        finally:
            for user in users:
                await user.close()
            for process in processes:
                await process.stop()
                if args.logs:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    (args.logs / process.log.name).write_text(process.output, encoding="utf-8")
            await drop_database(db_url)
            await hs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knocks", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between knocks")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds into the load")
    parser.add_argument("--lease-seconds", type=float, default=6.0)
    parser.add_argument("--rooms", type=int, help="topic rooms (default: the shipped config's)")
    parser.add_argument("--logs", type=Path, help="keep the two processes' logs here")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
