"""Benchmark of a join wave from another server; prints one JSON object.

Two embedded Synapse servers federate on loopback: the forum's, which loads the
spam-checker module answered by the forum (the moderation bot's feature), and a remote
one whose ``--wave`` people knock on the forum's Space in ``--wave-seconds`` (an open
loop, on schedule whatever the answers). The join-wave protection is set at
``--threshold`` arrivals a minute. Each knock reaches the forum's homeserver over
federation, where the spam checker counts it before Synapse stores it; the bot counts it
again when its sync shows it.

Two waves run in turn, each with new people and the rooms unlocked between them:
``door`` (as the forum runs) and ``bot_only`` (the spam checker's count switched off: the
bot alone counts, from its sync, as for its own server's knocks). For each: seconds after
the first knock until the wave is decided (the doors closed: joins to the topic rooms
refused) and until the moderators are told the topic rooms are knock-only, with the
time the threshold's knock was sent.

    .venv/bin/python benchmarks/federated_wave.py [--wave 200] [--wave-seconds 20] [--threshold 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forum.homeserver import EmbeddedHomeserver  # noqa: E402
from tests.harness import Forum, ForumStarter, antispam_config, federating  # noqa: E402
from tests.matrix_user import TestUser  # noqa: E402


async def wave(
    forum: Forum, remote: EmbeddedHomeserver, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    bot = forum.bot
    people: list[TestUser] = []
    for i in range(0, args.wave, 10):
        people += await asyncio.gather(
            *(
                TestUser.create(remote, f"{label}{k}", sync=False)
                for k in range(i, min(i + 10, args.wave))
            )
        )
    bot.join_wave.join_times.clear()
    mark = forum.mod.mark()
    sent: list[float] = []
    failed: list[str] = []
    decided: list[float] = []
    locks = bot.locks
    real_lock = locks.lock_joins

    async def lock_joins() -> list[str]:  # the decision: the doors close as it starts
        decided.append(time.perf_counter())
        return await real_lock()

    locks.lock_joins = lock_joins  # type: ignore[method-assign]

    async def knock(u: TestUser) -> None:
        sent.append(time.perf_counter())
        try:
            await u.knock(forum.ids["space"], "Hello", via=forum.via)
        except Exception as exc:  # counted: a busy homeserver times a knock out
            failed.append(repr(exc))

    told_at: list[float] = []

    async def tell() -> None:  # the moderators' announcement, when it reaches them
        await forum.management_message("!unlock-joins", after=mark, timeout=args.timeout)
        told_at.append(time.perf_counter())

    told = asyncio.ensure_future(tell())
    start = time.perf_counter()
    knocks = []
    for k, u in enumerate(people):
        delay = start + k * args.wave_seconds / len(people) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        knocks.append(asyncio.ensure_future(knock(u)))
    await asyncio.gather(told, *knocks)
    locks.lock_joins = real_lock  # type: ignore[method-assign]
    await forum.command("!unlock-joins")
    for u in people:
        await u.close()
    nth = sorted(sent)[args.threshold - 1] - start if len(sent) >= args.threshold else None
    return {
        "knocks": len(people),
        "failed_knocks": len(failed),
        "first_failure": failed[0] if failed else None,
        "threshold_knock_sent_after_s": None if nth is None else round(nth, 2),
        "decided_after_s": round(decided[0] - start, 2) if decided else None,
        "moderators_told_after_s": round(told_at[0] - start, 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        servers = [
            federating(Path(tmp) / "synapse-forum", antispam=True),
            federating(Path(tmp) / "synapse-remote"),
        ]
        home, remote = servers
        await asyncio.gather(*(hs.start() for hs in servers))
        try:
            async with ForumStarter(home, lambda: Path(tmp)) as start:
                forum = await start(
                    "moderation",
                    moderator=True,
                    moderator_joins="*",
                    config=antispam_config(home),
                    moderation={"join_wave_joins": args.threshold, "join_wave_seconds": 60},
                )
                listener = forum.bot.antispam
                assert listener is not None, "the spam checker is not running"
                judge = listener.checker.decide.__self__  # the Judge whose method it is
                out: dict[str, Any] = {"nproc": os.cpu_count(), "args": vars(args)}
                out["door"] = await wave(forum, remote, args, "door")
                real = judge.knocked

                async def not_counted(ev: Any) -> None:
                    return None

                judge.knocked = not_counted  # type: ignore[method-assign]
                try:
                    out["bot_only"] = await wave(forum, remote, args, "botonly")
                finally:
                    judge.knocked = real  # type: ignore[method-assign]
                out["load_average"] = os.getloadavg()
                return out
        finally:
            await asyncio.gather(*(hs.stop() for hs in servers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wave", type=int, default=200, help="remote people knocking")
    parser.add_argument("--wave-seconds", type=float, default=20)
    parser.add_argument("--threshold", type=int, default=15, help="arrivals a minute")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for a lock")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
