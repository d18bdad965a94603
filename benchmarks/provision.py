"""Provisioning benchmark: a forum of 50 topic rooms on the embedded homeserver.

Prints JSON: seconds and homeserver requests (and writes) of a first and a second
provisioning run (target for the second: zero writes), and, in the same run, the time of
50 bare ``createRoom`` calls as the baseline, with the ratio.

    .venv/bin/python benchmarks/provision.py [--topics 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forum.bots import exempt_from_rate_limits  # noqa: E402
from forum.gateway import Gateway  # noqa: E402
from forum.homeserver import EmbeddedHomeserver, free_port  # noqa: E402
from forum.provisioning import provision  # noqa: E402
from forum.settings import DEFAULT_CONFIG, parse_settings  # noqa: E402
from forum.storage import Database  # noqa: E402


def settings_for(hs: EmbeddedHomeserver, topics: int, passwords: dict[str, str]):
    data = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    data["homeserver"] = {"mode": "external", "url": hs.url, "server_name": hs.server_name}
    data["bots"]["moderation"]["password"] = passwords["moderation"]
    data["bots"]["membership"]["password"] = passwords["accueil"]
    data["moderators"] = ["moderatrice"]
    data["topics"] = [
        {
            "slug": f"sujet-{i:02d}",
            "name": {"fr": f"Sujet {i}", "en": f"Topic {i}"},
            "topic": {"fr": f"Discussion {i}", "en": f"Discussion {i}"},
        }
        for i in range(topics)
    ]
    return parse_settings(data, env={})


async def main(topics: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        hs = EmbeddedHomeserver(Path(tmp) / "synapse", server_name="bench.test", port=free_port())
        await hs.start()
        try:
            passwords = {
                n: secrets.token_urlsafe(12)
                for n in ("moderation", "accueil", "moderatrice", "baseline")
            }
            for name, pw in passwords.items():
                await hs.register(name, pw, admin=name == "moderation")
            settings = settings_for(hs, topics, passwords)
            db = await Database.open(f"sqlite+aiosqlite:///{tmp}/bench.db")

            def gw(user: str) -> Gateway:
                return Gateway(
                    homeserver_url=hs.url,
                    user_id=f"@{user}:{hs.server_name}",
                    sessionmaker=db.sessionmaker,
                    password=passwords[user],
                )

            mod, mem, base = gw("moderation"), gw("accueil"), gw("baseline")
            for g in (mod, mem, base):
                await g.login()
            await exempt_from_rate_limits(mod, [mod.user_id, mem.user_id, base.user_id])

            runs = []
            for _ in range(2):
                before = (mod.stats.requests, mod.stats.writes)
                t0 = time.perf_counter()
                the_plan, result = await provision(
                    settings, mod, db.sessionmaker, joiners={mem.user_id: mem}
                )
                runs.append(
                    {
                        "seconds": round(time.perf_counter() - t0, 3),
                        "requests": mod.stats.requests - before[0],
                        "writes": mod.stats.writes - before[1],
                        "changes": len(the_plan.changes),
                        "failed": len(result.failed) if result else 0,
                    }
                )
            t0 = time.perf_counter()
            for i in range(topics):
                await base.create_room(
                    {
                        "name": f"baseline {i}",
                        "preset": "private_chat",
                        "room_version": settings.room_version,
                    }
                )
            baseline = time.perf_counter() - t0
            for g in (mod, mem, base):
                await g.close()
            await db.close()
        finally:
            await hs.stop()
    return {
        "benchmark": "provision",
        "topic_rooms": topics,
        "rooms_total": topics + 5,
        "first_run": runs[0],
        "second_run": runs[1],
        "baseline_bare_createRoom": {"rooms": topics, "seconds": round(baseline, 3)},
        "ratio_first_run_to_baseline": round(runs[0]["seconds"] / baseline, 2),
        "second_run_writes_target": 0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--topics", type=int, default=50)
    print(json.dumps(asyncio.run(main(parser.parse_args().topics)), indent=2))
