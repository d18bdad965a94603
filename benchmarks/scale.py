"""Benchmark of the forum on the scaled profile (Synapse's workers on PostgreSQL and Redis,
the forum on PostgreSQL); prints one JSON object.

For each event-persister count (1, then N; the same run, the same machine), on its own
fresh Synapse and databases:

- registration of the members through the admin API (shared secret, bcrypt cost 4);
- provisioning of the forum with ``--rooms`` topic rooms in the Space;
- ``!ban`` across every forum room: from the moderator's command to the ban seen in every
  room by the moderator's client; and its floor, the same bans sent all at once straight
  through the bot's gateway (no command, no checks);

and on the N-persister profile only:

- messages at ``--rate`` per second for ``--duration`` seconds, spread over the topic
  rooms by ``--senders`` people: the moderation bot's processing lag (the time from a
  send to the moment the bot's count of processed messages covers it: the bot processes
  them in arrival order), median and p95;
- the forum service's resident memory (its own process: both bots, the digest collector,
  the web app) after admitting ``--members`` members, and sampled during the load.

Not measured here (yet): the join wave of knocks, the 10,000-rule policy list, the digest
build and the standby failover.

    .venv/bin/python benchmarks/scale.py [--persisters 4] [--members 10000] [--rooms 100]
        [--rate 50] [--duration 600] [--senders 20] [--ban-samples 5] [--py-spy DIR]

``--py-spy DIR`` records the main process and the event persisters with py-spy (when it
is installed: ``pip install py-spy``) during the ban floor and sums the profiles up.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on 127.0.0.1:6379.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402


def _sibling(name: str, as_name: str) -> Any:
    """A benchmark next to this one, as a module (a site package named ``benchmarks``
    shadows this directory)."""
    import importlib.util

    if as_name in sys.modules:
        return sys.modules[as_name]
    where = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(as_name, where)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[as_name] = module  # the service's child process unpickles serve() by name
    spec.loader.exec_module(module)
    return module


_moderation = _sibling("moderation", "bench_moderation")
Remote, all_bans, rss_mb, serve = (
    _moderation.Remote,
    _moderation.all_bans,
    _moderation.rss_mb,
    _moderation.serve,
)
from forum.homeserver import EmbeddedHomeserver, WorkerLayout, free_port, port_is_free  # noqa: E402
from tests.harness import FAST_MODERATION, forum_data, register_bots, settings_from  # noqa: E402
from tests.matrix_user import TestUser  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"


def percentiles(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU time of every PostgreSQL process on the machine (its backends included)."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                total += cpu_seconds(comm.parent.name)
        except OSError:
            continue
    return total


def cpu_by_process(hs: EmbeddedHomeserver) -> dict[str, float]:
    out = {"main": cpu_seconds(hs.process.pid or 0), "postgres (all)": postgres_cpu()}
    out |= {name: cpu_seconds(pid) for name, pid in hs.process.worker_pids.items()}
    return out


def top_frames(raw: Path, limit: int = 10) -> dict[str, Any]:
    """A py-spy ``--format raw`` profile summed up: the functions where the samples were
    (self), and the Synapse functions they were under (inclusive), as shares of all."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in {f for f in frames if "synapse/" in f}:
            under[frame] = under.get(frame, 0) + count

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:limit]
        return [(name, round(100 * n / total, 1)) for name, n in ranked]

    return {"samples": total, "self_pct": share(own), "synapse_inclusive_pct": share(under)}


def _py_spy(where: Path) -> str | None:
    """py-spy's path (None without it); makes ``where``."""
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return None
    where.mkdir(parents=True, exist_ok=True)
    return exe


async def spy(hs: EmbeddedHomeserver, where: Path) -> list[tuple[str, Any, Path]]:
    """py-spy recording the main process and the event persisters (stopped by
    :func:`unspy`); nothing when py-spy is not installed."""
    exe = await asyncio.to_thread(_py_spy, where)
    if exe is None:
        return []
    targets = {"main": hs.process.pid or 0, **hs.process.worker_pids}
    out = []
    for name, pid in targets.items():
        if name == "main" or name.startswith("event_persister"):
            file = where / f"{name}.txt"
            proc = await asyncio.create_subprocess_exec(
                exe, "record", "--format", "raw", "-r", "100", "-o", str(file), "-p", str(pid),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out.append((name, proc, file))
    await asyncio.sleep(1)  # py-spy attaches
    return out


async def unspy(spies: list[tuple[str, Any, Path]]) -> dict[str, Any]:
    import signal

    found: dict[str, Any] = {}
    for name, proc, file in spies:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        await proc.wait()
        if file.exists():
            found[name] = top_frames(file)
    return found


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


async def register_many(hs: EmbeddedHomeserver, count: int, width: int = 16) -> float:
    """Register ``count`` members through the admin API; the seconds it took."""
    tag = secrets.token_hex(2)
    queue = iter(range(count))
    t0 = time.perf_counter()

    async def worker() -> None:
        for i in queue:
            await hs.register(f"m{i}-{tag}", "pw-member-bench", display_name=f"Member {i}")

    await asyncio.gather(*(worker() for _ in range(width)))
    return time.perf_counter() - t0


class Profile:
    """One scaled Synapse with ``persisters`` event persisters and the forum on it."""

    def __init__(self, tmp: Path, persisters: int, args: argparse.Namespace) -> None:
        tag = secrets.token_hex(3)
        self.tmp, self.args, self.persisters = tmp / f"p{persisters}", args, persisters
        self.synapse_db, self.forum_db = f"bench_synapse_{tag}", f"bench_forum_{tag}"
        layout = WorkerLayout(
            database_url=f"{PG}/{self.synapse_db}",
            event_persisters=persisters,
            base_port=free_block(persisters + 4),
        )
        self.hs = EmbeddedHomeserver(
            self.tmp / "synapse",
            server_name="bench.test",
            port=free_port(),
            for_tests=True,
            workers=layout,
            extra_config={"bcrypt_rounds": 4},
        )
        self.users: list[TestUser] = []
        self.proc: Any = None
        self.forum: Remote | None = None

    async def __aenter__(self) -> Profile:
        t0 = time.perf_counter()
        try:
            await self.hs.start(timeout=300)
        except BaseException:  # __aexit__ does not run: its database goes here
            await drop_databases(self.synapse_db, self.forum_db)
            raise
        self.start_s = time.perf_counter() - t0
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for u in self.users:
                await u.close()
            if self.forum is not None and self.proc.is_alive():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.forum.call("stop"), 60)
            if self.proc is not None:
                self.proc.join(30)
                if self.proc.is_alive():
                    self.proc.kill()
        finally:
            await self.hs.stop()
            await drop_databases(self.synapse_db, self.forum_db)

    async def start_forum(self, mod: TestUser) -> tuple[Remote, float]:
        data = forum_data(
            self.hs,
            moderators=[mod.user_id],
            db_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.forum_db}",
        )
        data["topics"] = [
            {
                "slug": f"room-{i}",
                "alias": f"room-{i}-{secrets.token_hex(2)}",
                "name": {"fr": f"Salle {i}", "en": f"Room {i}"},
                "topic": {"fr": "Banc d'essai", "en": "Benchmark"},
            }
            for i in range(self.args.rooms)
        ]
        data["moderation"] = {
            **FAST_MODERATION,
            "flood_messages": 1000,
            "words": [],
            "join_wave_joins": 10000,
        }
        settings = settings_from(data)
        await register_bots(self.hs, settings)
        asyncpg_url = f"{PG}/postgres"
        conn = await asyncpg.connect(asyncpg_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.forum_db}"')
        finally:
            await conn.close()
        home = self.tmp / "home"
        home.mkdir(parents=True)
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe()
        self.proc = mp.Process(target=serve, args=(data, str(home), child), name="forum")
        t0 = time.perf_counter()
        self.proc.start()
        forum = self.forum = Remote(self.hs, mod, self.proc, parent)
        loop = asyncio.get_running_loop()
        forum.info = await loop.run_in_executor(None, parent.recv)
        return forum, time.perf_counter() - t0

    async def people(self, name: str, count: int, sync: bool = False) -> list[TestUser]:
        out: list[TestUser] = []
        for i in range(0, count, 10):
            batch = range(i, min(i + 10, count))
            out += await asyncio.gather(
                *(TestUser.create(self.hs, f"{name}{k}", sync=sync) for k in batch)
            )
        self.users += out
        return out


async def bans(forum: Remote, targets: list[TestUser], how: str) -> dict[str, Any]:
    """``how``: "command" (the moderator's !ban) or "bare_bans" (the floor)."""
    mod = forum.mod
    samples = []
    for t in targets:
        mark = mod.mark()
        t0 = time.perf_counter()
        if how == "command":
            await mod.send_text(forum.mgmt, f"!ban {t.user_id} bench")
        else:
            await forum.call(how, t.user_id)
        await mod.wait_for(all_bans(forum, t.user_id), 120, after=mark)
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


async def run_profile(tmp: Path, persisters: int, args: argparse.Namespace, full: bool) -> Any:
    """The figures of one profile; those measured before a failure are kept, with it."""
    out: dict[str, Any] = {"event_persisters": persisters}
    try:
        await measure_profile(out, tmp, persisters, args, full)
    except Exception as exc:  # reported in the JSON with what was measured before
        out["error"] = repr(exc)
    print(json.dumps(out), file=sys.stderr, flush=True)  # progress, in case of a later crash
    return out


async def measure_profile(
    out: dict[str, Any], tmp: Path, persisters: int, args: argparse.Namespace, full: bool
) -> None:
    async with Profile(tmp, persisters, args) as p:
        out["synapse_start_s"] = round(p.start_s, 1)
        if full and args.members:
            took = await register_many(p.hs, args.members)
            out["registration"] = {
                "members": args.members,
                "seconds": round(took, 1),
                "per_second": round(args.members / took, 1),
            }
        mod = await TestUser.create(p.hs, "mod")
        p.users.append(mod)
        forum, took = await p.start_forum(mod)
        out["forum_start_and_provisioning_s"] = round(took, 1)
        out["forum_rooms"] = len(forum.forum_rooms)
        via = [p.hs.server_name]
        rooms = [*forum.forum_rooms, forum.mgmt]
        await mod.wait_for_invite(forum.mgmt, timeout=120)
        for i in range(0, len(rooms), 20):
            await asyncio.gather(*(mod.join(r, via=via) for r in rooms[i : i + 20]))
        targets = await p.people("target", 2 * args.ban_samples)
        spies = await spy(p.hs, Path(args.py_spy) / f"p{persisters}") if args.py_spy else []
        before, t0 = cpu_by_process(p.hs), time.perf_counter()
        floor = await bans(forum, targets[: args.ban_samples], "bare_bans")
        wall = time.perf_counter() - t0
        after = cpu_by_process(p.hs)
        if spies:
            out["ban_floor_py_spy"] = await unspy(spies)
        out["ban_floor_cpu_seconds"] = {
            "wall": round(wall, 2),
            **{k: round(after[k] - before.get(k, 0.0), 2) for k in after},
        }
        command = await bans(forum, targets[args.ban_samples :], "command")
        out["ban_floor_concurrent"] = floor
        out["ban_command"] = command
        out["ban_command_over_floor"] = round(command["median_ms"] / floor["median_ms"], 2)
        if full:
            out["load"] = await load(p, forum, args)
            out["rss_mb_synapse_main"] = round(rss_mb(p.hs.process.pid or 0), 1)


async def load(p: Profile, forum: Remote, args: argparse.Namespace) -> dict[str, Any]:
    """Messages at ``rate``/s over the topic rooms; the bot's processing lag; its memory."""
    if args.members:
        members = [f"@m{i}-x:{p.hs.server_name}" for i in range(args.members)]
        for i in range(0, len(members), 1000):
            await forum.call("admit", members[i : i + 1000])
    rss_admitted = await forum.call("rss")
    senders = await p.people("sender", args.senders)
    await forum.call("admit", [s.user_id for s in senders])
    await forum.call("invite", [s.user_id for s in senders])
    topics: list[str] = list(forum.info["topic_rooms"])
    via = [p.hs.server_name]

    async def enter(i: int, s: TestUser) -> None:  # each sender in its share of the rooms
        await s.join(forum.ids["space"], via=via)
        for room in topics[i :: len(senders)]:
            await s.join(room, via=via)

    for i in range(0, len(senders), 5):
        await asyncio.gather(*(enter(i + k, s) for k, s in enumerate(senders[i : i + 5])))
    # The homeserver's own delivery time, for comparison: a sender's message seen in the
    # moderator's sync (the bot learns of a message no faster than that).
    trips = []
    for k in range(20):
        mark = forum.mod.mark()
        t0 = time.perf_counter()
        event_id = await senders[0].send_text(topics[0], f"ping {k}")
        await forum.mod.wait_for(lambda e, ev=event_id: e.get("event_id") == ev, 30, after=mark)
        trips.append(time.perf_counter() - t0)
    start = await forum.call("processed")
    total = int(args.rate * args.duration)
    sent_at: list[float] = []
    done_at: list[float] = []
    rss: list[float] = []
    finished = asyncio.Event()
    failed: list[str] = []

    async def watch() -> None:
        seen = start
        last_rss = 0.0
        while not finished.is_set() or seen - start < len(sent_at):
            now = time.perf_counter()
            count = await forum.call("processed")
            done_at.extend([now] * (count - seen))
            seen = count
            if now - last_rss > 5:
                rss.append(await forum.call("rss"))
                last_rss = now
            if finished.is_set() and now > finish_deadline:
                return
            await asyncio.sleep(0.02)  # polling the service's counter

    async def send(k: int) -> None:
        i = k % len(senders)
        s = senders[i]
        mine = topics[i :: len(senders)]
        room = mine[(k // len(senders)) % len(mine)]
        sent_at.append(time.perf_counter())
        try:
            await s.send_text(room, f"message {k}")
        except Exception as exc:  # counted: an overloaded homeserver times a send out
            failed.append(repr(exc))

    finish_deadline = float("inf")
    watcher = asyncio.ensure_future(watch())
    t0 = time.perf_counter()
    sends = []
    for k in range(total):  # an open loop: sends start on schedule, whatever the answers
        delay = t0 + k / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.ensure_future(send(k)))
    await asyncio.gather(*sends)
    t_sent = time.perf_counter()
    finish_deadline = t_sent + 120
    finished.set()
    await watcher
    lags = [d - s for s, d in zip(sorted(sent_at), done_at, strict=False)]
    return {
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "sent": len(sent_at),
        "failed_sends": len(failed),
        "first_failure": failed[0] if failed else None,
        "processed": len(done_at),
        "achieved_send_rate_per_s": round(len(sent_at) / (t_sent - t0), 1),
        "processing_lag": percentiles(lags),
        "round_trip_before_load": percentiles(trips),
        "senders": len(senders),
        "topic_rooms": len(topics),
        "members_admitted": args.members,
        "rss_mb_service_after_admitting": round(rss_admitted, 1),
        "rss_mb_service_during_load_max": round(max(rss or [0.0]), 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, Any] = {"cores": os.cpu_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        profiles = [1, args.persisters] if args.persisters != 1 else [1]
        for n in profiles:
            result[f"persisters_{n}"] = await run_profile(
                Path(tmp), n, args, full=(n == args.persisters)
            )
    one, many = result["persisters_1"], result[f"persisters_{args.persisters}"]
    if "ban_floor_concurrent" in one and "ban_floor_concurrent" in many:
        result["floor_ratio_1_over_n"] = round(
            one["ban_floor_concurrent"]["median_ms"] / many["ban_floor_concurrent"]["median_ms"],
            2,
        )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--persisters", type=int, default=4)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--ban-samples", type=int, default=5)
    parser.add_argument(
        "--py-spy", metavar="DIR", help="profile Synapse's processes during the ban floor"
    )
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
