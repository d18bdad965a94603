"""The composition root: the one place that builds everything and wires it together.

:class:`Service` opens the database (migrating it), logs the bots in, provisions the
forum, lets each component register its handlers, then runs the bots' sync loops, the
outbox worker and the web app until stopped. Components are plain async callables that
receive a :class:`ServiceContext` (the membership bot, the moderation bot and the digest
come in through :func:`default_components`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from forum.credentials import load_or_create_secrets
from forum.errors import MatrixError
from forum.events import Message
from forum.gateway import Gateway
from forum.homeserver import EmbeddedHomeserver
from forum.i18n import I18n
from forum.provisioning import ApplyResult, Plan, provision
from forum.settings import Settings, database_url
from forum.signals import Signals
from forum.storage import Database, Executor, OutboxWorker, ProcessedEvents, utcnow
from forum.tasks import TaskSupervisor
from forum.web import create_app, run_web

log = logging.getLogger(__name__)

WebExtension = Callable[[web.Application], None]

#: Event ids handled are remembered this long (a replay from an older token is not
#: expected: tokens are stored after every batch).
PROCESSED_EVENTS_KEPT = timedelta(days=30)


@dataclass
class ServiceContext:
    """What components receive: everything is built already, nothing is started."""

    settings: Settings
    config_dir: Path
    home: Path
    db: Database
    membership: Gateway
    moderation: Gateway
    i18n: I18n
    tasks: TaskSupervisor
    room_ids: dict[str, str]
    outbox_executors: dict[str, Executor] = field(default_factory=dict)
    web_extensions: list[WebExtension] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    signals: Signals = field(default_factory=Signals)
    dm_claims: list[Callable[[Message], Awaitable[bool]]] = field(default_factory=list)
    """Features that ask people questions in the membership bot's DMs (the digest asks
    whether a message may be quoted) claim the answers: the membership bot does not
    answer a DM message that one of these says is for it."""
    outbox: OutboxWorker | None = None

    def room_id(self, key: str) -> str:
        return self.room_ids[key]

    @property
    def topic_room_ids(self) -> dict[str, str]:
        return {
            k.removeprefix("topic:"): v for k, v in self.room_ids.items() if k.startswith("topic:")
        }

    @property
    def forum_room_ids(self) -> list[str]:
        """The rooms members use: the Space, lobby, announcements and topics."""
        return [v for k, v in self.room_ids.items() if k not in {"management", "policy"}]


Component = Callable[[ServiceContext], Awaitable[object]]


def default_components() -> list[Component]:
    """The features wired into ``forum run``, in start order."""
    import bridge
    import moderation.bot
    from moderation import membership

    return [membership.setup, moderation.bot.setup, bridge.setup]


def feature_commands() -> list[Callable[[Any], None]]:
    """Functions adding the features' subcommands to the ``forum`` argument parser."""
    import bridge
    import moderation.bot
    from moderation import membership

    return [membership.add_commands, moderation.bot.add_commands, bridge.add_commands]


@dataclass(frozen=True)
class BotCredentials:
    password: str | None
    access_token: str | None


def bot_credentials(settings: Settings, home: Path) -> dict[str, BotCredentials]:
    """Credentials by bot role. With the embedded homeserver, generated passwords are kept
    in ``$FORUM_HOME/secrets.json`` (mode 0600)."""
    bots = {"membership": settings.bots.membership, "moderation": settings.bots.moderation}
    generated: dict[str, str] = {}
    if settings.homeserver.mode == "embedded":
        generated = load_or_create_secrets(
            home / "secrets.json", [f"bot:{b.localpart}" for b in bots.values()]
        )
    out = {}
    for role, bot in bots.items():
        password = bot.password.get_secret_value() if bot.password else None
        token = bot.access_token.get_secret_value() if bot.access_token else None
        out[role] = BotCredentials(password or generated.get(f"bot:{bot.localpart}"), token)
    return out


def embedded_homeserver(settings: Settings, home: Path, **kw: Any) -> EmbeddedHomeserver:
    emb = settings.homeserver.embedded
    return EmbeddedHomeserver(
        home / "synapse", server_name=emb.server_name, host=emb.host, port=emb.port, **kw
    )


async def register_embedded_accounts(
    settings: Settings, home: Path, hs: EmbeddedHomeserver
) -> dict[str, str]:
    """Register the bots and the demo accounts; return demo passwords by localpart."""
    creds = bot_credentials(settings, home)
    demo = settings.demo.accounts
    secrets = load_or_create_secrets(home / "secrets.json", [f"demo:{a.localpart}" for a in demo])
    accounts: list[tuple[str, str, bool, str | None]] = [
        (
            settings.bots.moderation.localpart,
            creds["moderation"].password or "",
            True,
            settings.bots.moderation.display_name,
        ),
        (
            settings.bots.membership.localpart,
            creds["membership"].password or "",
            False,
            settings.bots.membership.display_name,
        ),
    ]
    accounts += [(a.localpart, secrets[f"demo:{a.localpart}"], False, a.display_name) for a in demo]
    await hs.ensure_accounts(accounts)
    return {a.localpart: secrets[f"demo:{a.localpart}"] for a in demo}


def make_gateway(
    settings: Settings, db: Database, user_id: str, creds: BotCredentials, device_name: str
) -> Gateway:
    hs = settings.homeserver
    return Gateway(
        homeserver_url=hs.effective_url,
        user_id=user_id,
        sessionmaker=db.sessionmaker,
        password=creds.password,
        access_token=creds.access_token,
        device_name=device_name,
        request_timeout=hs.request_timeout_seconds,
        max_retries=hs.max_retries,
    )


async def exempt_from_rate_limits(admin: Gateway, user_ids: Sequence[str]) -> bool:
    """Lift the homeserver's rate limits for our bots (Synapse admin API; needs ``admin`` to
    be a server admin, as the moderation bot is on the embedded homeserver). Returns False
    when the homeserver refused: the bots then live with the limits (429s are retried)."""
    for user_id in user_ids:
        try:
            await admin.request(
                "POST",
                f"/users/{urllib.parse.quote(user_id, safe='')}/override_ratelimit",
                body={"messages_per_second": 0, "burst_count": 0},
                api="/_synapse/admin/v1",
            )
        except MatrixError as exc:
            log.info("rate limits of the bots stay as they are (%s)", exc)
            return False
    return True


class Service:
    """The whole service in one asyncio process."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_dir: Path,
        home: Path,
        components: Sequence[Component] | None = None,
        web_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.home = home
        self.components = list(default_components() if components is None else components)
        self.web_port = settings.web.port if web_port is None else web_port
        self.tasks = TaskSupervisor()
        self.db: Database | None = None
        self.ctx: ServiceContext | None = None
        self.runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        self.plan: Plan | None = None
        self.result: ApplyResult | None = None
        self._gateways: list[Gateway] = []
        self._sync_tasks: list[asyncio.Task[None]] = []

    @property
    def web_url(self) -> str:
        if self.settings.web.public_url:
            return self.settings.web.public_url.rstrip("/") + "/"
        return f"http://{self.settings.web.host}:{self.bound_port or self.web_port}/"

    async def start(self) -> ServiceContext:
        settings = self.settings
        self.db = await Database.open(database_url(settings, self.home))
        creds = bot_credentials(settings, self.home)
        moderation = make_gateway(
            settings,
            self.db,
            settings.moderation_bot_id,
            creds["moderation"],
            "forum moderation bot",
        )
        membership = make_gateway(
            settings,
            self.db,
            settings.membership_bot_id,
            creds["membership"],
            "forum membership bot",
        )
        self._gateways = [moderation, membership]
        for gw in self._gateways:
            await gw.login()
        await exempt_from_rate_limits(moderation, [g.user_id for g in self._gateways])
        self.plan, result = await provision(
            settings,
            moderation,
            self.db.sessionmaker,
            joiners={membership.user_id: membership},
        )
        assert result is not None  # not a dry run
        self.result = result
        for change, error in result.failed:
            log.error("provisioning could not %s: %s", change.describe(), error)
        for problem in self.plan.problems:
            log.warning("provisioning: %s", problem)
        log.info("provisioned: %d change(s) applied", len(result.applied))
        i18n = I18n(settings.forum.languages)
        ctx = ServiceContext(
            settings=settings,
            config_dir=self.config_dir,
            home=self.home,
            db=self.db,
            membership=membership,
            moderation=moderation,
            i18n=i18n,
            tasks=self.tasks,
            room_ids=dict(result.room_ids),
        )
        self.ctx = ctx
        for component in self.components:
            await component(ctx)
        ctx.outbox = OutboxWorker(self.db.sessionmaker, ctx.outbox_executors)
        self.tasks.start("outbox", ctx.outbox.run(), critical=True)
        for gw in self._gateways:
            await gw.load_token()
            self._sync_tasks.append(self.tasks.start(f"sync:{gw.user_id}", gw.run(), critical=True))
        self.tasks.start("housekeeping", self._housekeeping())
        app = create_app(
            settings,
            database_ping=self.db.ping,
            homeserver_ping=moderation.ping,
            i18n=i18n,
            extensions=ctx.web_extensions,
        )
        self.runner, self.bound_port = await run_web(app, settings.web.host, self.web_port)
        return ctx

    async def _housekeeping(self) -> None:
        """Forget processed event ids older than the replay window, once an hour."""
        assert self.db is not None
        while True:
            async with self.db.sessionmaker() as s, s.begin():
                pruned = await ProcessedEvents(s).prune(utcnow() - PROCESSED_EVENTS_KEPT)
            if pruned:
                log.info("forgot %d processed event ids", pruned)
            await asyncio.sleep(3600)

    async def stop(self) -> None:
        for gw in self._gateways:
            gw.stop()
        if self._sync_tasks:  # let a batch being handled finish and store its token
            await asyncio.wait(self._sync_tasks, timeout=15)
        await self.tasks.stop()
        if self.ctx:
            for hook in reversed(self.ctx.on_stop):
                try:
                    await hook()
                except Exception:
                    log.exception("stop hook failed")
        if self.runner:
            await self.runner.cleanup()
            self.runner = None
        for gw in self._gateways:
            with contextlib.suppress(Exception):
                await gw.close()
        if self.db:
            await self.db.close()
            self.db = None

    async def wait_failed(self) -> None:
        await self.tasks.failed.wait()
