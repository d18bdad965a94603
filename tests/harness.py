"""The one way tests start a forum, watch it and wait for it.

``start_forum`` (a fixture factory, function scope; ``start_module_forum`` is the same
factory for a module-scoped fixture) starts a :class:`~forum.app.Service` with the
features a test names, on settings derived from the real ``config/forum.toml`` made
unique per forum (aliases and bot accounts get a tag), bots registered on the session
Synapse, the web app on a free port, the clock injectable and time-driven loops off
unless asked. It returns a :class:`Forum`: room ids, bot ids, the features' objects, the
moderator, and the helpers tests share (``command``, ``join``, ``consent``, ``admit``...).

Polling is :func:`eventually`; "nothing happened" is :meth:`Forum.assert_nothing`: a
later marker in the same stream, then no unwanted event before it, and the service's
loops still alive.

Test-only switches live here, not in product modules. ``python -m tests.harness serve
CONFIG HOME`` runs a service in its own process (the crash test kills it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import pytest_asyncio
import tomli_w
from multidict import CIMultiDict
from sqlalchemy import func, select

import bridge
import moderation.bot
from bridge.models import DigestMessage
from forum.app import Service
from forum.consent import ConsentRecord, ConsentRecords
from forum.context import Feature, Rooms, ServiceContext
from forum.errors import MatrixError
from forum.homeserver import AntispamHook, EmbeddedHomeserver, free_port
from forum.settings import DEFAULT_CONFIG, Settings, parse_settings
from forum.signals import MEMBER_LEFT, PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN
from forum.storage.models import OutboxRow
from moderation import membership
from moderation.membership.models import PersonRow
from moderation.membership.repositories import People
from tests.matrix_user import Event, MatrixRequestError, Predicate, TestUser

CONFIG_DIR = DEFAULT_CONFIG.parent
BASE_CONFIG: dict[str, Any] = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))

#: Moderation thresholds small enough for a test to cross them quickly.
FAST_MODERATION: dict[str, Any] = {
    "flood_messages": 5,
    "flood_seconds": 20,
    "mention_limit": 3,
    "new_member_hours": 1,
    "words": ["arnaque", "Idiot"],
    "join_wave_joins": 50,
    "join_wave_seconds": 30,
    "steps": ["warn", "mute:1h", "ban"],
    "step_reset_hours": 24,
    "report_poll_seconds": 0.5,
}
#: The membership bot's options in tests (deadlines checked often).
MEMBERSHIP_OPTIONS: dict[str, Any] = {"deadline_poll_seconds": 0.5}

TOPIC = "droits-enfants"
OTHER_TOPIC = "egalite-filles"
CHARTER_FR = "Charte de l'Espace commun"
CHARTER_EN = "Charter of the Common space"
PUBLICATION_Q = ("résumé public", "public digest")
INVITED = ("Vous êtes invité", "You are invited")

# =====================================================================================
# Polling
# =====================================================================================


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 30,
    what: str = "condition",
    *,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` every ``interval`` seconds until true; fail naming ``what`` after
    ``timeout`` seconds. For conditions nothing signals (a database row, a web page);
    events a test user receives are awaited with ``TestUser.wait_for``."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


def export_text(directory: Path) -> str:
    """Every file of a static export, joined; a file replaced while it is listed (the
    exporter's temporary files) is read under its final name."""
    texts = []
    for p in sorted(directory.rglob("*")):
        with contextlib.suppress(FileNotFoundError):
            if p.is_file():
                texts.append(p.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(texts)


def operator_config(forum: Forum, path: Path) -> Path:
    """The service's own settings written as an operator's file (no bot secrets), for a
    ``forum …`` command run beside it."""
    data: dict[str, Any] = json.loads(forum.ctx.settings.model_dump_json(exclude_none=True))
    for bot in data["bots"].values() if isinstance(data["bots"], dict) else []:
        if isinstance(bot, dict):
            for key in ("password", "access_token"):
                bot.pop(key, None)
    data["bots"].pop("ignore", None)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


async def join_invited(user: TestUser, room: str, via: list[str], timeout: float = 15) -> None:
    """Join a room ``user`` was invited to, as a person would: over federation the invite
    reaches the guest's server before the inviting server has stored it, so a join in
    that moment is refused ("You are not invited"); the person tries again."""

    async def joined() -> bool:
        try:
            await user.join(room, via=via)
        except MatrixRequestError as exc:
            if exc.status == 403 and "invited" in str(exc.body.get("error", "")):
                return False
            raise
        return True

    await eventually(joined, timeout, what=f"{user.user_id} joins {room} once invited")


# =====================================================================================
# Settings and time
# =====================================================================================


def forum_data(
    hs: EmbeddedHomeserver | Any,
    *,
    tag: str | None = None,
    moderators: Iterable[str] = (),
    db_url: str | None = None,
) -> dict[str, Any]:
    """The real configuration as a dict, pointed at ``hs`` and made unique by ``tag``
    (``hs`` needs ``url`` and ``server_name`` only)."""
    tag = tag or secrets.token_hex(3)
    data = copy.deepcopy(BASE_CONFIG)
    data["homeserver"] = {
        "mode": "external",
        "url": hs.url,
        "server_name": hs.server_name,
        "max_retries": 8,
        "request_timeout_seconds": 30,
    }
    for role in ("membership", "moderation"):
        bot = data["bots"][role]
        bot["localpart"] = f"{bot['localpart']}-{tag}"
        bot["password"] = f"pw-{role}-{tag}"
    for room in data["rooms"].values():
        room["alias"] = f"{room['alias']}-{tag}"
    for topic in data["topics"]:
        topic["alias"] = f"{topic['slug']}-{tag}"
    data["moderators"] = list(moderators)
    data["demo"] = {"accounts": []}
    data["antispam"] = {"enabled": False}  # on for a test that asks: antispam_config(hs)
    if db_url:
        data["database"] = {"url": db_url}
    return data


def loopback_hook() -> AntispamHook:
    """A spam-checker hook: the module calls a free loopback port with a new secret."""
    return AntispamHook(f"http://127.0.0.1:{free_port()}", secrets.token_urlsafe(24))


def federating(directory: Path, *, antispam: bool = False) -> EmbeddedHomeserver:
    """A test homeserver that federates on loopback: its server name is the IP literal
    ``127.0.0.1:<federation port>`` (no DNS or well-known needed), with a TLS federation
    listener (self-signed) and its client API on another free port. ``antispam``: it loads
    the spam-checker module (:func:`loopback_hook`)."""
    fed_port = free_port()
    return EmbeddedHomeserver(
        directory,
        server_name=f"127.0.0.1:{fed_port}",
        port=free_port(),
        federation_port=fed_port,
        for_tests=True,
        antispam=loopback_hook() if antispam else None,
    )


def antispam_config(hs: EmbeddedHomeserver) -> dict[str, Any]:
    """The ``config`` of a forum that answers ``hs``'s spam-checker module (the port and
    secret the session Synapse was started with; one such forum at a time)."""
    hook = hs.config.antispam
    assert hook is not None, "this homeserver does not load the spam-checker module"
    url = urlsplit(hook.base_url)
    return {
        "antispam": {
            "enabled": True,
            "host": url.hostname,
            "port": url.port,
            "secret": hook.secret,
        }
    }


def settings_from(data: Mapping[str, Any]) -> Settings:
    return parse_settings(dict(data), "test settings", env={})


def merge(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` merged into ``data`` (tables merged key by key, other values replaced)."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            merge(data[key], value)
        else:
            data[key] = copy.deepcopy(value)
    return data


async def register_bots(hs: EmbeddedHomeserver, settings: Settings) -> None:
    for bot, admin in ((settings.bots.moderation, True), (settings.bots.membership, False)):
        assert bot.password is not None
        await hs.register(
            bot.localpart,
            bot.password.get_secret_value(),
            admin=admin,
            display_name=bot.display_name,
        )


def week_of(moment: datetime, tz: str) -> str:
    """The ISO week of ``moment`` in time zone ``tz`` (``2026-W48``), computed here rather
    than by the product's :mod:`bridge.weeks`, so that tests check it."""
    year, week, _ = moment.astimezone(ZoneInfo(tz)).isocalendar()
    return f"{year}-W{week:02d}"


def next_week_start(moment: datetime, tz: str) -> datetime:
    """The next Monday 00:00 in ``tz`` after ``moment``, in UTC."""
    local = moment.astimezone(ZoneInfo(tz))
    monday = (local + timedelta(days=7 - local.weekday())).date()
    return datetime(monday.year, monday.month, monday.day, tzinfo=ZoneInfo(tz)).astimezone(UTC)


class TestClock:
    """The service's clock in a test: the wall clock moved by ``offset``."""

    __test__ = False

    def __init__(self, offset: timedelta = timedelta()) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @classmethod
    def just_before(cls, moment: datetime, by: timedelta = timedelta(seconds=0.5)) -> TestClock:
        """A clock that reaches ``moment`` in ``by``."""
        return cls(moment - by - datetime.now(UTC))


async def clear_of_week_boundary(tz: str, margin: timedelta = timedelta(minutes=3)) -> None:
    """Wait, if the week (Monday 00:00 in ``tz``) ends within ``margin``, until it has
    begun: the messages of a test then fall in one week, whatever the hour of the run."""
    now = datetime.now(UTC)
    end = next_week_start(now, tz)
    if end - now < margin:
        await asyncio.sleep((end - now).total_seconds() + 1)


def config_dir_with_charters(tmp: Path, versions: Iterable[int] = (1,)) -> Path:
    """A config directory holding charter versions (v2+ are v1 with an added rule)."""
    for lang in ("fr", "en"):
        src = (CONFIG_DIR / "charter" / lang / "v1.md").read_text(encoding="utf-8")
        target = tmp / "charter" / lang
        target.mkdir(parents=True, exist_ok=True)
        for v in versions:
            extra = (
                ""
                if v == 1
                else f"\n\n7. **Version {v}.** "
                + ("Nous citons nos sources." if lang == "fr" else "We cite our sources.")
            )
            (target / f"v{v}.md").write_text(src + extra, encoding="utf-8")
    return tmp


def copy_charters(dst: Path) -> None:
    shutil.copytree(CONFIG_DIR / "charter", dst / "charter", dirs_exist_ok=True)


# =====================================================================================
# A running forum
# =====================================================================================


@dataclass
class SignalLog:
    """The consent signals the service sent, by name and user."""

    seen: list[tuple[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, ctx: ServiceContext) -> None:
        for name in (PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN, MEMBER_LEFT):
            ctx.signals.connect(name, self._receiver(name))

    def _receiver(self, name: str) -> Any:
        async def receive(user_id: str, **_: Any) -> None:
            self.seen.append((name, user_id))
            self.changed.set()

        return receive

    async def wait(self, name: str, user_id: str, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while (name, user_id) not in self.seen:
                self.changed.clear()
                await self.changed.wait()


def is_message(room: str, sender: str | None = None, contains: str | None = None) -> Predicate:
    def pred(e: Event) -> bool:
        return (
            e["room_id"] == room
            and e["type"] == "m.room.message"
            and (sender is None or e["sender"] == sender)
            and (contains is None or contains in e["content"]["body"])
        )

    return pred


def is_membership(room: str, user_id: str, membership: str) -> Predicate:
    """``user_id``'s membership in ``room`` becoming ``membership``."""

    def pred(e: Event) -> bool:
        return (
            e["room_id"] == room
            and e["type"] == "m.room.member"
            and e["state_key"] == user_id
            and e["content"]["membership"] == membership
        )

    return pred


def is_reply(room: str, sender: str, event_id: str) -> Predicate:
    """``sender``'s message in ``room`` replying to ``event_id``."""

    def pred(e: Event) -> bool:
        return (
            e["room_id"] == room
            and e["sender"] == sender
            and e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
        )

    return pred


class Forum:
    """A forum under test. ``service`` is None for a service running in another process
    (only the settings and room ids are known then)."""

    def __init__(
        self,
        hs: EmbeddedHomeserver,
        settings: Settings,
        rooms: Mapping[str, str],
        *,
        service: Service | None = None,
        moderator: TestUser | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.hs = hs
        self.data = data or {}
        """The configuration it was started on (start another on the same: ``data=``)."""
        self.settings = settings
        self.rooms = Rooms(rooms)
        self.service = service
        self.moderator = moderator
        self.users: list[TestUser] = []
        self.signals = SignalLog()
        self.started_week = week_of(self.clock(), settings.digest.timezone)
        if service is not None:
            self.signals.attach(self.ctx)

    # --- what it is --------------------------------------------------------------------
    @property
    def ctx(self) -> ServiceContext:
        assert self.service is not None
        assert self.service.ctx is not None
        return self.service.ctx

    def clock(self) -> datetime:
        return self.service.clock() if self.service else datetime.now(UTC)

    def feature(self, name: str) -> Any:
        assert self.service is not None
        return self.service.feature(name)

    @property
    def mod(self) -> TestUser:
        assert self.moderator is not None, "start the forum with moderator=True"
        return self.moderator

    @property
    def bot(self) -> Any:
        """The moderation bot."""
        return self.feature("moderation")

    @property
    def digest(self) -> Any:
        return self.feature("digest")

    @property
    def bot_id(self) -> str:
        return self.settings.moderation_bot_id

    @property
    def membership_bot_id(self) -> str:
        return self.settings.membership_bot_id

    @property
    def server(self) -> str:
        return self.settings.server_name

    @property
    def via(self) -> list[str]:
        return [self.settings.server_name]

    @property
    def ids(self) -> dict[str, str]:
        return dict(self.rooms)

    @property
    def mgmt(self) -> str:
        return self.rooms["management"]

    @property
    def forum_rooms(self) -> list[str]:
        return list(self.rooms.forum_ids)

    @property
    def topic(self) -> str:
        return self.room(TOPIC)

    def room(self, slug: str = TOPIC) -> str:
        return self.rooms[f"topic:{slug}"]

    @property
    def url(self) -> str:
        assert self.service is not None
        return f"http://127.0.0.1:{self.service.bound_port}"

    def week(self) -> str:
        """The week the test's messages fall in (the forum started clear of a boundary)."""
        return self.started_week

    # --- people ------------------------------------------------------------------------
    async def user(
        self, name: str, display_name: str | None = None, *, sync: bool = True,
        encrypted: bool = False,
    ) -> TestUser:  # fmt: skip
        """A new person, closed with the forum (an encrypting client if ``encrypted``)."""
        user = await TestUser.create(
            self.hs, name, display_name=display_name, sync=sync, encrypted=encrypted
        )
        self.users.append(user)
        return user

    async def member(
        self, name: str, display_name: str | None = None, *, sync: bool = True
    ) -> TestUser:
        """A person who joined the Space and every forum room."""
        user = await self.user(name, display_name, sync=sync)
        await self.join_forum(user)
        return user

    async def join_forum(self, user: TestUser) -> None:
        """Invite ``user`` to the Space (moderation bot) and join every forum room."""
        await self.ctx.moderation_gateway.invite(self.rooms["space"], user.user_id)
        await user.join(self.rooms["space"], via=self.via)
        others = [r for r in self.forum_rooms if r != self.rooms["space"]]
        await asyncio.gather(*(user.join(r, via=self.via) for r in others))

    async def join(self, user: TestUser, *rooms: str) -> None:
        """Invite ``user`` to ``rooms`` (the topic by default) with the moderation bot and
        join (topic rooms are restricted)."""
        for room in rooms or (self.topic,):
            # already invited: moderators are invited by provisioning
            with contextlib.suppress(MatrixError):
                await self.ctx.moderation_gateway.invite(room, user.user_id)
            await user.join(room, via=self.via)

    async def consent(self, user: TestUser | str, granted: bool = True) -> None:
        """Record a publication consent as the membership bot would."""
        user_id = user if isinstance(user, str) else user.user_id
        async with self.ctx.db.sessionmaker() as s, s.begin():
            await ConsentRecords(s).add(user_id, "publication", granted, method="test")

    async def person(self, user_id: str) -> PersonRow | None:
        async with self.ctx.db.sessionmaker() as s:
            return await People(s).get(user_id)

    async def history(self, user_id: str) -> list[ConsentRecord]:
        async with self.ctx.db.sessionmaker() as s:
            return await ConsentRecords(s).history(user_id)

    # --- the moderation bot --------------------------------------------------------------
    async def command(self, text: str, sender: TestUser | None = None, timeout: float = 20) -> str:
        """Send a command in the management room; the bot's reply (plain body)."""
        sender = sender or self.mod
        mark = sender.mark()
        event_id = await sender.send_text(self.mgmt, text)
        reply = await sender.wait_for(
            is_reply(self.mgmt, self.bot_id, event_id), timeout, after=mark
        )
        return str(reply["content"]["body"])

    async def management_message(self, *parts: str, after: int, timeout: float = 20) -> Event:
        """The moderation bot's message in the management room (seen by the moderator from
        position ``after``) whose body holds every one of ``parts``."""
        return await self.mod.wait_for(
            lambda e: (
                is_message(self.mgmt, self.bot_id)(e)
                and all(part in e["content"]["body"] for part in parts)
            ),
            timeout,
            after=after,
        )

    async def wait_membership(
        self, user_id: str, membership: str, rooms: list[str] | None = None, after: int = 0,
        timeout: float = 20,
    ) -> None:  # fmt: skip
        """The moderator sees ``user_id`` become ``membership`` in every room of ``rooms``."""
        waiting = set(rooms or self.forum_rooms)

        def pred(e: Event) -> bool:
            if (
                e["type"] == "m.room.member"
                and e["state_key"] == user_id
                and e["content"]["membership"] == membership
                and e["room_id"] in waiting
                and e["_section"].endswith("timeline")
            ):
                waiting.discard(e["room_id"])
            return not waiting

        await self.mod.wait_for(pred, timeout, after=after)

    async def dm_room(self, user: TestUser, after: int = 0, timeout: float = 20) -> str:
        """Wait for a bot's DM invite to ``user``, join it, return its id."""
        invite = await user.wait_for(
            lambda e: (
                e["_section"] == "invite"
                and e["type"] == "m.room.member"
                and e["state_key"] == user.user_id
                and e["content"]["is_direct"] is True
            ),
            timeout,
            after=after,
        )
        room = str(invite["room_id"])
        await user.join(room)
        return room

    async def power(self, room: str, user_id: str) -> int:
        pl = await self.mod.get_state_event(room, "m.room.power_levels")
        return int(pl.get("users", {}).get(user_id, pl.get("users_default", 0)))

    async def wait_redacted(
        self, event_ids: list[str], after: int = 0, timeout: float = 20
    ) -> None:
        waiting = set(event_ids)

        def pred(e: Event) -> bool:
            if e["type"] == "m.room.redaction":
                waiting.discard(e.get("redacts") or e["content"].get("redacts"))
            return not waiting

        await self.mod.wait_for(pred, timeout, after=after)

    # --- the membership bot --------------------------------------------------------------
    def is_dm_invite(self, user: TestUser, e: Event) -> bool:
        return (
            e.get("_section") == "invite"
            and e.get("type") == "m.room.member"
            and e.get("state_key") == user.user_id
            and e.get("sender") == self.membership_bot_id
            and e.get("room_id") not in self.rooms.values()
        )

    async def wait_dm(self, user: TestUser, timeout: float = 20, after: int = 0) -> str:
        """The DM room the membership bot invites ``user`` to (joined); returns its id."""
        ev = await user.wait_for(lambda e: self.is_dm_invite(user, e), timeout, after=after)
        room = str(ev["room_id"])
        await join_invited(user, room, self.via)
        return room

    def dm_invites(self, user: TestUser) -> set[str]:
        return {e["room_id"] for e in user.events if self.is_dm_invite(user, e)}

    async def open_dm_with_bot(self, user: TestUser) -> str:
        """The person opens a DM with the welcome bot (door 3) and gets the language
        question."""
        room = await user.create_room(
            is_direct=True, invite=[self.membership_bot_id], preset="trusted_private_chat"
        )
        await self.wait_bot_text(user, room, "Which language")
        return room

    async def wait_bot_text(
        self, user: TestUser, room: str, *needles: str, timeout: float = 20, after: int = 0,
        sender: str | None = None,
    ) -> Event:  # fmt: skip
        """A message of the membership bot (or ``sender``) in ``room`` whose body contains
        one of ``needles``."""
        sender = sender or self.membership_bot_id

        def match(e: Event) -> bool:
            body = str(e["content"].get("body", ""))
            return (
                e["room_id"] == room
                and e["type"] == "m.room.message"
                and e["sender"] == sender
                and any(n in body for n in needles)
            )

        return await user.wait_for(match, timeout, after=after)

    async def wait_invites(self, user: TestUser, timeout: float = 30) -> None:
        """Wait for invites to the Space and every topic room."""
        for room in [self.rooms["space"], *self.rooms.topic_ids.values()]:
            await user.wait_for_invite(room, timeout)

    async def admit(
        self, user: TestUser, *, publication: bool = True, knock: str = "Bonjour"
    ) -> str:
        """Walk ``user`` through the whole flow by a knock on the Space; returns the DM."""
        mark = user.mark()
        await user.knock(self.rooms["space"], knock, via=self.via)
        room = await self.wait_dm(user, after=mark)
        await self.wait_bot_text(user, room, CHARTER_FR, CHARTER_EN)
        mark = user.mark()
        await user.send_text(room, "oui")
        await self.wait_bot_text(user, room, *PUBLICATION_Q, after=mark)
        await user.send_text(room, "oui" if publication else "non")
        await self.wait_invites(user)
        return room

    # --- the digest and the web ----------------------------------------------------------
    async def stored_bodies(self) -> list[str]:
        async with self.ctx.db.sessionmaker() as s:
            rows = await s.execute(select(DigestMessage.body, DigestMessage.html))
            return [f"{b} {h or ''}" for b, h in rows]

    async def get(self, path: str, **kw: Any) -> tuple[int, str, CIMultiDict[str]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.url + path, allow_redirects=False, **kw) as resp,
        ):
            return resp.status, await resp.text(), resp.headers.copy()

    # --- nothing happened ----------------------------------------------------------------
    def assert_alive(self) -> None:
        """The service's loops (sync, outbox...) have not failed."""
        if self.service is None:
            return
        failures = [(name, repr(exc)) for name, exc in self.service.tasks.failures]
        assert not self.service.tasks.failed.is_set(), f"a critical task failed: {failures}"
        assert all(not t.done() for t in self.service._sync_tasks), "a sync loop ended"

    async def caught_up(self, gateway: Any, timeout: float = 20) -> None:
        """``gateway``'s bot handled every event it could see so far: a ``/sync`` from the
        token it stored (after its handlers and bookkeeping), with its filter and no
        wait, brings no room event and no invitation. (A test that locks the database
        while the bot still handles its start-up events would hold up their bookkeeping,
        and with it everything after them.)"""
        url = f"{self.hs.url}/_matrix/client/v3/sync"
        headers = {"Authorization": f"Bearer {gateway.access_token}"}

        async def idle() -> bool:
            token = gateway.next_batch
            if token is None:
                return False
            query = {
                "since": token,
                "timeout": "0",
                "filter": json.dumps(gateway.sync_filter(), separators=(",", ":")),
            }
            async with (
                aiohttp.ClientSession() as http,
                http.get(url, params=query, headers=headers) as response,
            ):
                data = await response.json()
            rooms = data.get("rooms") or {}
            if rooms.get("invite"):
                return False
            return not any(
                (room.get("timeline") or {}).get("events")
                for section in ("join", "leave")
                for room in (rooms.get(section) or {}).values()
            )

        await eventually(idle, timeout, "the bot handled everything it could see")

    async def outbox_idle(self, timeout: float = 20) -> None:
        """Wait until the outbox has carried out every item that is due."""

        async def idle() -> bool:
            async with self.ctx.db.sessionmaker() as s:
                due = await s.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(OutboxRow.done_at.is_(None), OutboxRow.next_attempt_at.is_not(None))
                )
            return due == 0

        await eventually(idle, timeout, "the outbox carried out what was due")

    async def assert_nothing(
        self,
        observer: TestUser,
        unwanted: Predicate,
        marker: Callable[[], Awaitable[Any]],
        *,
        after: int,
        echo_room: str | None = None,
        what: str = "an unwanted event",
    ) -> None:
        """Nothing matching ``unwanted`` reached ``observer`` (from buffer position
        ``after``) before a later marker did.

        ``marker`` sends something a bot must answer after what it received before and
        waits for the answer (:meth:`moderation_marker`, :meth:`membership_marker`, or
        :meth:`own_marker` when no bot is involved). Then the outbox is let finish what
        is due, ``observer`` posts an echo in ``echo_room`` (the marker answer's room by
        default) and sees it, so that its stream holds everything sent before. Last, the
        service's loops must still be alive."""
        answer = await marker()
        if self.service is not None:
            await self.outbox_idle()
        room = echo_room or (answer.get("room_id") if isinstance(answer, dict) else None)
        if room is not None:
            await self.own_marker(observer, room)()
        seen = [e for e in observer.events[after:] if _matches(unwanted, e)]
        assert not seen, f"{what}: {json.dumps(seen, ensure_ascii=False)[:2000]}"
        self.assert_alive()

    async def assert_not_stored(
        self, marker: Callable[[], Awaitable[bool]], *texts: str, what: str = "marker"
    ) -> None:
        """The digest stored none of ``texts`` by the time it handled a later marker
        event (``marker`` says whether it did: polled), and the service is alive."""
        await eventually(marker, 20, what)
        stored = " ".join(await self.stored_bodies())
        kept = [t for t in texts if t in stored]
        assert not kept, f"stored although it should not be: {kept}"
        self.assert_alive()

    def moderation_marker(self, sender: TestUser | None = None) -> Callable[[], Awaitable[Any]]:
        """A marker for :meth:`assert_nothing`: ``!help`` in the management room, answered
        by the moderation bot after everything it received before."""

        async def marker() -> dict[str, str]:
            await self.command("!help", sender=sender)
            return {"room_id": self.mgmt}

        return marker

    def membership_marker(self, user: TestUser, room: str) -> Callable[[], Awaitable[Any]]:
        """A marker for :meth:`assert_nothing`: ``!help`` in ``user``'s DM with the
        membership bot, and its answer."""

        async def marker() -> Event:
            mark = user.mark()
            await user.send_text(room, "!help")
            return await self.wait_bot_text(user, room, "Commands:", "Commandes", after=mark)

        return marker

    def own_marker(self, user: TestUser, room: str) -> Callable[[], Awaitable[Any]]:
        """A marker for :meth:`assert_nothing` when no bot answers: ``user`` posts a
        marker in ``room`` and sees it come back in their own stream."""

        async def marker() -> Event:
            token = f"marker-{secrets.token_hex(4)}"
            mark = user.mark()
            await user.send_text(room, token)
            return await user.wait_for_text(room, token, after=mark)

        return marker

    async def close_users(self) -> None:
        for u in self.users:
            await u.close()


def _matches(predicate: Predicate, e: Event) -> bool:
    try:
        return bool(predicate(e))
    except (KeyError, TypeError, AttributeError, IndexError):
        return False


# =====================================================================================
# Starting forums
# =====================================================================================

FEATURES = ("membership", "moderation", "digest")


def _features(names: Sequence[str], membership_options: Mapping[str, Any]) -> list[Feature]:
    unknown = set(names) - set(FEATURES)
    assert not unknown, f"unknown features {unknown}; known: {FEATURES}"
    built = {
        "membership": lambda: membership.feature(**{**MEMBERSHIP_OPTIONS, **membership_options}),
        "moderation": lambda: moderation.bot.FEATURE,
        "digest": lambda: bridge.FEATURE,
    }
    return [built[name]() for name in FEATURES if name in names]


class ForumStarter:
    """Starts forums on ``hs`` and stops them all at the end (see :func:`start_forum`)."""

    def __init__(self, hs: EmbeddedHomeserver, tmp: Callable[[], Path]) -> None:
        self.hs = hs
        self.tmp = tmp
        self.forums: list[Forum] = []
        self.stopped: list[Forum] = []

    async def __call__(
        self,
        *features: str,
        config: Mapping[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        moderation: Mapping[str, Any] | None = None,
        membership: Mapping[str, Any] | None = None,
        moderator: bool | TestUser = False,
        moderator_joins: Iterable[str] = ("management",),
        db_url: str | None = None,
        home: Path | None = None,
        config_dir: Path = CONFIG_DIR,
        clock: Callable[[], datetime] | None = None,
        schedules: bool = False,
        hs: EmbeddedHomeserver | None = None,
    ) -> Forum:
        """Start a forum with ``features`` (names in :data:`FEATURES`; none: the bare
        forum, bots provisioned and the web app).

        ``config`` is merged into the real configuration (made unique for this forum);
        ``data`` replaces it whole (a restart on the same settings: ``forum.data``).
        ``moderation`` is merged over :data:`FAST_MODERATION`; ``membership`` are the
        membership bot's options. ``moderator``: a person (``True``: a new one, "Afi")
        listed as moderator, who joins the rooms of ``moderator_joins`` (room keys,
        ``"*"`` for every forum room and the management room). ``clock``: the service's
        clock; ``schedules``: whether time-driven loops run (off by default); ``hs``: another
        homeserver than the starter's."""
        hs = hs or self.hs
        names = features
        mod: TestUser | None = None
        if moderator is True:
            mod = await TestUser.create(hs, "mod", display_name="Afi")
        elif isinstance(moderator, TestUser):
            mod = moderator
        if data is None:
            data = forum_data(hs, moderators=[mod.user_id] if mod else [], db_url=db_url)
            if "moderation" in names or moderation is not None:
                data["moderation"] = {**FAST_MODERATION, **(moderation or {})}
            merge(data, config or {})
        settings = settings_from(data)
        if "digest" in names:
            await clear_of_week_boundary(settings.digest.timezone)
        await register_bots(hs, settings)
        svc_home = home or self.tmp() / f"home-{secrets.token_hex(3)}"
        await asyncio.to_thread(svc_home.mkdir, parents=True, exist_ok=True)
        service = Service(
            settings,
            config_dir=config_dir,
            home=svc_home,
            features=_features(names, membership or {}),
            web_port=0,
            schedules=schedules,
            # a fresh database per forum: migrated here, not by a child process each time
            # (the child's way is tested by test_storage, test_run and the crash test)
            migrate_apart=False,
            **({"clock": clock} if clock else {}),
        )
        try:
            ctx = await service.start()
        except BaseException:
            await service.stop()
            raise
        forum = Forum(hs, settings, ctx.rooms, service=service, moderator=mod, data=data)
        if mod is not None and moderator is True:
            forum.users.append(mod)
        self.forums.append(forum)
        if mod is not None:
            keys = list(moderator_joins)
            rooms = (
                [*forum.forum_rooms, forum.mgmt] if "*" in keys else [forum.rooms[k] for k in keys]
            )
            for room in rooms:
                await mod.wait_for_invite(room, timeout=30)
            await asyncio.gather(*(mod.join(r, via=forum.via) for r in rooms))
        return forum

    async def stop(self, forum: Forum) -> None:
        """Stop one forum now (a restart test starts another on the same home); once."""
        if forum.service is not None and forum not in self.stopped:
            self.stopped.append(forum)
            await forum.service.stop()

    async def close(self) -> None:
        for forum in reversed(self.forums):
            await self.stop(forum)
            await forum.close_users()

    async def __aenter__(self) -> ForumStarter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


StartForum = ForumStarter


@pytest_asyncio.fixture
async def start_forum(synapse: EmbeddedHomeserver, tmp_path: Path) -> AsyncIterator[ForumStarter]:
    """``await start_forum("moderation", moderator=True, ...)``: a running :class:`Forum`
    on the session Synapse, stopped after the test (see :meth:`ForumStarter.__call__`)."""
    starter = ForumStarter(synapse, lambda: tmp_path)
    try:
        yield starter
    finally:
        await starter.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def start_module_forum(
    synapse: EmbeddedHomeserver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ForumStarter]:
    """:func:`start_forum` for a module-scoped forum fixture."""
    starter = ForumStarter(synapse, lambda: tmp_path_factory.mktemp("forum"))
    try:
        yield starter
    finally:
        await starter.close()


# =====================================================================================
# A service in its own process (the crash test)
# =====================================================================================


def _crashing(base: Feature) -> Feature:
    """``base`` whose bot kills its own process (SIGKILL) right after committing a
    publication answer with its outbox items, before anything is sent (the crash test)."""

    async def setup(ctx: ServiceContext) -> Any:
        bot = await base.setup(ctx)
        record = bot.conversation.record_publication

        async def record_then_die(*args: Any, **kwargs: Any) -> None:
            await record(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        bot.conversation.record_publication = record_then_die
        return bot

    return replace(base, setup=setup)


async def _serve(config: str, home: str, *, crash_after_consent: bool = False) -> None:
    """Run a forum with the membership bot until it fails or is signalled; with
    ``crash_after_consent``, the process dies as the first admission is committed."""
    import logging

    from forum.settings import load_settings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    settings = load_settings(config, env={})
    bot = membership.feature(deadline_poll_seconds=1)
    service = Service(
        settings,
        config_dir=CONFIG_DIR,
        home=Path(home),
        features=[_crashing(bot) if crash_after_consent else bot],
        web_port=0,
        schedules=False,
    )
    await service.start()
    print("READY", flush=True)
    try:
        await service.wait_failed()
    finally:
        await service.stop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in ("serve", "serve-crash"):
        asyncio.run(_serve(sys.argv[2], sys.argv[3], crash_after_consent=sys.argv[1] != "serve"))
    else:
        print("usage: python -m tests.harness serve|serve-crash CONFIG HOME", file=sys.stderr)
        sys.exit(2)


async def published_forum_with_export(
    start: ForumStarter, tmp_path_factory: pytest.TempPathFactory
) -> Forum:
    """A forum with the membership bot and the digest, a moderator in the topic room, the
    current week published and a static export kept up to date (``forum.export_dir``):
    the module forum of the consent journeys and of the digest's consent cases."""
    forum = await start("membership", "digest", moderator=True, moderator_joins=())
    await forum.join(forum.mod, forum.room())
    await forum.digest.publish(forum.week())
    export = tmp_path_factory.mktemp("export")
    await forum.digest.export_to(export)
    forum.export_dir = export  # type: ignore[attr-defined]
    return forum
