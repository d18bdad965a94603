"""Benchmark of the moderation bot on an embedded Synapse; prints one JSON object.

Figures (each also as a ratio to the bare round trip measured in the same run):
the round trip (a message from one client seen in another's sync); ``!ban`` to the ban
seen in every forum room; the Nth flooding message to the redaction of all N seen; a
banned word to its redaction seen; a new rule in a subscribed policy list to the bans
in every room; a burst of messages from many senders across rooms (processed vs sent,
processing rate vs delivery rate); the process's resident memory.

    .venv/bin/python benchmarks/moderation.py [--burst 5000] [--senders 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forum.homeserver import EmbeddedHomeserver, free_port  # noqa: E402
from tests.forum_fixtures import forum_data  # noqa: E402
from tests.matrix_user import Event, TestUser  # noqa: E402
from tests.moderation_helpers import FAST, ModForum, start_moderated  # noqa: E402

EXTRA_TOPICS = 4  # 6 configured + 4 = 10 topic rooms


def summary(samples: list[float], base: float) -> dict[str, Any]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    median = statistics.median(ordered)
    return {
        "n": len(samples),
        "median_ms": round(median * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "median_ratio": round(median / base, 2),
        "p95_ratio": round(p95 / base, 2),
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def seen(user: TestUser, pred: Any, after: int, timeout: float = 30) -> float:
    await user.wait_for(pred, timeout, after=after)
    return time.perf_counter()


async def round_trip(forum: ModForum, a: TestUser, b: TestUser, n: int = 20) -> list[float]:
    room = forum.ids["lobby"]
    out = []
    for i in range(n):
        mark = b.mark()
        t0 = time.perf_counter()
        ev = await a.send_text(room, f"ping {i}")
        t1 = await seen(b, lambda e, ev=ev: e.get("event_id") == ev, mark)
        out.append(t1 - t0)
    return out


def all_bans(forum: ModForum, user_id: str) -> Any:
    waiting = set(forum.forum_rooms)

    def pred(e: Event) -> bool:
        if (
            e["type"] == "m.room.member"
            and e["state_key"] == user_id
            and e["content"]["membership"] == "ban"
        ):
            waiting.discard(e["room_id"])
        return not waiting

    return pred


def bot_said(forum: ModForum, contains: str) -> Any:
    """The bot's message in the management room naming ``contains`` (its echo or report):
    a sample is over only when the bot's follow-up work for it is done."""

    def pred(e: Event) -> bool:
        return (
            e["room_id"] == forum.mgmt
            and e["sender"] == forum.bot_id
            and e["type"] == "m.room.message"
            and contains in e["content"]["body"]
        )

    return pred


def all_redacted(ids: list[str]) -> Any:
    waiting = set(ids)

    def pred(e: Event) -> bool:
        if e["type"] == "m.room.redaction":
            waiting.discard(e.get("redacts") or e["content"].get("redacts"))
        return not waiting

    return pred


async def main(burst: int, senders: int) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        hs = EmbeddedHomeserver(
            Path(tmp) / "synapse", server_name="bench.test", port=free_port(), for_tests=True
        )
        await hs.start()
        try:
            return await run(hs, Path(tmp), burst, senders)
        finally:
            await hs.stop()


async def run(hs: EmbeddedHomeserver, tmp: Path, burst: int, senders: int) -> dict[str, Any]:
    curator = await TestUser.create(hs, "curator", sync=False)
    alias = f"bench-list-{secrets.token_hex(2)}"
    list_room = await curator.create_room(preset="public_chat", room_alias_name=alias)
    mod = await TestUser.create(hs, "mod")
    data = forum_data(hs, moderators=[mod.user_id])
    for i in range(EXTRA_TOPICS):
        data["topics"].append(
            {"slug": f"bench-{i}", "alias": f"bench-{i}-{secrets.token_hex(2)}",
             "name": {"fr": f"Banc {i}", "en": f"Bench {i}"},
             "topic": {"fr": "Banc", "en": "Bench"}}
        )  # fmt: skip
    data["moderation"] = {
        **FAST,
        "flood_messages": 5,
        "policy_lists": [f"#{alias}:{hs.server_name}"],
    }
    forum = await start_moderated(hs, tmp / "home", data=data, moderator=mod)
    forum.users.append(curator)  # closed with the others
    result: dict[str, Any] = {"forum_rooms": len(forum.forum_rooms)}
    try:
        bot = forum.bot
        quiet = bot.cfg
        bot.cfg = quiet.model_copy(update={"flood_messages": 1_000_000})
        a = await forum.member("a", sync=False)
        base_samples = await round_trip(forum, a, mod)
        base = statistics.median(base_samples)
        result["round_trip"] = summary(base_samples, base)

        # !ban -> banned in every forum room, seen by the moderator's client.
        targets = [await forum.member(f"ban{i}", sync=False) for i in range(8)]
        await forum.command("!help")  # the bot has handled everything before
        samples = []
        for t in targets:
            mark = mod.mark()
            t0 = time.perf_counter()
            await mod.send_text(forum.mgmt, f"!ban {t.user_id} bench")
            samples.append(await seen(mod, all_bans(forum, t.user_id), mark) - t0)
            await seen(mod, bot_said(forum, t.user_id), mark)
        result["ban_all_rooms"] = summary(samples, base)

        # The floor under it: the same bans sent all at once straight through the bot's
        # gateway (no command, no checks): what the homeserver itself needs.
        floor_targets = [await forum.member(f"floor{i}", sync=False) for i in range(8)]
        await forum.command("!help")
        samples = []
        for t in floor_targets:
            mark = mod.mark()
            t0 = time.perf_counter()
            await asyncio.gather(
                *(forum.ctx.moderation.ban(r, t.user_id, "bench") for r in forum.forum_rooms)
            )
            samples.append(await seen(mod, all_bans(forum, t.user_id), mark) - t0)
        result["ban_floor_bare_concurrent_bans"] = summary(samples, base)

        # Flood: the Nth message -> all N redactions seen.
        bot.cfg = quiet
        samples = []
        n = forum.bot.cfg.flood_messages
        for i in range(6):
            flooder = await forum.member(f"flood{i}", sync=False)
            await forum.command("!help")
            ids = [await flooder.send_text(forum.topic, f"flood {k}") for k in range(n - 1)]
            mark = mod.mark()
            t0 = time.perf_counter()
            ids.append(await flooder.send_text(forum.topic, "flood last"))
            samples.append(await seen(mod, all_redacted(ids), mark) - t0)
            await seen(mod, bot_said(forum, flooder.user_id), mark)
        result["flood_all_redacted"] = summary(samples, base)
        result["flood_all_redacted"]["messages"] = n

        # Banned word -> redaction seen.
        samples = []
        speaker = await forum.member("speaker", sync=False)
        await forum.command("!help")
        bot.cfg = quiet.model_copy(update={"steps": ["warn"], "flood_messages": 1_000_000})
        for i in range(10):
            mark = mod.mark()
            t0 = time.perf_counter()
            ev = await speaker.send_text(forum.topic, f"c'est une arnaque {i}")
            samples.append(await seen(mod, all_redacted([ev]), mark) - t0)
            await seen(mod, bot_said(forum, speaker.user_id), mark)
        result["word_redacted"] = summary(samples, base)

        # A rule in a subscribed list -> bans in every room.
        samples = []
        for i in range(6):
            victim = await forum.member(f"listed{i}", sync=False)
            await forum.command("!help")
            mark = mod.mark()
            t0 = time.perf_counter()
            await curator.put_state(
                list_room, "m.policy.rule.user",
                {"entity": victim.user_id, "recommendation": "m.ban", "reason": "bench"},
                f"rule-{i}",
            )  # fmt: skip
            samples.append(await seen(mod, all_bans(forum, victim.user_id), mark) - t0)
            await seen(mod, bot_said(forum, victim.user_id), mark)
        result["policy_rule_bans"] = summary(samples, base)

        result["burst"] = await burst_run(forum, burst, senders)
        result["rss_mb_process"] = round(rss_mb(), 1)
        result["rss_note"] = (
            "the whole benchmark process: the service (both bots, DB, web) plus "
            f"{len(forum.users)} test clients"
        )
    finally:
        await forum.service.stop()
        await forum.close_users()
    return result


async def burst_run(forum: ModForum, total: int, senders: int) -> dict[str, Any]:
    bot = forum.bot
    # Throughput only: no protection should act on the burst (50 people joining at once
    # would otherwise be a join wave).
    bot.cfg = bot.cfg.model_copy(
        update={"flood_messages": 1_000_000, "words": [], "join_wave_joins": 1_000_000}
    )
    rooms = [forum.ids["lobby"], *list(forum.ctx.topic_room_ids.values())][:10]
    people = await asyncio.gather(
        *(TestUser.create(forum.hs, f"burst{i}", sync=False) for i in range(senders))
    )
    forum.users.extend(people)
    via = [forum.hs.server_name]

    async def enter(i: int, p: TestUser) -> None:
        await forum.ctx.moderation.invite(forum.ids["space"], p.user_id)
        await p.join(forum.ids["space"], via=via)
        await p.join(rooms[i % len(rooms)], via=via)

    await asyncio.gather(*(enter(i, p) for i, p in enumerate(people)))
    start_count = bot.processed_messages
    per = total // senders
    t0 = time.perf_counter()
    acks: list[float] = []

    async def send_all(i: int, p: TestUser) -> None:
        room = rooms[i % len(rooms)]
        for k in range(per):
            await p.send_text(room, f"burst {i}-{k}")
            acks.append(time.perf_counter())

    await asyncio.gather(*(send_all(i, p) for i, p in enumerate(people)))
    sent = per * senders
    t_sent = time.perf_counter()
    deadline = t_sent + 120
    while bot.processed_messages - start_count < sent and time.perf_counter() < deadline:  # noqa: ASYNC110 - polling a counter
        await asyncio.sleep(0.05)
    processed = bot.processed_messages - start_count
    t_done = time.perf_counter()
    return {
        "sent": sent,
        "processed": processed,
        "senders": senders,
        "rooms": len(rooms),
        "delivered_rate_per_s": round(sent / (t_sent - t0), 1),
        "processed_rate_per_s": round(processed / (t_done - t0), 1),
        "lag_after_last_send_ms": round((t_done - t_sent) * 1000, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--senders", type=int, default=50)
    ns = parser.parse_args()
    print(json.dumps(asyncio.run(main(ns.burst, ns.senders)), indent=2))
