"""Benchmark of the forum on the scaled profile (Synapse's workers on PostgreSQL and Redis,
the forum on PostgreSQL); prints one JSON object.

For each event-persister count (1, then N; the same run, the same machine), on its own
fresh Synapse and databases:

- registration of the members through the admin API (shared secret, bcrypt cost 4);
- provisioning of the forum with ``--rooms`` topic rooms in the Space;
- ``!ban`` across every forum room: from the moderator's command to the ban seen in every
  room by the moderator's client; and its floor, the same bans sent all at once straight
  through the bot's gateway (no command, no checks);

and on the N-persister profile only (each phase chosen with ``--phases``; one that fails is
reported with its error, and the next ones run; each one starts once the homeserver has
worked off what came before it, ``<phase>_settled_after_s``):

- messages at ``--rate`` per second for ``--duration`` seconds, spread over the topic
  rooms by ``--senders`` people: the moderation bot's processing lag (the time from a
  send to the moment the bot's count of processed messages covers it: the bot processes
  them in arrival order), median and p95; and ``processing_lag_from_stored``, each
  message's time from its creation on the homeserver to the end of the bot's handling
  (without the senders' queue in front of a homeserver that takes fewer than ``--rate``);
- the forum service's resident memory (its own process: both bots, the digest collector,
  the web app) after admitting ``--members`` members, and sampled during the load;
- ``knocks``: a join wave, ``--wave`` newcomers in ``--wave-seconds`` at each door of
  ``--wave-door`` (``knock``: a knock on the Space; ``lobby``: a join of the public lobby),
  with the join-wave protection at ``--wave-joins`` joins a minute: the time until the
  topic rooms are knock-only, and until every newcomer has the membership bot's DM invite
  (each newcomer's client asks ``/sync`` in turn, so the times are as fine as one round);
- ``policy``: a followed list of ``--policy-rules`` rules (users, servers, globs; among them
  ``--policy-hits`` naming members) filed in the bot's index and applied to the members by
  the bot's own code: the times, whom it bans, the memory it adds (see
  ``benchmarks/scale_service.py``);
- ``digest``: this week's digest built and rendered in the service from the messages of
  the load (the senders consented to publication): the time, the service's memory;
- ``failover``: a second ``forum run`` stands by on the same PostgreSQL (until it is ready
  to take over: bots logged in, rooms read); messages at
  ``--rate`` for ``--failover-duration`` seconds with ``--failover-knocks`` knocks spread
  around the kill (from 3 s before to 3 s after twice the lease); the active service is
  killed (SIGKILL) ``--kill-after`` seconds in: the time until the standby holds the lease
  and acts, the knocks never answered or answered twice, the messages never recorded by
  the collector, the outbox's duplicates (all must be 0);
- the forum's resident memory throughout (sampled every second, each phase's maximum, the
  end; after a failover, the process that took over).

    .venv/bin/python benchmarks/scale.py [--persisters 4] [--members 10000] [--rooms 100]
        [--rate 50] [--duration 600] [--senders 20] [--ban-samples 5] [--py-spy DIR]
        [--phases load,knocks,policy,digest,failover] [--wave 1000] [--wave-seconds 60]
        [--wave-door knock] [--policy-rules 10000] [--failover-duration 120]

A reduced run for 2 cores, e.g.: ``--members 1000 --rooms 100 --wave 200 --duration 60``.

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
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
from tests.harness import (  # noqa: E402
    FAST_MODERATION,
    antispam_config,
    forum_data,
    loopback_hook,
    register_bots,
    settings_from,
)
from tests.matrix_user import MatrixRequestError, TestUser  # noqa: E402

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


async def register_many(
    hs: EmbeddedHomeserver, count: int, width: int = 16
) -> tuple[float, list[str]]:
    """Register ``count`` members through the admin API; the seconds it took, their ids
    (``@m<i>-<tag>:server``, in order)."""
    tag = secrets.token_hex(2)
    queue = iter(range(count))
    ids = [f"@m{i}-{tag}:{hs.server_name}" for i in range(count)]
    t0 = time.perf_counter()

    async def worker() -> None:
        for i in queue:
            await hs.register(f"m{i}-{tag}", "pw-member-bench", display_name=f"Member {i}")

    await asyncio.gather(*(worker() for _ in range(width)))
    return time.perf_counter() - t0, ids


class RssSampler:
    """The forum's resident memory every second, labelled with the phase under way;
    :meth:`follow` moves it to another process (the standby that took over)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.phase, self.who = pid, "start", "active"
        self.samples: list[tuple[str, str, float]] = []
        self.task = asyncio.ensure_future(self.run())

    def follow(self, pid: int, who: str) -> None:
        self.pid, self.who = pid, who

    def take(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            mb = rss_mb(self.pid)
            if mb:
                self.samples.append((self.phase, self.who, mb))

    async def run(self) -> None:
        while True:
            self.take()
            await asyncio.sleep(1)

    def report(self) -> dict[str, Any]:
        self.take()
        self.task.cancel()
        by_phase: dict[str, float] = {}
        for phase, _, mb in self.samples:
            by_phase[phase] = max(by_phase.get(phase, 0.0), mb)
        return {
            "samples": len(self.samples),
            "max": round(max((mb for *_, mb in self.samples), default=0.0), 1),
            "end": round(self.samples[-1][2], 1) if self.samples else None,
            "end_process": self.samples[-1][1] if self.samples else None,
            "max_by_phase": {k: round(v, 1) for k, v in by_phase.items()},
        }


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
        # with --antispam, every Synapse process asks the forum's spam checker
        self.hook = loopback_hook() if args.antispam else None
        self.hs = EmbeddedHomeserver(
            self.tmp / "synapse",
            server_name="bench.test",
            port=free_port(),
            for_tests=True,
            workers=layout,
            extra_config={"bcrypt_rounds": 4},
            antispam=self.hook,
        )
        self.users: list[TestUser] = []
        self.proc: Any = None
        self.forum: Remote | None = None
        self.data: dict[str, Any] = {}
        self.member_ids: list[str] = []
        self.senders: list[TestUser] = []
        self.standby: list[Any] = []  # forum run processes (benchmarks/failover.py's)

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
            for process in self.standby:
                await process.stop()
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
        # the lease of the service (a standby takes over when it has not been renewed)
        data["service"] = {"lease_seconds": self.args.lease_seconds, "standby_poll_seconds": 0.5}
        data.setdefault("bots", {})["lanes"] = self.args.lanes
        if self.hook is not None:
            data |= antispam_config(self.hs)
        self.data = data
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
        extra = str(Path(__file__).with_name("scale_service.py"))
        self.proc = mp.Process(target=serve, args=(data, str(home), child, extra), name="forum")
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
            took, p.member_ids = await register_many(p.hs, args.members)
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
        if args.room_concurrency:
            out["room_concurrency"] = await forum.call("room_concurrency", args.room_concurrency)
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
        print(json.dumps(out), file=sys.stderr, flush=True)  # progress: the bans, before the rest
        if full:
            await full_phases(out, p, forum, args)


WAVE_IN_LOAD = "wave-load-"  # the names of the newcomers knocking during the load


async def load(
    p: Profile, forum: Remote, args: argparse.Namespace, wave_after: float | None = None
) -> dict[str, Any]:
    """Messages at ``rate``/s over the topic rooms; the bot's processing lag; its memory.
    With ``wave_after``, a join wave of knocks (``--wave`` newcomers) begins that many
    seconds into the load: arrivals measured while the bots work through messages."""
    await admit_members(p, forum)
    rss_admitted = await forum.call("rss")
    senders = await enter_senders(p, forum, args)
    # the wave's accounts exist before the load: their registration is not measured
    wave_people = await p.people(WAVE_IN_LOAD, args.wave, sync=False) if wave_after else []
    topics: list[str] = list(forum.info["topic_rooms"])
    # The homeserver's own delivery time, for comparison: a sender's message seen in the
    # moderator's sync (the bot learns of a message no faster than that).
    trips = [await round_trip(senders[0], forum.mod, topics[0], f"ping {k}") for k in range(20)]
    await forum.call("lag_watch")
    await forum.call("lags")  # from here on
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
        s, room = sender_room(senders, topics, k)
        sent_at.append(time.perf_counter())
        try:
            await s.send_text(room, words(f"message {k}", k))
        except Exception as exc:  # counted: an overloaded homeserver times a send out
            failed.append(repr(exc))

    async def wave() -> Any:
        await asyncio.sleep(wave_after or 0.0)
        return await join_wave(p, forum, args, "knock", wave_people, WAVE_IN_LOAD)

    finish_deadline = float("inf")
    watcher = asyncio.ensure_future(watch())
    cpu_before = cpu_by_process(p.hs) | {"forum": cpu_seconds(p.proc.pid)}
    waving = asyncio.ensure_future(wave()) if wave_after else None
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
    wall = time.perf_counter() - t0
    cpu_after = cpu_by_process(p.hs) | {"forum": cpu_seconds(p.proc.pid)}
    lags = [d - s for s, d in zip(sorted(sent_at), done_at, strict=False)]
    from_stored = await forum.call("lags")
    during = {}
    if waving is not None:
        during = {"wave_after_s": wave_after, "join_wave_during_load": await waving}
    return during | {
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "sent": len(sent_at),
        "failed_sends": len(failed),
        "first_failure": failed[0] if failed else None,
        "processed": len(done_at),
        "achieved_send_rate_per_s": round(len(sent_at) / (t_sent - t0), 1),
        "processing_lag": percentiles(lags),
        # the bot's own: from the event's creation on the homeserver to the end of its
        # handling (the senders' queue in front of a saturated homeserver left out)
        "processing_lag_from_stored": percentiles(from_stored),
        "round_trip_before_load": percentiles(trips),
        # who was busy: CPU seconds per process over the load and its drain (2 cores give 2
        # a second; one process, one core at most)
        "cpu_seconds": {
            "wall": round(wall, 1),
            **{k: round(cpu_after[k] - cpu_before.get(k, 0.0), 1) for k in cpu_after},
        },
        "senders": len(senders),
        "topic_rooms": len(topics),
        "members_admitted": args.members,
        "rss_mb_service_after_admitting": round(rss_admitted, 1),
        "rss_mb_service_during_load_max": round(max(rss or [0.0]), 1),
    }


async def admit_members(p: Profile, forum: Remote) -> None:
    """The registered members (``--members``) admitted by the forum (charter accepted),
    once."""
    if getattr(p, "admitted", False):
        return
    for i in range(0, len(p.member_ids), 1000):
        await forum.call("admit", p.member_ids[i : i + 1000])
    p.admitted = True  # type: ignore[attr-defined]


async def space_member(p: Profile, forum: Remote, name: str) -> TestUser:
    """A person admitted by the forum and joined to the Space, in no topic room."""
    (user,) = await p.people(name, 1, sync=False)
    await forum.call("admit", [user.user_id])
    await forum.call("invite", [user.user_id])
    await user.join(forum.ids["space"], via=[p.hs.server_name])
    return user


async def enter_senders(p: Profile, forum: Remote, args: argparse.Namespace) -> list[TestUser]:
    """The senders of the message load, admitted (publication consented: the digest keeps
    their words) and each joined to the Space and its share of the topic rooms; once."""
    if p.senders:
        return p.senders
    senders = await p.people("sender", args.senders)
    ids = [s.user_id for s in senders]
    await forum.call("admit", ids)
    await forum.call("publication", ids)
    await forum.call("invite", ids)
    topics: list[str] = list(forum.info["topic_rooms"])
    via = [p.hs.server_name]

    async def enter(i: int, s: TestUser) -> None:  # each sender in its share of the rooms
        await s.join(forum.ids["space"], via=via)
        for room in topics[i :: len(senders)]:
            await s.join(room, via=via)

    for i in range(0, len(senders), 5):
        await asyncio.gather(*(enter(i + k, s) for k, s in enumerate(senders[i : i + 5])))
    p.senders = senders
    return senders


def words(head: str, k: int) -> str:
    """A message's text: ``head`` and a dozen words of the digest benchmark's vocabulary
    (the digest finds key points in them)."""
    vocabulary = _sibling("digest", "bench_digest").WORDS
    return head + ": " + " ".join(vocabulary[(k * 7 + 3 * j) % len(vocabulary)] for j in range(12))


def sender_room(senders: list[TestUser], topics: list[str], k: int) -> tuple[TestUser, str]:
    """The ``k``-th message's sender and room: round robin over the senders, each over
    its share of the topic rooms."""
    i = k % len(senders)
    mine = topics[i :: len(senders)]
    return senders[i], mine[(k // len(senders)) % len(mine)]


async def full_phases(
    out: dict[str, Any], p: Profile, forum: Remote, args: argparse.Namespace
) -> None:
    """The phases of the N-persister profile, in order, with the forum's memory sampled
    throughout; a phase that fails is reported and the next one runs."""
    sampler = RssSampler(p.proc.pid)
    phases = [x for x in args.phases.split(",") if x]

    async def phase(name: str, work: Any) -> None:
        # the homeserver still busy with what came before (the bans, the last phase's
        # backlog) would be measured
        out[f"{name}_settled_after_s"] = await settle(forum)
        sampler.phase = name
        t0 = time.perf_counter()
        try:
            out[name] = await work()
        except Exception as exc:  # reported in the JSON; the next phase runs
            out[name] = {"error": repr(exc)}
        print(f"{time.strftime('%H:%M:%S')} {name} done in {time.perf_counter() - t0:.0f} s: "
              f"{json.dumps(out[name])[:2000]}", file=sys.stderr, flush=True)  # fmt: skip

    if "load" in phases:
        await phase("load", lambda: load(p, forum, args, args.wave_during_load))
    if "knocks" in phases:
        for door in args.wave_door.split(","):
            await phase(f"join_wave_{door}", lambda d=door: join_wave(p, forum, args, d))
    if "policy" in phases:
        await phase("policy_list", lambda: policy(p, forum, args))
    if "digest" in phases:
        await phase("digest", lambda: forum.call("digest"))
    out["rss_mb_synapse_main"] = round(rss_mb(p.hs.process.pid or 0), 1)
    if "failover" in phases:
        await phase("failover", lambda: failover(p, forum, args, sampler))
    out["rss_mb_forum"] = sampler.report()


async def round_trip(
    sender: TestUser, reader: TestUser, room: str, text: str, timeout: float = 30
) -> float:
    """Seconds from ``sender``'s send of ``text`` in ``room`` to the event in ``reader``'s
    sync (the homeserver's delivery time)."""
    mark = reader.mark()
    t0 = time.perf_counter()
    event_id = await sender.send_text(room, text)
    await reader.wait_for(lambda e: e.get("event_id") == event_id, timeout, after=mark)
    return time.perf_counter() - t0


async def settle(forum: Remote, quiet_ms: float = 1000, timeout: float = 900) -> float | None:
    """Wait until the homeserver has worked off what an earlier phase left it (sends that
    timed out on the client side are still persisted): three messages of the moderator in
    a row seen in their own sync within ``quiet_ms``; the seconds waited (None: never)."""
    t0 = time.perf_counter()
    quiet = 0
    while quiet < 3 and time.perf_counter() - t0 < timeout:
        try:
            took = await round_trip(
                forum.mod, forum.mod, forum.mgmt, "(benchmark: is the homeserver idle?)", 60
            )
        except Exception:  # timed out: busy still
            quiet = 0
            continue
        quiet = quiet + 1 if took * 1000 < quiet_ms else 0
        await asyncio.sleep(1)
    return round(time.perf_counter() - t0, 1) if quiet >= 3 else None


SYNC_FILTER = json.dumps(
    {
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "timeline": {"limit": 0},
            "state": {"types": []},
            "ephemeral": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        },
    }
)


async def invited(user: TestUser) -> bool:
    """Whether ``user`` has been invited to a room (the membership bot's DM): one
    ``/sync`` that returns at once, without timelines."""
    body = await user.request(
        "GET", "/_matrix/client/v3/sync", params=[("timeout", "0"), ("filter", SYNC_FILTER)]
    )
    return bool(body.get("rooms", {}).get("invite"))


async def join_rule(user: TestUser, room: str) -> str | None:
    content = await user.get_state_event(room, "m.room.join_rules")
    return content.get("join_rule")


async def join_wave(
    p: Profile,
    forum: Remote,
    args: argparse.Namespace,
    door: str,
    people: list[TestUser] | None = None,
    label: str | None = None,
) -> Any:
    """``--wave`` newcomers (or ``people``) at ``door`` in ``--wave-seconds`` (an open
    loop); the time until the topic rooms are knock-only and until each has the membership
    bot's DM invite. ``label`` is the newcomers' name prefix (made with ``people``)."""
    label = label or f"wave-{door}-"
    t0 = time.perf_counter()
    if people is None:
        people = await p.people(label, args.wave, sync=False)
    created_s = time.perf_counter() - t0
    topics: list[str] = list(forum.info["topic_rooms"])
    mod, via = forum.mod, [p.hs.server_name]
    before = {r: await join_rule(mod, r) for r in (topics[0], topics[-1])}
    probe = await space_member(p, forum, f"probe-{label}")
    await forum.call("cfg", {"join_wave_joins": args.wave_joins, "join_wave_seconds": 60.0})
    sent_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    failed: list[str] = []
    switched: dict[str, float] = {}
    sending = True

    async def arrive(u: TestUser) -> None:
        sent_at[u.user_id] = time.perf_counter()
        try:
            if door == "knock":
                await u.knock(forum.ids["space"], "Bonjour, je voudrais participer", via=via)
            else:
                await u.join(forum.ids["lobby"], via=via)
        except Exception as exc:  # counted
            failed.append(repr(exc))

    def rules_may_still_change() -> bool:  # until 30 s after the last answer at least
        now = time.perf_counter()
        if sending or answers_task is None or not answers_task.done():
            return sending or now < wave_end + args.wave_timeout
        return now < max(answers_end, wave_end) + 30

    async def watch_rules() -> None:  # two topic rooms polled; all checked once both are
        while rules_may_still_change():
            rules = await asyncio.gather(join_rule(mod, topics[0]), join_rule(mod, topics[-1]))
            if all(r == "knock" for r in rules):
                switched["first_two"] = time.perf_counter()
                for i in range(0, len(topics), 20):
                    batch = topics[i : i + 20]
                    rules = await asyncio.gather(*(join_rule(mod, r) for r in batch))
                    if any(r != "knock" for r in rules):
                        break
                else:
                    switched["all"] = time.perf_counter()
                    return
            await asyncio.sleep(0.25)

    refusal: dict[str, Any] = {}

    async def watch_doors() -> None:
        """A Space member in no topic room joins one after another, about 4 a second, until
        a join is refused: by the spam checker (a wave decided) or by a knock-only rule."""
        for room in topics:
            while rules_may_still_change():
                try:
                    await probe.join(room, via=via)
                    break
                except MatrixRequestError as exc:
                    if exc.status == 403:
                        refusal["at"] = time.perf_counter()
                        refusal["error"] = str(exc.body.get("error"))[:200]
                        return
                    await asyncio.sleep(0.25)  # a limit or a busy homeserver: again
            await asyncio.sleep(0.25)

    async def watch_answers() -> None:
        while len(answered_at) < len(people):
            waiting = [u for u in people if u.user_id in sent_at and u.user_id not in answered_at]
            for i in range(0, len(waiting), 4):
                batch = waiting[i : i + 4]
                found = await asyncio.gather(*(invited(u) for u in batch), return_exceptions=True)
                now = time.perf_counter()
                for u, yes in zip(batch, found, strict=True):
                    if yes is True:
                        answered_at[u.user_id] = now
            if not sending and time.perf_counter() > wave_end + args.wave_timeout:
                break
            await asyncio.sleep(0.5)
        nonlocal answers_end
        answers_end = time.perf_counter()

    wave_end = answers_end = float("inf")
    answers_task: asyncio.Future[None] | None = None
    rules_task = asyncio.ensure_future(watch_rules())
    doors_task = asyncio.ensure_future(watch_doors())
    answers_task = asyncio.ensure_future(watch_answers())
    start, start_epoch = time.perf_counter(), time.time()
    arrivals = []
    for k, u in enumerate(people):  # open loop: on schedule, whatever the answers
        delay = start + k * args.wave_seconds / len(people) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        arrivals.append(asyncio.ensure_future(arrive(u)))
    await asyncio.gather(*arrivals)
    wave_end = time.perf_counter()
    sending = False
    await asyncio.gather(rules_task, answers_task, doors_task)
    lat = [answered_at[u] - sent_at[u] for u in answered_at]
    out = {
        "door": door,
        "newcomers": len(people),
        "accounts_created_s": round(created_s, 1),
        "wave_s": round(wave_end - start, 1),
        "failed_arrivals": len(failed),
        "first_failure": failed[0] if failed else None,
        "protection_joins_per_minute": args.wave_joins,
        "join_rules_before": sorted(set(before.values()), key=str),
        "knock_only_after_s": (
            round(switched["first_two"] - start, 2) if "first_two" in switched else None
        ),
        # a join to a topic room first refused: the doors closed, whatever the rules say
        "joins_refused_after_s": round(refusal["at"] - start, 2) if refusal else None,
        "first_refusal": refusal.get("error"),
        "all_topic_rooms_knock_only_after_s": (
            round(switched["all"] - start, 2) if "all" in switched else None
        ),
        "answered": len(answered_at),
        "all_answered_after_s": (
            round(max(answered_at.values()) - start, 1) if len(answered_at) == len(people) else None
        ),
        "answer_latency": percentiles(lat),
        "as_stored": await wave_as_stored(p, forum, door, label, start_epoch, args.wave_joins),
    }
    await forum.call("cfg", None)
    if switched:  # the doors opened again for the next wave
        await mod.send_text(forum.mgmt, "!unlock-joins")
        for _ in range(240):  # 2 minutes at most
            if await join_rule(mod, topics[0]) != "knock":
                break
            await asyncio.sleep(0.5)
    return out


async def wave_as_stored(
    p: Profile, forum: Remote, door: str, label: str, start_epoch: float, threshold: int
) -> dict[str, Any]:
    """Where the time to knock-only went, from the homeserver's own timestamps (seconds after
    the wave's start): when the arrival that reached the protection's threshold was stored,
    and when the first and the last topic room's join rule changed."""
    mod = forum.mod
    room = forum.ids["space"] if door == "knock" else forum.ids["lobby"]
    kind = "knock" if door == "knock" else "join"
    members = await mod.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room)}/members", params={"membership": kind}
    )
    arrived = sorted(
        e["origin_server_ts"] / 1000
        for e in members.get("chunk", [])
        if e["state_key"].startswith(f"@{label}")
    )
    switched: list[float] = []
    for topic in forum.info["topic_rooms"]:
        ev = await mod.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(topic)}/state/m.room.join_rules/",
            params={"format": "event"},
        )
        if ev.get("content", {}).get("join_rule") == "knock":
            switched.append(ev["origin_server_ts"] / 1000)

    def after(t: float | None) -> float | None:
        return None if t is None else round(t - start_epoch, 2)

    nth = arrived[threshold - 1] if len(arrived) >= threshold else None
    first = min(switched) if switched else None
    last = max(switched) if switched else None
    return {
        "arrivals_stored": len(arrived),
        "threshold_arrival_stored_after_s": after(nth),
        "first_room_switched_after_s": after(first),
        "last_room_switched_after_s": after(last),
        "rooms_switched": len(switched),
        "switch_spread_s": None if first is None or last is None else round(last - first, 2),
        "threshold_to_first_switch_s": (
            None if nth is None or first is None else round(first - nth, 2)
        ),
    }


async def policy(p: Profile, forum: Remote, args: argparse.Namespace) -> Any:
    """A list of ``--policy-rules`` rules, ``--policy-hits`` of them naming members (half
    one member each, half a glob matching ten: ``@m12?-tag:server``), applied to the
    members by the service."""
    await admit_members(p, forum)
    members = p.member_ids
    rng = random.Random(14)
    extra = []
    tag_server = members[0].split("-", 1)[1] if members else "x:bench.test"
    for h in range(args.policy_hits if members else 0):
        if h % 2 == 0:
            entity = rng.choice(members)
        else:
            entity = f"@m{rng.randrange(1, max(2, len(members) // 10))}?-{tag_server}"
        extra.append(
            {
                "type": "m.policy.rule.user",
                "state_key": f"hit-{h}",
                "content": {"entity": entity, "recommendation": "m.ban", "reason": "bench"},
            }
        )
    return await forum.call(
        "policy", {"rules": args.policy_rules, "extra": extra, "members": members}
    )


async def failover(
    p: Profile, forum: Remote, args: argparse.Namespace, sampler: RssSampler
) -> dict[str, Any]:
    """The message load again, with knocks; the active service killed during it; a
    standby ``forum run`` on the same database takes over."""
    fo = _sibling("failover", "bench_failover")  # its takeover watch and knock checks
    from tests.harness import Forum as Observed

    senders = await enter_senders(p, forum, args)
    topics: list[str] = list(forum.info["topic_rooms"])
    knockers = await p.people("fo-knock", args.failover_knocks, sync=True)
    t0 = time.perf_counter()
    b = await fo.start_run(p.tmp, p.data, "standby")
    p.standby.append(b)
    await b.wait_output("Standing by", timeout=300)
    standby_start_s = time.perf_counter() - t0
    # as a standby that has waited a while: its bots logged in, the rooms read
    await b.wait_output("ready to take over", timeout=600)
    standby_ready_s = time.perf_counter() - t0
    svc = Observed(p.hs, settings_from(p.data), forum.ids)
    watch = fo.Takeover(b)
    watcher = asyncio.ensure_future(watch.run())
    total = int(args.rate * args.failover_duration)
    # the knocks from 3 s before the kill to 3 s after the lease's end, some in the gap
    first = max(0.0, args.kill_after - 3)
    last = min(args.failover_duration, args.kill_after + 2 * args.lease_seconds + 3)
    step = (last - first) / max(1, len(knockers))
    knock_at = {int(args.rate * (first + j * step)): u for j, u in enumerate(knockers)}
    sent: list[str] = []
    failed: list[str] = []
    knock_times: list[float] = []
    failed_knocks: list[str] = []

    probes: list[float] = []

    async def probe() -> None:
        """The homeserver's own answer time from the kill until the standby acts: a
        client's ``whoami``, one after another (what any request waits at least)."""
        while watch.acting_at is None:
            t = time.perf_counter()
            with contextlib.suppress(Exception):  # a failed probe is as slow as it was
                await forum.mod.request("GET", "/_matrix/client/v3/account/whoami")
            probes.append(time.perf_counter() - t)
            await asyncio.sleep(0.2)

    probing: list[asyncio.Future[None]] = []  # started at the kill

    async def send(k: int) -> None:
        s, room = sender_room(senders, topics, k)
        try:
            sent.append(await s.send_text(room, words(f"failover message {k}", k)))
        except Exception as exc:  # counted
            failed.append(repr(exc))
        if k in knock_at:
            knock_times.append(time.monotonic())
            try:
                await fo.knock(svc, knock_at[k])
            except Exception as exc:  # counted: the knock may still have been taken
                failed_knocks.append(repr(exc))

    start = time.perf_counter()
    tasks = []
    for k in range(total):
        if watch.killed_at is None and time.perf_counter() - start >= args.kill_after:
            p.proc.kill()  # SIGKILL
            watch.killed()
            probing.append(asyncio.ensure_future(probe()))
            sampler.follow(b.proc.pid, "standby")
            print(f"{time.strftime('%H:%M:%S')} killed the active forum", file=sys.stderr)
        delay = start + k / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(k)))
    await asyncio.gather(*tasks)
    if watch.killed_at is None:
        p.proc.kill()
        watch.killed()
        probing.append(asyncio.ensure_future(probe()))
        sampler.follow(b.proc.pid, "standby")
    async with asyncio.timeout(180):
        await watcher
    await asyncio.gather(*probing)
    killed_at, leased_at, acting_at = watch.times()
    rooms = await asyncio.gather(*(fo.answer_of(svc, u, 180) for u in knockers))
    answered = [(u, r) for u, r in zip(knockers, rooms, strict=True) if r is not None]
    twice = await asyncio.gather(*(fo.doubled(svc, u, r) for u, r in answered))
    missing, dupes = await recorded(p, sent)
    return {
        "lease_seconds": args.lease_seconds,
        "standby_start_s": round(standby_start_s, 1),
        "standby_ready_s": round(standby_ready_s, 1),
        "messages_sent": len(sent),
        "failed_sends": len(failed),
        "killed_after_s": round(args.kill_after, 1),
        "takeover_lease_s": round(leased_at - killed_at, 2),
        "takeover_acting_s": round(acting_at - killed_at, 2),
        # the floor under this load: the homeserver's answer to a trivial request meanwhile
        "homeserver_whoami_during_takeover": percentiles(probes),
        "knocks": len(knockers),
        "knocks_failed_client_side": len(failed_knocks),
        "knocks_during_gap": sum(1 for t in knock_times if killed_at <= t < acting_at),
        "knocks_lost": len(knockers) - len(answered),
        "knocks_doubled": sum(twice),
        "messages_not_recorded": missing,
        "outbox_duplicate_keys": dupes,
        # where the takeover's time goes: the service's own account of its start
        "standby_log": [
            line.strip()[-200:]
            for line in b.output.splitlines()
            if "since the lease" in line or "Taking over" in line or "acting: started" in line
        ],
    }


async def recorded(p: Profile, sent: list[str], timeout: float = 180) -> tuple[int, int]:
    """The sent messages the collector never recorded (waiting for the one that took over
    to catch up), and the outbox's dedupe keys held twice."""
    conn = await asyncpg.connect(f"{PG}/{p.forum_db}")
    try:
        deadline = time.perf_counter() + timeout
        while True:
            found = await conn.fetchval(
                "SELECT count(*) FROM digest_activity WHERE event_id = ANY($1::text[])", sent
            )
            if found >= len(sent) or time.perf_counter() > deadline:
                break
            await asyncio.sleep(1)
        dupes = await conn.fetchval(
            "SELECT count(*) FROM (SELECT dedupe_key FROM outbox WHERE dedupe_key IS NOT NULL"
            " GROUP BY dedupe_key HAVING count(*) > 1) d"
        )
        return len(sent) - int(found), int(dupes)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        profiles = [1, args.persisters] if args.persisters != 1 and not args.only_n else [1]
        if args.only_n:
            profiles = [args.persisters]
        for n in profiles:
            result[f"persisters_{n}"] = await run_profile(
                Path(tmp), n, args, full=(n == args.persisters)
            )
    result["load_average_at_end"] = os.getloadavg()
    one, many = result.get("persisters_1", {}), result[f"persisters_{args.persisters}"]
    if "ban_floor_concurrent" in one and "ban_floor_concurrent" in many:
        result["floor_ratio_1_over_n"] = round(
            one["ban_floor_concurrent"]["median_ms"] / many["ban_floor_concurrent"]["median_ms"],
            2,
        )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--persisters", type=int, default=4)
    parser.add_argument(
        "--only-n", action="store_true", help="skip the 1-persister profile (and its floor)"
    )
    parser.add_argument(
        "--room-concurrency", type=int, help="rooms the moderation bot acts in at once"
    )
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--ban-samples", type=int, default=5)
    parser.add_argument(
        "--py-spy", metavar="DIR", help="profile Synapse's processes during the ban floor"
    )
    parser.add_argument(
        "--phases",
        default="load,knocks,policy,digest,failover",
        help="the N-persister profile's phases after the bans, in this order",
    )
    parser.add_argument("--wave", type=int, default=1000, help="newcomers of the join wave")
    parser.add_argument("--wave-seconds", type=float, default=60)
    parser.add_argument(
        "--wave-door",
        default="knock",
        help="knock (on the Space), lobby (a join), or both: knock,lobby",
    )
    parser.add_argument(
        "--wave-joins", type=int, default=15, help="the join-wave protection's joins a minute"
    )
    parser.add_argument(
        "--wave-timeout", type=float, default=600, help="seconds after the wave to wait for answers"
    )
    parser.add_argument(
        "--wave-during-load",
        type=float,
        metavar="SECONDS",
        help="also a join wave of knocks this many seconds into the load (its own figures)",
    )
    parser.add_argument(
        "--antispam",
        action="store_true",
        help="Synapse's processes load the spam-checker module, answered by the forum",
    )
    parser.add_argument("--policy-rules", type=int, default=10_000)
    parser.add_argument("--policy-hits", type=int, default=20)
    parser.add_argument("--failover-duration", type=float, default=120)
    parser.add_argument("--kill-after", type=float, default=30)
    parser.add_argument("--failover-knocks", type=int, default=20)
    parser.add_argument("--lease-seconds", type=float, default=6.0)
    parser.add_argument(
        "--lanes", type=int, default=4, help="events each bot handles at once ([bots] lanes)"
    )
    parsed = parser.parse_args()
    if parsed.senders > parsed.rooms:
        parser.error("--senders must not exceed --rooms: each sender posts in its own rooms")
    print(json.dumps(asyncio.run(main(parsed)), indent=2))
