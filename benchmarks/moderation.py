"""Benchmark of the moderation bot on an embedded Synapse; prints one JSON object.

Figures (each also as a ratio to the bare round trip measured in the same run):
the round trip (a message from one client seen in another's sync); ``!ban`` to the ban
seen in every forum room; the Nth flooding message to the redaction of all N seen; a
banned word to its redaction seen; a new rule in a subscribed policy list to the bans
in every room; a burst of messages from many senders across rooms (processed vs sent,
processing rate vs delivery rate); the resident memory of the service after the run.
Without the homeserver (:mod:`benchmarks.policy_list`): a followed list of 10,000 rules
loaded, the memory it adds and the time of a check; the protections' decision on one
message. ``targets`` says which of the issue's targets are met.

The service (``forum run``'s features: both bots, the digest collector, the web app)
runs in its own process, as in production, so that its memory is its own; the benchmark
drives it through a pipe (read its room ids, tune a protection between phases, count
the messages it processed). Only the observing client (the moderator) syncs: idle test
clients would make the homeserver answer one long poll per client per event.

    .venv/bin/python benchmarks/moderation.py [--burst 5000] [--senders 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy_list import policy_list, protections  # noqa: E402  (this directory)

from forum.homeserver import EmbeddedHomeserver, free_port  # noqa: E402

if __name__ == "__main__" or TYPE_CHECKING:
    # The benchmark's side only: the service's process (started with "spawn", which
    # imports this file again under another name) must not load the test harness and
    # pytest, which the real service never imports; its memory is measured.
    from tests.harness import FAST_MODERATION as FAST
    from tests.harness import (
        forum_data,
        is_reply,
        register_bots,
        settings_from,
    )
    from tests.matrix_user import Event, TestUser

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


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def seen(user: TestUser, pred: Any, after: int, timeout: float = 30) -> float:
    await user.wait_for(pred, timeout, after=after)
    return time.perf_counter()


async def round_trip(forum: Remote, a: TestUser, b: TestUser, n: int = 50) -> list[float]:
    room = forum.ids["lobby"]
    out = []
    for i in range(n):
        mark = b.mark()
        t0 = time.perf_counter()
        ev = await a.send_text(room, f"ping {i}")
        t1 = await seen(b, lambda e, ev=ev: e.get("event_id") == ev, mark)
        out.append(t1 - t0)
    return out


def all_bans(forum: Remote, user_id: str) -> Any:
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


def bot_said(forum: Remote, contains: str) -> Any:
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


# --- the service, in its own process ------------------------------------------------------
def serve(data: dict[str, Any], home: str, conn: Any, extra: str | None = None) -> None:
    """The child process: the whole service, answering the benchmark's requests;
    ``extra``: the path of a module whose ``COMMANDS`` (name -> ``async f(service, arg)``)
    it answers too (another benchmark's requests)."""
    logging.basicConfig(level=os.environ.get("FORUM_BENCH_LOG", "WARNING"))  # INFO to diagnose
    asyncio.run(_serve(data, Path(home), conn, extra))


def _commands(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.COMMANDS)


async def _serve(data: dict[str, Any], home: Path, conn: Any, extra: str | None) -> None:
    from forum.app import Service, default_features
    from forum.consent import ConsentRecords
    from forum.settings import DEFAULT_CONFIG, parse_settings
    from moderation.membership.models import MEMBER
    from moderation.membership.repositories import People

    more = _commands(extra)
    imported_mb = rss_mb()  # what the imports cost, before the service starts
    service = Service(
        parse_settings(dict(data), "benchmark settings", env={}),
        config_dir=DEFAULT_CONFIG.parent, home=home,
        features=default_features(), web_port=0,
    )  # fmt: skip
    await service.start()
    started_mb = rss_mb()  # the service started: bots logged in, rooms provisioned
    ctx = service.ctx
    assert ctx is not None
    bot = service.feature("moderation")
    quiet = bot.cfg
    loop = asyncio.get_running_loop()
    answer: Any = {
        "room_ids": dict(ctx.rooms),
        "forum_rooms": list(ctx.rooms.forum_ids),
        "topic_rooms": list(ctx.rooms.topic_ids.values()),
        "bot_id": ctx.moderation_gateway.user_id,
        "rss_mb_after_imports": round(imported_mb, 1),
        "rss_mb_after_start": round(started_mb, 1),
        "test_harness_loaded": "pytest" in sys.modules or "tests.harness" in sys.modules,
    }
    while True:
        conn.send(answer)
        command, arg = await loop.run_in_executor(None, conn.recv)
        try:
            if command == "stop":
                await service.stop()
                conn.send(None)
                return
            if command == "cfg":  # a protection tuned for one phase (None: as configured)
                bot.cfg = quiet if arg is None else quiet.model_copy(update=arg)
                # the phase's own arrivals: not the joins of the set-up before it (20
                # senders entering their rooms would make a wave at its first knock)
                bot.join_wave.join_times.clear()
                answer = None
            elif command == "admit":  # members already (charter accepted): no entry flow
                async with ctx.db.sessionmaker() as s, s.begin():
                    for user in arg:
                        row = await People(s).create(user, "benchmark", "fr")
                        row.step = MEMBER
                        await ConsentRecords(s).add(
                            user, "charter", True, method="benchmark",
                            charter_version=ctx.settings.membership.charter.version,
                        )  # fmt: skip
                answer = None
            elif command == "invite":
                await asyncio.gather(
                    *(ctx.moderation_gateway.invite(ctx.rooms["space"], u) for u in arg)
                )
                answer = None
            elif command == "serial_bans":  # one room after another, as the peer does
                for room in ctx.rooms.forum_ids:
                    await ctx.moderation_gateway.ban(room, arg, "bench")
                answer = None
            elif command == "bare_bans":
                await asyncio.gather(
                    *(ctx.moderation_gateway.ban(r, arg, "bench") for r in ctx.rooms.forum_ids)
                )
                answer = None
            elif command == "processed":
                answer = bot.processed_messages
            elif command == "rss":
                answer = rss_mb()
            elif command in more:
                answer = await more[command](service, arg)
            else:
                answer = {"error": f"unknown command {command}"}
        except Exception as exc:  # reported to the benchmark, which fails loudly
            answer = {"error": repr(exc)}


class Remote:
    """The benchmark's side: the service's ids and a call through the pipe."""

    def __init__(self, hs: EmbeddedHomeserver, mod: TestUser, proc: Any, conn: Any) -> None:
        self.hs, self.mod, self.proc, self.conn = hs, mod, proc, conn
        self.lock = asyncio.Lock()
        self.info: dict[str, Any] = {}

    async def call(self, command: str, arg: Any = None) -> Any:
        async with self.lock:

            def roundtrip() -> Any:
                self.conn.send((command, arg))
                return self.conn.recv()

            answer = await asyncio.get_running_loop().run_in_executor(None, roundtrip)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"service: {command}: {answer['error']}")
        return answer

    @property
    def ids(self) -> dict[str, str]:
        return dict(self.info["room_ids"])

    @property
    def mgmt(self) -> str:
        return self.ids["management"]

    @property
    def topic(self) -> str:
        return self.ids["topic:droits-enfants"]

    @property
    def forum_rooms(self) -> list[str]:
        return list(self.info["forum_rooms"])

    @property
    def bot_id(self) -> str:
        return str(self.info["bot_id"])

    async def join_forum(self, people: list[TestUser]) -> None:
        """People join the Space (invited by the bot) and every other forum room."""
        via = [self.hs.server_name]
        await self.call("admit", [p.user_id for p in people])
        await self.call("invite", [p.user_id for p in people])
        others = [r for r in self.forum_rooms if r != self.ids["space"]]

        async def join(p: TestUser) -> None:
            await p.join(self.ids["space"], via=via)
            await asyncio.gather(*(p.join(r, via=via) for r in others))

        for i in range(0, len(people), 10):
            await asyncio.gather(*(join(p) for p in people[i : i + 10]))

    async def command(self, text: str) -> None:
        """A command from the moderator; returns once the bot replied to it."""
        mark = self.mod.mark()
        event_id = await self.mod.send_text(self.mgmt, text)
        await self.mod.wait_for(is_reply(self.mgmt, self.bot_id, event_id), 30, after=mark)


def targets(result: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets this benchmark measures (the spam check's own are measured
    with the homeserver's module, elsewhere)."""
    ban = result["ban_all_rooms"]["median_ms"]
    floor = result["ban_floor_bare_concurrent_bans"]["median_ms"]
    burst = result["burst"]
    return {
        **result["policy_list"]["targets"],
        "ban_within_1_3_of_concurrent_floor": ban <= 1.3 * floor,
        "burst_fully_processed": burst["processed"] >= burst["sent"],
        "service_rss_under_120_mb": result["rss_mb_service"] < 120,
    }


async def main(burst: int, senders: int) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    pure = {"policy_list": policy_list(), "protections_decision": protections()}
    with tempfile.TemporaryDirectory() as tmp:
        hs = EmbeddedHomeserver(
            Path(tmp) / "synapse", server_name="bench.test", port=free_port(), for_tests=True
        )
        await hs.start()
        users: list[TestUser] = []
        try:
            result = {**pure, **await run(hs, Path(tmp), burst, senders, users)}
            result["targets"] = targets(result)
            return result
        finally:
            for u in users:
                await u.close()
            await hs.stop()


async def people(hs: EmbeddedHomeserver, names: list[str]) -> list[TestUser]:
    out: list[TestUser] = []
    for i in range(0, len(names), 10):
        batch = names[i : i + 10]
        out += await asyncio.gather(*(TestUser.create(hs, n, sync=False) for n in batch))
    return out


async def run(
    hs: EmbeddedHomeserver, tmp: Path, burst: int, senders: int, users: list[TestUser]
) -> dict[str, Any]:
    curator = await TestUser.create(hs, "curator", sync=False)
    mod = await TestUser.create(hs, "mod")
    users += [curator, mod]
    alias = f"bench-list-{secrets.token_hex(2)}"
    list_room = await curator.create_room(preset="public_chat", room_alias_name=alias)
    groups = {
        "a": ["a"],
        "ban": [f"ban{i}" for i in range(8)],
        "floor": [f"floor{i}" for i in range(8)],
        "serial": [f"serial{i}" for i in range(4)],
        "flood": [f"flood{i}" for i in range(6)],
        "speaker": ["speaker"],
        "listed": [f"listed{i}" for i in range(6)],
        "burst": [f"burst{i}" for i in range(senders)],
    }
    made = await people(hs, [n for names in groups.values() for n in names])
    users += made
    it = iter(made)
    crowd = {key: [next(it) for _ in names] for key, names in groups.items()}

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
    settings = settings_from(data)
    await register_bots(hs, settings)
    home = tmp / "home"
    home.mkdir()
    mp = multiprocessing.get_context("spawn")
    parent_conn, child_conn = mp.Pipe()
    proc = mp.Process(target=serve, args=(data, str(home), child_conn), name="forum-service")
    proc.start()
    forum = Remote(hs, mod, proc, parent_conn)
    try:
        forum.info = await asyncio.get_running_loop().run_in_executor(None, parent_conn.recv)
        return await phases(forum, crowd, curator, list_room, burst)
    finally:
        if proc.is_alive():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(forum.call("stop"), 60)
        proc.join(30)
        if proc.is_alive():
            proc.kill()


async def phases(
    forum: Remote,
    crowd: dict[str, list[TestUser]],
    curator: TestUser,
    list_room: str,
    burst: int,
) -> dict[str, Any]:
    mod = forum.mod
    via = [forum.hs.server_name]
    rooms = [*forum.forum_rooms, forum.mgmt]
    for room in rooms:
        await mod.wait_for_invite(room, timeout=60)
    await asyncio.gather(*(mod.join(r, via=via) for r in rooms))
    members = [u for key, group in crowd.items() if key != "burst" for u in group]
    await forum.join_forum(members)
    result: dict[str, Any] = {"forum_rooms": len(forum.forum_rooms)}

    await forum.call("cfg", {"flood_messages": 1_000_000})
    (a,) = crowd["a"]
    await forum.command("!help")
    base_samples = await round_trip(forum, a, mod)
    base = statistics.median(base_samples)
    result["round_trip"] = summary(base_samples, base)

    # !ban -> banned in every forum room, seen by the moderator's client.
    samples = []
    for t in crowd["ban"]:
        mark = mod.mark()
        t0 = time.perf_counter()
        await mod.send_text(forum.mgmt, f"!ban {t.user_id} bench")
        samples.append(await seen(mod, all_bans(forum, t.user_id), mark) - t0)
        await seen(mod, bot_said(forum, t.user_id), mark)
    result["ban_all_rooms"] = summary(samples, base)

    async def bare(how: str, people: list[TestUser]) -> dict[str, Any]:
        samples = []
        for t in people:
            mark = mod.mark()
            t0 = time.perf_counter()
            await forum.call(how, t.user_id)
            samples.append(await seen(mod, all_bans(forum, t.user_id), mark) - t0)
        return summary(samples, base)

    # The floor under it: the same bans sent all at once straight through the bot's
    # gateway (no command, no checks): what the homeserver itself needs. For comparison,
    # the same bare bans one room after another (the leading peer's way).
    result["ban_floor_bare_concurrent_bans"] = await bare("bare_bans", crowd["floor"])
    result["ban_bare_one_room_after_another"] = await bare("serial_bans", crowd["serial"])

    # Flood: the Nth message -> all N redactions seen.
    await forum.call("cfg", None)
    samples = []
    n = 5  # the flood threshold configured above
    for flooder in crowd["flood"]:
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
    (speaker,) = crowd["speaker"]
    await forum.call("cfg", {"steps": ["warn"], "flood_messages": 1_000_000})
    for i in range(10):
        mark = mod.mark()
        t0 = time.perf_counter()
        ev = await speaker.send_text(forum.topic, f"c'est une arnaque {i}")
        samples.append(await seen(mod, all_redacted([ev]), mark) - t0)
        await seen(mod, bot_said(forum, speaker.user_id), mark)
    result["word_redacted"] = summary(samples, base)

    # A rule in a subscribed list -> bans in every room.
    samples = []
    for i, victim in enumerate(crowd["listed"]):
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

    result["burst"] = await burst_run(forum, crowd["burst"], burst)
    result["rss_mb_service"] = round(await forum.call("rss"), 1)
    result["rss_mb_service_after_imports"] = forum.info["rss_mb_after_imports"]
    result["rss_mb_service_after_start"] = forum.info["rss_mb_after_start"]
    result["service_loaded_test_harness"] = forum.info["test_harness_loaded"]
    result["rss_mb_homeserver"] = (
        round(rss_mb(forum.hs.process.pid), 1) if forum.hs.process.pid else None
    )
    result["rss_note"] = (
        "rss_mb_service: the service's own process (membership and moderation bots, digest "
        "collector, web app, outbox) after the run; rss_mb_service_after_imports: the same "
        "process once its modules are imported, before the service starts; "
        "rss_mb_service_after_start: once started (bots logged in, rooms provisioned); the "
        "homeserver is apart"
    )
    return result


async def burst_run(forum: Remote, senders: list[TestUser], total: int) -> dict[str, Any]:
    # Throughput only: no protection should act on the burst (50 people joining at once
    # would otherwise be a join wave).
    await forum.call(
        "cfg", {"flood_messages": 1_000_000, "words": [], "join_wave_joins": 1_000_000}
    )
    rooms = [forum.ids["lobby"], *forum.info["topic_rooms"]][:10]
    via = [forum.hs.server_name]
    await forum.call("admit", [p.user_id for p in senders])
    await forum.call("invite", [p.user_id for p in senders])

    async def enter(i: int, p: TestUser) -> None:
        await p.join(forum.ids["space"], via=via)
        await p.join(rooms[i % len(rooms)], via=via)

    await asyncio.gather(*(enter(i, p) for i, p in enumerate(senders)))
    start_count = await forum.call("processed")
    per = total // len(senders)
    t0 = time.perf_counter()

    async def send_all(i: int, p: TestUser) -> None:
        room = rooms[i % len(rooms)]
        for k in range(per):
            await p.send_text(room, f"burst {i}-{k}")

    await asyncio.gather(*(send_all(i, p) for i, p in enumerate(senders)))
    sent = per * len(senders)
    t_sent = time.perf_counter()
    deadline = t_sent + 120
    processed = await forum.call("processed") - start_count
    while processed < sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # polling the service's counter
        processed = await forum.call("processed") - start_count
    t_done = time.perf_counter()
    return {
        "sent": sent,
        "processed": processed,
        "senders": len(senders),
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
