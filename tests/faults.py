"""Fault injection for the fault suite (``tests/integration/test_faults.py``, short) and
``benchmarks/faults.py`` (long): the real service as ``forum run`` in its own process, a
homeserver owned by the run, and the faults a production forum meets.

- :class:`ForumProcess`: ``forum run`` started, killed with SIGKILL, started again;
- :class:`RateLimitProxy`: a loopback reverse proxy between the forum and Synapse that
  answers 429 (``M_LIMIT_EXCEEDED`` with ``retry_after_ms``) to every request but
  ``/sync`` during a burst; the real Synapse answers everything else (502 while it is
  down, as a reverse proxy does);
- :func:`hold_database_lock`: the database locked from another connection (SQLite:
  ``BEGIN EXCLUSIVE``; PostgreSQL: every table ``LOCK ... IN ACCESS EXCLUSIVE MODE``);
- Synapse restarted (:meth:`EmbeddedHomeserver.stop` / ``start``);
- :class:`WebLoad`: paced GET requests on the public pages during the faults;
- :class:`Workload`: members acting as people do (knock, consent, post, a banned word,
  redactions, withdrawals, reports) and a moderator (curation, timed mutes, bans);
- :func:`check_outcomes`: afterwards, from the database and from what people see, nothing
  lost and nothing done twice.

:func:`run_fault_suite` runs it all on a :class:`FaultPlan` and returns the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import tomli_w
from aiohttp import web
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.models import DigestHighlight, DigestMessage
from forum.consent import ConsentRecords
from forum.homeserver import EmbeddedHomeserver, free_port
from forum.settings import Settings, database_url
from forum.storage import Database
from moderation.bot.models import AuditEntry, Case, Mute
from tests.harness import (
    CHARTER_EN,
    CHARTER_FR,
    FAST_MODERATION,
    INVITED,
    PUBLICATION_Q,
    TOPIC,
    Forum,
    copy_charters,
    forum_data,
    register_bots,
    settings_from,
)
from tests.matrix_user import Event, MatrixRequestError, TestUser

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

#: how long a person waits for the forum to answer while faults go on
PATIENCE = 120.0
#: statuses a person's client retries (the homeserver restarting, a proxy, a rate limit)
RETRIED_STATUSES = {429, 502, 503, 504}


def _q(value: str) -> str:
    return quote(value, safe="")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def patiently(call: Callable[[], Awaitable[T]], what: str, timeout: float = PATIENCE) -> T:
    """``call()`` again until it works, as a client does while the homeserver restarts or
    answers 429; other errors are raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except MatrixRequestError as exc:
            if exc.status not in RETRIED_STATUSES or time.monotonic() > deadline:
                raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout} s: {exc}") from exc
        await asyncio.sleep(0.5)


# =====================================================================================
# The service in its own process
# =====================================================================================


class ForumProcess:
    """``forum --config CONFIG run`` with ``FORUM_HOME=home``; its output in ``log``."""

    def __init__(self, config: Path, home: Path, web_url: str, log: Path) -> None:
        self.config = config
        self.home = home
        self.web_url = web_url
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.kills = 0
        self.down: list[tuple[float, float]] = []
        """Intervals (monotonic) when the process was not serving: killed to answering."""
        self._down_since: float | None = time.monotonic()

    async def start(self, timeout: float = 120) -> float:
        """Start the process and wait until its web app answers; seconds it took."""
        began = time.monotonic()
        env = {**os.environ, "FORUM_HOME": str(self.home), "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as out:
            out.write(f"\n=== start {self.starts + 1} ===\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "forum", "--config", str(self.config), "run",
                env=env, cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        self.starts += 1
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"forum run exited ({self.proc.returncode}): {self.tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(
                        self.web_url + "healthz", timeout=aiohttp.ClientTimeout(total=5)
                    ):
                        break
                if time.monotonic() - began > timeout:
                    raise AssertionError(f"forum run not serving after {timeout} s: {self.tail()}")
                await asyncio.sleep(0.1)
        now = time.monotonic()
        if self._down_since is not None:
            self.down.append((self._down_since, now))
            self._down_since = None
        return now - began

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        assert self.proc is not None, "not started"
        assert self.proc.returncode is None, "not running"
        self._down_since = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.kills += 1

    async def wait_dead(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        assert code == -signal.SIGKILL, f"forum run ended with {code}, not by SIGKILL"

    async def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 30 s); the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self._down_since = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    def was_down(self, start: float, end: float) -> bool:
        intervals = [*self.down]
        if self._down_since is not None:
            intervals.append((self._down_since, time.monotonic()))
        return any(a <= end and start <= b + 0.5 for a, b in intervals)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_count(self, needle: str) -> int:
        try:
            return self.log.read_text(errors="replace").count(needle)
        except FileNotFoundError:
            return 0


# =====================================================================================
# 429 bursts: a loopback reverse proxy in front of Synapse
# =====================================================================================

HOP_HEADERS = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "content-encoding", "upgrade", "proxy-connection",
}  # fmt: skip


class RateLimitProxy:
    """Forwards every request to ``upstream``; during :meth:`burst` every request but
    ``/sync`` (which Synapse never rate-limits) gets 429 ``M_LIMIT_EXCEEDED``; the next
    requests a :meth:`fail_next` names are held or answered with an error instead."""

    def __init__(self, upstream: EmbeddedHomeserver, retry_after_ms: int = 500) -> None:
        self.upstream = upstream
        self.retry_after_ms = retry_after_ms
        self.port = free_port()
        self.limited_until = 0.0
        self.answered_429 = 0
        self.answered_502 = 0
        self.forwarded = 0
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._faults: list[list[Any]] = []  # [path fragment, times left, status, stall]
        self.faulted: list[str] = []
        """The paths of the requests a :meth:`fail_next` fault answered, in order."""

    def fail_next(self, fragment: str, times: int, *, status: int = 502, stall: float = 0) -> None:
        """The next ``times`` requests whose path (with its query) contains ``fragment``
        are held ``stall`` seconds (a homeserver too slow to answer), then answered
        ``status`` (``M_UNKNOWN``) without reaching the homeserver."""
        self._faults.append([fragment, times, status, stall])

    async def _fault(self, request: web.Request) -> web.StreamResponse | None:
        for fault in self._faults:
            fragment, left, status, stall = fault
            if left > 0 and fragment in request.path_qs:
                fault[1] -= 1
                self.faulted.append(request.path)
                if stall:
                    await asyncio.sleep(stall)
                return web.json_response(
                    {"errcode": "M_UNKNOWN", "error": "injected fault"}, status=status
                )
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return self.upstream.server_name

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5), auto_decompress=True
        )
        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def burst(self, seconds: float) -> None:
        """Answer 429 for ``seconds``."""
        self.limited_until = time.monotonic() + seconds
        await asyncio.sleep(seconds)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        faulted = await self._fault(request)
        if faulted is not None:
            return faulted
        if time.monotonic() < self.limited_until and not request.path.endswith("/sync"):
            self.answered_429 += 1
            body = {
                "errcode": "M_LIMIT_EXCEEDED",
                "error": "Too Many Requests",
                "retry_after_ms": self.retry_after_ms,
            }
            return web.json_response(body, status=429)
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        data = await request.read()
        try:
            async with self._http.request(
                request.method,
                self.upstream.url + request.path_qs,
                headers=headers,
                data=data if data else None,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                out_headers = {
                    k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS
                }
                self.forwarded += 1
                return web.Response(status=resp.status, body=payload, headers=out_headers)
        except (aiohttp.ClientError, TimeoutError):
            self.answered_502 += 1
            return web.json_response(
                {"errcode": "M_UNKNOWN", "error": "upstream unavailable"}, status=502
            )


# =====================================================================================
# A database locked by someone else
# =====================================================================================


#: SQLite connections that locked the database, closed by :func:`close_lock_connections`
#: once the service stopped (see the report of issue #11: once, the service's connections
#: failed with "disk I/O error" right after such a connection closed while it ran).
_LOCKERS: list[sqlite3.Connection] = []


def close_lock_connections() -> None:
    while _LOCKERS:
        _LOCKERS.pop().close()


async def hold_database_lock(url: str, seconds: float) -> float:
    """Lock the whole database from another connection for ``seconds`` (SQLite:
    ``BEGIN EXCLUSIVE``; PostgreSQL: ``LOCK TABLE`` on every table, ACCESS EXCLUSIVE);
    returns when released, with the seconds it was held."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database

        def hold() -> float:
            conn = sqlite3.connect(
                parsed.database or "", timeout=60, isolation_level=None, check_same_thread=False
            )
            _LOCKERS.append(conn)
            conn.execute("BEGIN EXCLUSIVE")
            began = time.monotonic()
            time.sleep(seconds)
            conn.execute("ROLLBACK")
            return time.monotonic() - began

        return await asyncio.to_thread(hold)
    engine = create_async_engine(parsed)
    try:
        async with engine.connect() as conn:
            tables = (
                await conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                )
            ).scalars()
            names = ", ".join(f'"{t}"' for t in tables)
            await conn.commit()
            # LOCK TABLE takes the tables one by one: a service's transaction holding one
            # of them and waiting for another is a deadlock the server breaks by failing
            # one side; when that is this lock, take it again (the fault is the lock)
            for attempt in range(20):
                try:
                    async with conn.begin():
                        await conn.execute(text(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE"))
                        began = time.monotonic()
                        await asyncio.sleep(seconds)
                        held = time.monotonic() - began
                        await conn.rollback()
                    return held
                except DBAPIError as exc:
                    if "deadlock detected" not in str(exc) or attempt == 19:
                        raise
                    await asyncio.sleep(0.05)
            raise AssertionError("unreachable")
    finally:
        await engine.dispose()


# =====================================================================================
# Web requests on the public pages
# =====================================================================================

PUBLIC_PAGES = (
    "/fr/", "/en/", "/fr/archive/", "/en/archive/", "/fr/feed.atom", "/en/feed.atom",
    f"/fr/topic/{TOPIC}/", f"/en/topic/{TOPIC}/", "/api/digests.json",
)  # fmt: skip


@dataclass
class WebLoad:
    """``total`` GET requests on the public pages, ``concurrency`` at once, spread evenly
    over ``seconds``. A request refused or cut while the process was down (between a
    SIGKILL and its restart answering) is counted apart: no web server answers then."""

    base_url: str
    process: ForumProcess
    total: int
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    refused_while_down: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self) -> None:
        began = time.monotonic()
        interval = self.seconds / max(1, self.total)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.total):
            queue.put_nowait(i)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def worker() -> None:
                while True:
                    try:
                        i = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    delay = began + i * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self._one(http, PUBLIC_PAGES[i % len(PUBLIC_PAGES)])

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _one(self, http: aiohttp.ClientSession, path: str) -> None:
        start = time.monotonic()
        try:
            async with http.get(self.base_url + path) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            end = time.monotonic()
            if isinstance(exc, aiohttp.ClientConnectionError) and self.process.was_down(start, end):
                self.refused_while_down += 1
            else:
                self.errors.append(f"{path}: {exc!r}")
            return
        self.latencies.append(time.monotonic() - start)
        self.statuses[str(status)] += 1
        if status != 200:
            self.errors.append(f"{path}: HTTP {status}")

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "concurrency": self.concurrency,
            "answered": len(self.latencies),
            "statuses": dict(self.statuses),
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
            "refused_while_process_down": self.refused_while_down,
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 1),
            "max_ms": round(max(self.latencies, default=0) * 1000, 1),
        }


# =====================================================================================
# The workload: members and a moderator acting as people do
# =====================================================================================

BANNED = "arnaque"
CURATE = "📰"


@dataclass
class Member:
    """One person of the workload and what they did."""

    index: int
    user: TestUser
    publication: bool
    dm: str | None = None
    posts: list[str] = field(default_factory=list)
    """Posts that must be stored (if the person consents) and stay."""
    redacted: list[str] = field(default_factory=list)
    """Own posts the person removed: gone from the store."""
    banned_word: str | None = None
    withdrew: bool = False
    curated: str | None = None
    reported: str | None = None
    muted_until: float | None = None
    banned: bool = False
    tokens: list[str] = field(default_factory=list)
    """Unique words of every post (searched in public outputs after a withdrawal)."""


class Workload:
    """Members admitted through the bot, posting, and the moderator acting on them.
    Every Matrix event sent is counted in :attr:`events`."""

    def __init__(
        self,
        forum: Forum,
        *,
        members: int,
        posts: int,
        parallel: int,
        mute_seconds: int = 3,
        seed: int = 11,
    ) -> None:
        self.forum = forum
        self.size = members
        self.posts = posts
        self.parallel = parallel
        self.mute_seconds = mute_seconds
        self.random = random.Random(seed)
        self.members: list[Member] = []
        self.events = 0
        self.commands: list[str] = []
        """Event ids of the moderator's commands (each answered exactly once)."""
        self.tag = secrets.token_hex(3)

    @property
    def mod(self) -> TestUser:
        return self.forum.mod

    # --- a person's actions (retried while the homeserver is away) ---------------------
    async def send(self, user: TestUser, room: str, content: dict[str, Any], kind: str) -> str:
        path = f"/_matrix/client/v3/rooms/{_q(room)}/send/{_q(kind)}/{uuid.uuid4().hex}"
        self.events += 1
        data = await patiently(lambda: user.request("PUT", path, content), f"send {kind}")
        return str(data["event_id"])

    async def say(self, user: TestUser, room: str, body: str) -> str:
        return await self.send(user, room, {"msgtype": "m.text", "body": body}, "m.room.message")

    async def redact(self, user: TestUser, room: str, event_id: str) -> None:
        path = f"/_matrix/client/v3/rooms/{_q(room)}/redact/{_q(event_id)}/{uuid.uuid4().hex}"
        self.events += 1
        await patiently(lambda: user.request("PUT", path, {"reason": "oups"}), "redact")

    async def join(self, user: TestUser, room: str) -> None:
        self.events += 1

        async def join() -> str:
            try:
                return await user.join(room, via=self.forum.via)
            except MatrixRequestError as exc:
                if exc.status == 403 and "invite" in str(exc.body.get("error", "")):
                    raise MatrixRequestError("POST", "join", 503, exc.body) from exc
                raise

        await patiently(join, f"{user.user_id} joins {room}")

    async def wait(self, user: TestUser, pred: Callable[[Event], bool], after: int) -> Event:
        return await user.wait_for(pred, PATIENCE, after=after)

    def bot_text(self, room: str, *needles: str, sender: str | None = None) -> Any:
        sender = sender or self.forum.membership_bot_id

        def match(e: Event) -> bool:
            body = str(e["content"].get("body", ""))
            return (
                e["room_id"] == room
                and e["type"] == "m.room.message"
                and e["sender"] == sender
                and any(n in body for n in needles)
            )

        return match

    async def command(self, body: str) -> str:
        """A moderator's command in the management room; its reply's body."""
        mark = self.mod.mark()
        event_id = await self.say(self.mod, self.forum.mgmt, body)
        self.commands.append(event_id)
        reply = await self.wait(
            self.mod,
            lambda e: (
                e["room_id"] == self.forum.mgmt
                and e["sender"] == self.forum.bot_id
                and e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
            ),
            mark,
        )
        return str(reply["content"]["body"])

    # --- one person's story --------------------------------------------------------------
    async def admit(self, m: Member) -> None:
        user, forum = m.user, self.forum
        mark = user.mark()
        self.events += 1
        await patiently(
            lambda: user.knock(forum.rooms["space"], "Bonjour, je voudrais participer", forum.via),
            "knock",
        )
        invite = await self.wait(user, lambda e: forum.is_dm_invite(user, e), mark)
        m.dm = dm = str(invite["room_id"])
        await self.join(user, dm)
        await self.wait(user, self.bot_text(dm, CHARTER_FR, CHARTER_EN), mark)
        mark = user.mark()
        await self.say(user, dm, "oui")
        await self.wait(user, self.bot_text(dm, *PUBLICATION_Q), mark)
        await self.say(user, dm, "oui" if m.publication else "non")
        await self.wait(user, self.bot_text(dm, *INVITED), mark)
        for room in (forum.rooms["space"], forum.topic):
            await user.wait_for_invite(room, PATIENCE)
            await self.join(user, room)

    async def story(self, m: Member) -> None:
        forum = self.forum
        await self.admit(m)
        room = forum.topic
        for k in range(self.posts):
            token = f"mot{self.tag}x{m.index}x{k}"
            m.tokens.append(token)
            m.posts.append(await self.say(m.user, room, f"Message {k} de {m.index}: {token}"))
        i = m.index
        if i % 4 == 1:  # a banned word: the protection redacts it and warns (first step)
            m.banned_word = await self.say(m.user, room, f"Quelle {BANNED} {m.index}")
        if i % 3 == 2 and len(m.posts) > 1:  # the person removes one of their posts
            gone = m.posts.pop()
            await self.redact(m.user, room, gone)
            m.redacted.append(gone)
        if m.publication and i % 2 == 0:  # a moderator picks a quote for the digest
            m.curated = m.posts[0]
            await self.send(
                self.mod,
                room,
                {
                    "m.relates_to": {
                        "rel_type": "m.annotation",
                        "event_id": m.curated,
                        "key": CURATE,
                    }
                },
                "m.reaction",
            )
        if i % 6 == 3 and self.members[i - 1].posts:  # a report on someone else's post
            target = self.members[i - 1].posts[0]
            path = f"/_matrix/client/v3/rooms/{_q(room)}/report/{_q(target)}"
            self.events += 1
            await patiently(
                lambda: m.user.request("POST", path, {"reason": f"signalement {i}"}), "report"
            )
            m.reported = target
        if m.publication and i % 4 == 2:  # the person withdraws their consent
            mark = m.user.mark()
            assert m.dm is not None
            await self.say(m.user, m.dm, "!retirer")
            await self.wait(m.user, lambda e: self._bot_reply_in(e, m.dm), mark)
            m.withdrew = True
        if i % 5 == 4:  # a timed mute, lifted by the timer
            await self.command(f"!mute {m.user.user_id} {self.mute_seconds}s calme")
            m.muted_until = time.monotonic() + self.mute_seconds
        if i % 7 == 6:  # a ban across the forum
            await self.command(f"!ban {m.user.user_id} spam")
            m.banned = True

    def _bot_reply_in(self, e: Event, room: str | None) -> bool:
        return (
            e["room_id"] == room
            and e["type"] == "m.room.message"
            and e["sender"] == self.forum.membership_bot_id
        )

    async def prepare(self) -> None:
        """Register the members (before the faults: an account is not part of the test)."""
        users: list[TestUser] = []
        for start in range(0, self.size, 10):
            users += await asyncio.gather(
                *(
                    self.forum.user(f"m{i}", f"Membre {i}")
                    for i in range(start, min(start + 10, self.size))
                )
            )
        for u in users:
            u.sync_failures_allowed = 10_000
        self.members = [Member(i, u, publication=(i % 5 != 3)) for i, u in enumerate(users)]

    async def run(self) -> None:
        gate = asyncio.Semaphore(self.parallel)

        async def one(m: Member) -> None:
            async with gate:
                await self.story(m)

        await asyncio.gather(*(one(m) for m in self.members))


# =====================================================================================
# After the faults: nothing lost, nothing done twice
# =====================================================================================


@dataclass
class Outcome:
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    checked: int = 0

    def expect(self, ok: bool, kind: str, what: str) -> None:
        self.checked += 1
        if not ok:
            getattr(self, kind).append(what)

    def figures(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "lost": len(self.lost),
            "doubled": len(self.doubled),
            "leaked": len(self.leaked),
            "problems": (self.lost + self.doubled + self.leaked)[:80],
        }


async def check_outcomes(work: Workload, db: Database, web_url: str) -> Outcome:
    forum = work.forum
    out = Outcome()
    mod = work.mod
    # The store.
    async with db.sessionmaker() as s:
        stored = Counter(
            (await s.execute(select(DigestMessage.event_id, DigestMessage.sender))).all()
        )
        highlights = {r for r in (await s.scalars(select(DigestHighlight.target)))}
        audit = list(await s.scalars(select(AuditEntry)))
        cases = list(await s.scalars(select(Case)))
        mutes = {r.user_id for r in await s.scalars(select(Mute))}
        records = ConsentRecords(s)
        histories = {m.user.user_id: await records.history(m.user.user_id) for m in work.members}
    stored_ids = {e for e, _ in stored}
    stored_senders = Counter(sender for _, sender in stored)
    async with aiohttp.ClientSession() as http:
        pages = []
        for path in ("/fr/feed.atom", "/en/feed.atom", "/api/digests.json", "/fr/", "/en/"):
            async with http.get(web_url.rstrip("/") + path) as resp:
                pages.append(await resp.text())
    public = "\n".join(pages)
    for m in work.members:
        uid = m.user.user_id
        # Consent records: the charter once, the publication answer once, a withdrawal once.
        scopes = Counter((r.scope, r.granted) for r in histories[uid])
        out.expect(scopes[("charter", True)] >= 1, "lost", f"{uid}: charter consent")
        out.expect(scopes[("charter", True)] <= 1, "doubled", f"{uid}: charter consent {scopes}")
        publication = [r.granted for r in histories[uid] if r.scope == "publication"]
        # A ban across the forum is a leaving of every room: the consent ends as with a
        # withdrawal (DESIGN: leaving reaches every public output).
        ended = m.withdrew or m.banned
        wanted = [m.publication] + ([False] if m.publication and ended else [])
        out.expect(
            len(publication) >= len(wanted), "lost", f"{uid}: publication records {publication}"
        )
        out.expect(len(publication) <= len(wanted), "doubled", f"{uid}: publication {publication}")
        # The store: each post of a consenting person once; nothing of the others.
        keeps = m.publication and not ended
        for post in m.posts:
            out.expect(
                (post in stored_ids) == keeps,
                "lost" if keeps else "leaked",
                f"{uid}: post {post} stored={post in stored_ids}",
            )
        if not keeps:
            out.expect(stored_senders[uid] == 0, "leaked", f"{uid}: {stored_senders[uid]} stored")
            out.expect(
                not any(t in public for t in m.tokens), "leaked", f"{uid}: words in a public page"
            )
        for gone in m.redacted:
            out.expect(gone not in stored_ids, "leaked", f"{uid}: redacted {gone} still stored")
        if m.banned_word:
            out.expect(m.banned_word not in stored_ids, "leaked", f"{uid}: banned word stored")
        if m.curated and not ended:
            out.expect(m.curated in highlights, "lost", f"{uid}: curation of {m.curated}")
        # What the person saw: one DM, and no bot message twice in it.
        dms = forum.dm_invites(m.user)
        out.expect(len(dms) >= 1, "lost", f"{uid}: no DM")
        out.expect(len(dms) <= 1, "doubled", f"{uid}: {len(dms)} DMs opened")
        said = Counter(
            str(e["content"].get("body"))
            for e in m.user.events
            if e.get("room_id") == m.dm
            and e.get("type") == "m.room.message"
            and e.get("sender") in (forum.membership_bot_id, forum.bot_id)
            and e["_section"].endswith("timeline")
            and "event_id" in e
        )
        twice = [b[:60] for b, n in said.items() if n > 1]
        out.expect(not twice, "doubled", f"{uid}: the bot said twice in the DM: {twice}")
        # Moderation.
        actions = Counter(
            (a.action, a.event_id) for a in audit if a.target == uid and not a.dry_run
        )
        for (action, event_id), n in actions.items():
            out.expect(n == 1, "doubled", f"{uid}: {action} for {event_id} recorded {n} times")
        if m.banned_word:
            redactions = [
                e
                for e in mod.events
                if e.get("type") == "m.room.redaction"
                and (e.get("redacts") or e.get("content", {}).get("redacts")) == m.banned_word
            ]
            out.expect(len(redactions) >= 1, "lost", f"{uid}: banned word not redacted")
            out.expect(len(redactions) <= 1, "doubled", f"{uid}: redacted {len(redactions)}x")
        if m.muted_until is not None:
            out.expect(uid not in mutes, "lost", f"{uid}: timed mute still recorded")
            for room in (forum.topic, forum.rooms["space"]):
                level = await forum.power(room, uid)
                out.expect(level == 0, "lost", f"{uid}: still muted in {room} (level {level})")
        if m.banned:
            for room in forum.forum_rooms:
                state = await patiently(
                    lambda room=room, uid=uid: mod.get_state_event(room, "m.room.member", uid),
                    "member",
                )
                out.expect(state.get("membership") == "ban", "lost", f"{uid}: not banned in {room}")
        if m.reported:
            found = [c for c in cases if c.event_id == m.reported and c.reporter == uid]
            out.expect(len(found) >= 1, "lost", f"{uid}: report on {m.reported} has no case")
            out.expect(len(found) <= 1, "doubled", f"{uid}: {len(found)} cases for one report")
    # Every command answered exactly once.
    replies = Counter(
        e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
        for e in mod.events
        if e.get("room_id") == forum.mgmt
        and e.get("sender") == forum.bot_id
        and e["_section"].endswith("timeline")
        and "m.in_reply_to" in e.get("content", {}).get("m.relates_to", {})
    )
    for command in work.commands:
        out.expect(replies[command] >= 1, "lost", f"command {command} unanswered")
        out.expect(replies[command] <= 1, "doubled", f"command {command} answered twice")
    return out


# =====================================================================================
# The whole run
# =====================================================================================


@dataclass
class FaultPlan:
    members: int
    posts: int
    parallel: int
    kills: int
    synapse_restarts: int
    locks: int
    lock_seconds: float
    bursts: int
    burst_seconds: float
    gap: float
    """Mean seconds between two faults (each kill comes at a random point around it)."""
    web_requests: int
    web_concurrency: int
    seed: int = 11

    def schedule(self) -> list[str]:
        rng = random.Random(self.seed)
        others = (
            ["synapse"] * self.synapse_restarts + ["lock"] * self.locks + ["burst"] * self.bursts
        )
        faults = ["kill"] * self.kills
        for fault in others:  # spread evenly among the kills
            faults.insert(rng.randrange(1, len(faults) + 1), fault)
        return faults


@dataclass
class FaultRun:
    hs: EmbeddedHomeserver
    proxy: RateLimitProxy
    process: ForumProcess
    forum: Forum
    db_url: str
    settings: Settings
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    restarts_synapse: int = 0
    locks_held: list[float] = field(default_factory=list)

    async def probe(self, what: str, began: float) -> None:
        """The forum answers a moderator again (``!help``); records the time since
        ``began``."""
        mark = self.forum.mod.mark()
        path = (
            f"/_matrix/client/v3/rooms/{_q(self.forum.mgmt)}/send/m.room.message/{uuid.uuid4().hex}"
        )
        content = {"msgtype": "m.text", "body": "!help"}
        data = await patiently(lambda: self.forum.mod.request("PUT", path, content), "probe")
        event_id = data["event_id"]
        await self.forum.mod.wait_for(
            lambda e: (
                e["room_id"] == self.forum.mgmt
                and e["sender"] == self.forum.bot_id
                and e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
            ),
            PATIENCE,
            after=mark,
        )
        self.recoveries.append({"fault": what, "recovered_s": round(time.monotonic() - began, 2)})

    async def inject(self, fault: str, plan: FaultPlan, rng: random.Random) -> None:
        if fault == "kill":
            await asyncio.sleep(rng.uniform(0.2, plan.gap))
            self.process.kill()
            began = time.monotonic()
            await self.process.wait_dead()
            await self.process.start()
        elif fault == "synapse":
            await self.hs.stop()
            await self.hs.start()
            self.restarts_synapse += 1
            began = time.monotonic()
        elif fault == "lock":
            self.locks_held.append(await hold_database_lock(self.db_url, plan.lock_seconds))
            began = time.monotonic()
        else:
            await self.proxy.burst(plan.burst_seconds)
            began = time.monotonic()
        await self.probe(fault, began)

    async def faults(self, plan: FaultPlan) -> None:
        rng = random.Random(plan.seed)
        for fault in plan.schedule():
            await self.inject(fault, plan, rng)
            if fault != "kill":
                await asyncio.sleep(rng.uniform(0.2, plan.gap / 2))


async def start_fault_run(hs: EmbeddedHomeserver, tmp: Path, db_url: str | None) -> FaultRun:
    """The proxy, a moderator and ``forum run`` on a fresh home, every room joined by the
    moderator; the service is up."""
    proxy = RateLimitProxy(hs)
    await proxy.start()
    mod = await TestUser.create(hs, "mod", display_name="Afi")
    mod.sync_failures_allowed = 10_000
    try:
        return await _start_fault_run(hs, proxy, mod, tmp, db_url)
    except BaseException:
        await mod.close()
        await proxy.close()
        raise


async def _start_fault_run(
    hs: EmbeddedHomeserver, proxy: RateLimitProxy, mod: TestUser, tmp: Path, db_url: str | None
) -> FaultRun:
    data = forum_data(proxy, moderators=[mod.user_id], db_url=db_url)
    data["moderation"] = {
        **FAST_MODERATION,
        "flood_messages": 1000,
        "join_wave_joins": 1000,
        "new_member_hours": 0,
    }
    web_port = free_port()
    data["web"]["port"] = web_port
    data["web"]["host"] = "127.0.0.1"
    settings = settings_from(data)
    await register_bots(hs, settings)
    await asyncio.to_thread(copy_charters, tmp)
    config = tmp / "forum.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    url = database_url(settings, home)
    web_url = f"http://127.0.0.1:{web_port}/"
    process = ForumProcess(config, home, web_url, tmp / "forum-run.log")
    await process.start()
    try:
        return await _moderator_joins(hs, proxy, process, mod, settings, data, url)
    except BaseException:
        await process.stop()
        raise


async def _moderator_joins(
    hs: EmbeddedHomeserver,
    proxy: RateLimitProxy,
    process: ForumProcess,
    mod: TestUser,
    settings: Settings,
    data: dict[str, Any],
    url: str,
) -> FaultRun:
    ids: dict[str, str] = {}
    for key in ("space", "lobby", "announcements", "management"):
        spec = getattr(settings.rooms, key)
        ids[key] = await mod.resolve_alias(settings.alias_id(spec.alias))
    for t in settings.topics:
        ids[f"topic:{t.slug}"] = await mod.resolve_alias(settings.alias_id(t.effective_alias))
    forum = Forum(hs, settings, ids, moderator=mod, data=data)
    forum.users.append(mod)
    for room in [*forum.forum_rooms, forum.mgmt]:
        await mod.wait_for_invite(room, timeout=60)
        await mod.join(room, via=forum.via)
    return FaultRun(hs, proxy, process, forum, url, settings)


async def metrics_of(web_url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(web_url + "metrics") as resp:
        body = await resp.text()
    values: dict[str, float] = {}
    for line in body.splitlines():
        found = re.match(r"^(forum_sync_lag_seconds|forum_outbox_depth)(\{[^}]*\})? (\S+)$", line)
        if found:
            values[found.group(1) + (found.group(2) or "")] = float(found.group(3))
    return values


async def run_fault_suite(
    hs: EmbeddedHomeserver, tmp: Path, db_url: str | None, plan: FaultPlan
) -> dict[str, Any]:
    """Everything: start, workload and faults together (and the web load), recovery,
    checks; the figures as a dict (``outcome`` holds the problems found)."""
    began = time.monotonic()
    run = await start_fault_run(hs, tmp, db_url)
    forum = run.forum
    work = Workload(forum, members=plan.members, posts=plan.posts, parallel=plan.parallel)
    # Spread the requests over the expected length of the faults: each kill costs a start.
    first_start = run.process.down[0][1] - run.process.down[0][0]
    expected = (
        plan.kills * (first_start + plan.gap / 2)
        + plan.synapse_restarts * (5 + plan.gap / 4)
        + plan.locks * (plan.lock_seconds + plan.gap / 4)
        + plan.bursts * (plan.burst_seconds + plan.gap / 4)
    )
    load = WebLoad(
        run.process.web_url.rstrip("/"),
        run.process,
        plan.web_requests,
        plan.web_concurrency,
        seconds=max(5.0, expected),
    )
    db: Database | None = None
    try:
        await work.prepare()
        started = time.monotonic()
        await asyncio.gather(work.run(), run.faults(plan), load.run())
        faulted = time.monotonic() - started
        # Recovery: the forum answers; every timed mute's time has passed.
        await run.probe("end", time.monotonic())
        lifted_by = max((m.muted_until or 0) for m in work.members)
        await asyncio.sleep(max(0.0, lifted_by - time.monotonic()))
        db = await Database.open(run.db_url)
        outcome = await settle_and_check(work, db, run)
        lag = await metrics_of(run.process.web_url)
        code = await run.process.stop()
        recovered = [r["recovered_s"] for r in run.recoveries if r["fault"] != "end"]
        figures = {
            "database": make_url(run.db_url).get_backend_name(),
            "events": work.events,
            "members": len(work.members),
            "commands": len(work.commands),
            "kills": run.process.kills,
            "synapse_restarts": run.restarts_synapse,
            "database_locks_s": [round(x, 1) for x in run.locks_held],
            "answered_429": run.proxy.answered_429,
            "answered_502_while_synapse_down": run.proxy.answered_502,
            "workload_and_faults_s": round(faulted, 1),
            "total_s": round(time.monotonic() - began, 1),
            "recovery_s": {
                "p50": round(percentile(recovered, 50), 2),
                "p99": round(percentile(recovered, 99), 2),
                "max": round(max(recovered, default=0), 2),
                "each": run.recoveries,
            },
            "sync_lag_s_after": lag,
            "exit_code": code,
            "tracebacks_in_log": run.process.log_count("Traceback"),
            "outcome": outcome.figures(),
            "web": load.figures(),
        }
        return figures
    finally:
        if db is not None:
            await db.close()
        with contextlib.suppress(Exception):
            await run.process.stop()
        close_lock_connections()
        await forum.close_users()
        await run.proxy.close()


async def settle_and_check(work: Workload, db: Database, run: FaultRun) -> Outcome:
    """Checks again for a while until they pass (the timer lifting the last mute, the
    collector's erasures run in the background); the last outcome."""
    deadline = time.monotonic() + 30
    while True:
        outcome = await check_outcomes(work, db, run.process.web_url)
        if not (outcome.lost or outcome.doubled or outcome.leaked):
            return outcome
        if time.monotonic() > deadline:
            return outcome
        await asyncio.sleep(1)


def summary_json(figures: dict[str, Any]) -> str:
    return json.dumps(figures, indent=2, ensure_ascii=False)
