"""The composition root: the one place that builds everything and wires it together.

:class:`Service` opens the database (migrating it), logs the bots in, provisions the
forum, builds the :class:`~forum.context.ServiceContext` and lets each
:class:`~forum.context.Feature` set itself up on it, then runs the bots' sync loops, the
outbox worker and the web app until stopped. The features of ``forum run`` are
:func:`default_features`: the membership bot, the moderation bot and the digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

import bridge
import moderation.bot
from forum.bots import ROLES, BotRole, bot_credentials, bot_gateway, exempt_from_rate_limits
from forum.context import Clock, Feature, Registrations, Rooms, ServiceContext
from forum.credentials import secure_home
from forum.gateway import Gateway
from forum.i18n import I18n
from forum.metrics import Metrics
from forum.provisioning import ApplyResult, Plan, provision
from forum.settings import Settings, database_url
from forum.signals import Signals
from forum.storage import Database, OutboxWorker, ProcessedEvents, utcnow
from forum.tasks import TaskSupervisor
from forum.web import create_app, run_web
from moderation import membership

log = logging.getLogger(__name__)

#: Event ids handled are remembered this long (a replay from an older token is not
#: expected: tokens are stored after every batch).
PROCESSED_EVENTS_KEPT = timedelta(days=30)
HOUSEKEEPING_SECONDS = 3600.0
#: ``/healthz`` answers 503 when a bot's sync loop handled no batch for this long (a
#: long poll lasts 30 s at most)
SYNC_STALE = 180.0
#: ... or when the outbox worker made no round for this long (it wakes every few seconds)
OUTBOX_STALE = 180.0


def default_features() -> list[Feature]:
    """The features wired into ``forum run``, in start order."""
    return [membership.feature(), moderation.bot.FEATURE, bridge.FEATURE]


class Service:
    """The whole service in one asyncio process."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_dir: Path,
        home: Path,
        features: Sequence[Feature] | None = None,
        web_port: int | None = None,
        clock: Clock = utcnow,
        schedules: bool = True,
    ) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.home = home
        self.feature_list = list(default_features() if features is None else features)
        self.web_port = settings.web.port if web_port is None else web_port
        self.clock = clock
        self.schedules = schedules
        self.tasks = TaskSupervisor()
        self.metrics = Metrics(self.tasks)
        self.db: Database | None = None
        self.ctx: ServiceContext | None = None
        self.features: dict[str, Any] = {}
        """What each feature's setup returned, by feature name."""
        self.runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        self.plan: Plan | None = None
        self.result: ApplyResult | None = None
        self.gateways: dict[BotRole, Gateway] = {}
        self._sync_tasks: list[asyncio.Task[None]] = []

    @property
    def web_url(self) -> str:
        if self.settings.web.public_url:
            return self.settings.web.public_url.rstrip("/") + "/"
        return f"http://{self.settings.web.host}:{self.bound_port or self.web_port}/"

    def feature(self, name: str) -> Any:
        """The object a feature's setup returned (the moderation bot, the digest ...)."""
        return self.features[name]

    async def start(self) -> ServiceContext:
        settings = self.settings
        url = database_url(settings, self.home)
        await asyncio.to_thread(secure_home, self.home, url)
        self.db = db = await Database.open(url)
        await asyncio.to_thread(secure_home, self.home, url)  # -wal, -shm just made
        creds = bot_credentials(settings, self.home)
        self.gateways = {
            role: bot_gateway(settings, db, role, creds[role], home=self.home) for role in ROLES
        }
        for role, gateway in self.gateways.items():
            self.metrics.watch_bot(role, gateway.stats)
            gateway.observe_requests(partial(self.metrics.observe_action, role))
            await gateway.login()
        moderation_gateway = self.gateways["moderation"]
        membership_gateway = self.gateways["membership"]
        await exempt_from_rate_limits(
            moderation_gateway, [g.user_id for g in self.gateways.values()]
        )
        self.plan, result = await provision(
            settings,
            moderation_gateway,
            db.sessionmaker,
            joiners={membership_gateway.user_id: membership_gateway},
        )
        assert result is not None  # not a dry run
        self.result = result
        for change, error in result.failed:
            log.error("provisioning could not %s: %s", change.describe(), error)
        for problem in self.plan.problems:
            log.warning("provisioning: %s", problem)
        log.info("provisioned: %d change(s) applied", len(result.applied))
        registrations = Registrations()
        outbox = OutboxWorker(db.sessionmaker, registrations.outbox_executors, clock=self.clock)
        i18n = I18n(settings.forum.languages)
        ctx = ServiceContext(
            settings=settings,
            config_dir=self.config_dir,
            home=self.home,
            db=db,
            membership_gateway=membership_gateway,
            moderation_gateway=moderation_gateway,
            i18n=i18n,
            tasks=self.tasks,
            rooms=Rooms(result.room_ids),
            signals=Signals(),
            outbox=outbox,
            register=registrations,
            clock=self.clock,
            schedules=self.schedules,
            metrics=self.metrics,
        )
        self.ctx = ctx
        for feature in self.feature_list:
            self.features[feature.name] = await feature.setup(ctx)
        registrations.close()
        self.tasks.every("outbox", outbox.step, critical=True, stale_after=OUTBOX_STALE)
        for role, gateway in self.gateways.items():
            await gateway.load_token()
            health = self.tasks.track(f"sync:{role}", critical=True, stale_after=SYNC_STALE)
            gateway.on_synced(health.ok)
            self._sync_tasks.append(
                self.tasks.start(f"sync:{gateway.user_id}", gateway.run(), critical=True)
            )
        self.tasks.every("housekeeping", self._housekeeping)
        app = create_app(
            settings,
            database_ping=db.ping,
            homeserver_ping=moderation_gateway.ping,
            i18n=i18n,
            extensions=registrations.all_web_routes,
            tasks=self.tasks,
            metrics=self.metrics,
            refresh_metrics=partial(self.metrics.refresh, db.sessionmaker),
        )
        self.runner, self.bound_port = await run_web(app, settings.web.host, self.web_port)
        return ctx

    async def _housekeeping(self) -> float:
        """Forget processed event ids older than the replay window; again in an hour."""
        assert self.db is not None
        async with self.db.sessionmaker() as s, s.begin():
            pruned = await ProcessedEvents(s).prune(utcnow() - PROCESSED_EVENTS_KEPT)
        if pruned:
            log.info("forgot %d processed event ids", pruned)
        return HOUSEKEEPING_SECONDS

    async def stop(self) -> None:
        for gateway in self.gateways.values():
            gateway.stop()
        if self._sync_tasks:  # let a batch being handled finish and store its token
            await asyncio.wait(self._sync_tasks, timeout=15)
        await self.tasks.stop()
        if self.ctx:
            for hook in reversed(self.ctx.register.stop_hooks):
                try:
                    await hook()
                except Exception:
                    log.exception("stop hook failed")
        if self.runner:
            await self.runner.cleanup()
            self.runner = None
        for gateway in self.gateways.values():
            with contextlib.suppress(Exception):
                await gateway.close()
        if self.db:
            await self.db.close()
            self.db = None

    async def wait_failed(self) -> None:
        await self.tasks.failed.wait()
