"""The composition root: the one place that builds everything and wires it together.

:class:`Service` opens the database (migrating it in a child process), logs the bots in,
provisions the forum, builds the :class:`~forum.context.ServiceContext` and lets each
:class:`~forum.context.Feature` set itself up on it, then runs the bots' sync loops, the
outbox worker and the web app until stopped. The features of ``forum run`` are
:func:`default_features`: the membership bot, the moderation bot and the digest.

Only the process holding the service lease (:mod:`forum.storage.lease`) acts: a second
``forum run`` on the same database stands by (:meth:`Service.stand_by`: the web app, no
sync, nothing sent) and starts when the lease ends; an active process that loses its
lease steps down at once. On an external homeserver a standby prepares its start while
it waits (:meth:`Service._prepare`): its bots log in on devices of their own (their
encryption keys published, the room keys members share with them received), their rate
limits are lifted and the forum's rooms are read again every
``service.standby_observe_seconds``; taking the lease then starts, when the rooms were as
configured, without reading them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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
from forum.errors import MatrixError, Unauthorized
from forum.gateway import Gateway
from forum.i18n import I18n
from forum.memory import limit_malloc_arenas, release_free_memory, resident_mb
from forum.metrics import Metrics
from forum.provisioning import ApplyResult, Observed, Plan, apply, provision, survey
from forum.settings import Settings, database_url
from forum.signals import Signals
from forum.storage import (
    Database,
    Lease,
    LeaseLost,
    OutboxWorker,
    ProcessedEvents,
    default_holder,
    utcnow,
)
from forum.tasks import TaskSupervisor
from forum.web import create_app, run_web
from moderation import membership

log = logging.getLogger(__name__)

#: Event ids handled are remembered this long (a replay from an older token is not
#: expected: tokens are stored after every batch).
PROCESSED_EVENTS_KEPT = timedelta(days=30)
HOUSEKEEPING_SECONDS = 3600.0
#: a standby receives the room keys shared with its bots' devices this often
DRAIN_SECONDS = 30.0
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
        migrate_apart: bool = True,
    ) -> None:
        """``migrate_apart``: a database behind this version is migrated by a child process,
        so that this one never loads Alembic (see :meth:`Database.open`); the test harness,
        which starts hundreds of forums on fresh databases, migrates in its own process."""
        self.settings = settings
        self.config_dir = config_dir
        self.home = home
        self.feature_list = list(default_features() if features is None else features)
        self.web_port = settings.web.port if web_port is None else web_port
        self.clock = clock
        self.schedules = schedules
        self.migrate_apart = migrate_apart
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
        self.lease: Lease | None = None
        """This process's candidacy for the service lease (set by :meth:`open`)."""
        self._keeping: asyncio.Task[Any] | None = None
        self._preparing: asyncio.Task[None] | None = None
        self._logged_in = False
        """The bots are logged in and their rate limits lifted (by a standby's
        :meth:`_prepare`)."""
        self._observation: tuple[Plan, Observed, float] | None = None
        """A standby's last reading of the rooms: the plan, what it saw, when
        (``time.monotonic()``)."""

    @property
    def web_url(self) -> str:
        if self.settings.web.public_url:
            return self.settings.web.public_url.rstrip("/") + "/"
        return f"http://{self.settings.web.host}:{self.bound_port or self.web_port}/"

    def feature(self, name: str) -> Any:
        """The object a feature's setup returned (the moderation bot, the digest ...)."""
        return self.features[name]

    @property
    def role(self) -> str:
        """``active``, ``standby`` or ``stepped-down`` (``starting`` before the database is
        open)."""
        return self.lease.role if self.lease else "starting"

    async def open(self) -> Database:
        """Open (and migrate) the database and make this process a candidate for the
        service lease; build the bots' gateways (no network yet)."""
        if self.db is not None:
            return self.db
        limit_malloc_arenas()  # before the database's threads start (forum.memory)
        settings = self.settings
        url = database_url(settings, self.home)
        await asyncio.to_thread(secure_home, self.home, url)
        self.db = db = await Database.open(url, migrate_apart=self.migrate_apart)
        await asyncio.to_thread(secure_home, self.home, url)  # -wal, -shm just made
        options = settings.service
        self.lease = Lease(
            db.engine,
            default_holder(options.instance),
            seconds=options.lease_seconds,
            poll=options.standby_poll_seconds,
        )
        self.lease.on_lost(self._step_down)
        self.metrics.watch_lease(self.lease)
        creds = bot_credentials(settings, self.home)
        self.gateways = {
            role: bot_gateway(settings, db, role, creds[role], home=self.home) for role in ROLES
        }
        for role, gateway in self.gateways.items():
            self.metrics.watch_bot(role, gateway.stats)
            gateway.observe_requests(partial(self.metrics.observe_action, role))
        return db

    async def stand_by(self) -> None:
        """Serve the web app as a standby (its pages, ``/healthz`` with ``"role":
        "standby"``, ``/metrics``) until this process takes the service lease; then stop
        serving (:meth:`start` serves the whole app). Nothing is synced or sent meanwhile."""
        db = await self.open()
        assert self.lease is not None
        if await self.try_lead():
            return
        app = create_app(
            self.settings,
            database_ping=db.ping,
            homeserver_ping=self.gateways["moderation"].ping,
            i18n=I18n(self.settings.forum.languages),
            tasks=self.tasks,
            metrics=self.metrics,
            refresh_metrics=partial(self.metrics.refresh, db.sessionmaker),
            lease=self.lease.describe,
        )
        self.runner, self.bound_port = await run_web(app, self.settings.web.host, self.web_port)
        log.info(
            "standing by (web app at %s): %s holds the service lease",
            self.web_url,
            self.lease.current.holder if self.lease.current else None,
        )
        if self.settings.homeserver.mode != "embedded":  # the embedded one is the other's
            self._preparing = asyncio.ensure_future(self._prepare())
        try:
            await self.lease.acquire()
            self._lead()
        finally:
            if self.runner is not None:  # not already stopped (see :meth:`stop`)
                await self.runner.cleanup()
                self.runner = None

    async def _prepare(self) -> None:
        """A standby's preparation, until it takes over: the bots logged in on devices of
        their own (keys published), their rate limits lifted; then every
        :data:`DRAIN_SECONDS` the room keys members' clients shared with those devices
        received (see :meth:`Gateway.drain_to_device`), and the rooms read and planned
        again every ``service.standby_observe_seconds``. A failure (the homeserver down)
        is tried again at the next round; what is not ready when the lease is taken is
        done then."""
        assert self.db is not None
        every = self.settings.service.standby_observe_seconds
        moderation_gateway = self.gateways["moderation"]
        while True:
            try:
                if not self._logged_in:
                    await self._log_in()
                for gateway in self.gateways.values():
                    await gateway.drain_to_device()
                last = self._observation
                if last is None or time.monotonic() - last[2] >= every:
                    found, observed = await survey(
                        self.settings, moderation_gateway, self.db.sessionmaker
                    )
                    self._observation = (found, observed, time.monotonic())
                    log.info(
                        "standing by, ready to take over: bots logged in, %d room(s) read, "
                        "%d change(s) to make",
                        len(observed.rooms),
                        len(found.changes),
                    )
            except Unauthorized as exc:  # a device logged out meanwhile: log in again
                log.warning("standing by: a bot's session ended (%s); logging in again", exc)
                self._logged_in = False
            except Exception as exc:  # the homeserver down, say: again later, or at takeover
                log.warning("standing by: preparing the takeover failed (%s); again later", exc)
            await asyncio.sleep(DRAIN_SECONDS)

    async def _log_in(self) -> None:
        """Log the bots in (see :meth:`Gateway.login`) and lift their rate limits."""
        for gateway in self.gateways.values():
            await gateway.login()
        await exempt_from_rate_limits(
            self.gateways["moderation"], [g.user_id for g in self.gateways.values()]
        )
        self._logged_in = True

    async def _stop_preparing(self) -> None:
        if self._preparing is not None:
            self._preparing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._preparing
            self._preparing = None

    async def try_lead(self) -> bool:
        """Take the service lease if it is free (and keep renewing it)."""
        await self.open()
        assert self.lease is not None
        if await self.lease.try_acquire():
            self._lead()
            return True
        return False

    def _lead(self) -> None:
        """The lease is taken: renew it from now on and fence every write with it."""
        assert self.db is not None
        assert self.lease is not None
        if self._keeping is None:
            self.db.guard.arm(self.lease)
            self._keeping = self.tasks.start("lease", self.lease.keep(), critical=True)

    def _step_down(self) -> None:
        """The lease is lost: stop acting at once (no sync, no outbox, no feature's
        work); :meth:`wait_failed` returns and the process stops."""
        for gateway in self.gateways.values():
            gateway.stop()
        self.tasks.cancel_all()

    async def start(self) -> ServiceContext:
        """Take the service lease (waiting for it, as a standby, when another process
        holds it), then log the bots in, provision, set the features up and run."""
        settings = self.settings
        db = await self.open()
        assert self.lease is not None
        if self.lease.lost.is_set():  # a process that stepped down does not start again
            raise LeaseLost(self.lease.lost_reason or "the service lease was lost")
        if not self.lease.held:
            await self.lease.acquire()
        self._lead()
        began = time.monotonic()
        await self._stop_preparing()
        observation, self._observation = self._observation, None
        draining: asyncio.Future[list[int]] | None = None
        if self._logged_in:  # prepared while standing by: the last room keys, meanwhile
            draining = asyncio.gather(*(g.drain_to_device() for g in self.gateways.values()))
            # a start that fails meanwhile leaves it: its error is the start's to report
            draining.add_done_callback(lambda f: f.cancelled() or f.exception())
        else:
            await self._log_in()
            log.info(
                "bots logged in, rate limits lifted (%.1f s since the lease)",
                time.monotonic() - began,
            )
        moderation_gateway = self.gateways["moderation"]
        membership_gateway = self.gateways["membership"]
        joiners = {membership_gateway.user_id: membership_gateway}
        if observation is not None and observation[0].empty:
            # the rooms were as configured when last read: no need to read them again
            self.plan, observed, at = observation
            log.info(
                "taking over with the rooms read %.0f s ago while standing by",
                time.monotonic() - at,
            )
            result = await apply(
                settings, self.plan, moderation_gateway, db.sessionmaker, observed, joiners=joiners
            )
        else:
            self.plan, provisioned = await provision(
                settings, moderation_gateway, db.sessionmaker, joiners=joiners
            )
            assert provisioned is not None  # not a dry run
            result = provisioned
        self.result = result
        for change, error in result.failed:
            log.error("provisioning could not %s: %s", change.describe(), error)
        for problem in self.plan.problems:
            log.warning("provisioning: %s", problem)
        log.info(
            "provisioned: %d change(s) applied (%.1f s since the lease)",
            len(result.applied),
            time.monotonic() - began,
        )
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
        log.info("features set up (%.1f s since the lease)", time.monotonic() - began)
        if draining is not None:  # before the first sync from the stored token
            try:
                received = sum(await draining)
            except MatrixError as exc:  # the sync loops log in again if they must
                log.warning(
                    "the room keys waiting for the bots' devices could not be received (%s):"
                    " members' messages encrypted under them may stay unreadable",
                    exc,
                )
            else:
                log.info(
                    "bots logged in while standing by; %d to-device message(s) received "
                    "(%.1f s since the lease)",
                    received,
                    time.monotonic() - began,
                )
        if not self.lease.held:  # lost while starting: nothing may act
            raise LeaseLost(self.lease.lost_reason or "the service lease was lost")
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
            lease=self.lease.describe,
        )
        self.runner, self.bound_port = await run_web(app, settings.web.host, self.web_port)
        release_free_memory()  # what start-up allocated and freed (forum.memory)
        log.info(
            "acting: started %.1f s after taking the lease (resident memory %.0f MB)",
            time.monotonic() - began,
            resident_mb(),
        )
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
        await self._stop_preparing()
        for gateway in self.gateways.values():
            gateway.stop()
        if self._sync_tasks:  # let a batch being handled finish and store its token
            _, late = await asyncio.wait(self._sync_tasks, timeout=15)
            for task in late:  # never left running on a closed database
                log.warning("sync %s still busy after 15 s: cancelled", task.get_name())
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        await self.tasks.stop()
        if self.ctx:
            for hook in reversed(self.ctx.register.stop_hooks):
                try:
                    await hook()
                except Exception:
                    log.exception("stop hook failed")
        if self.lease:  # nothing acts any more: a standby may take over at once
            await self.lease.release()
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
        """Return when a critical part failed or the service lease was lost."""
        waiters = [asyncio.ensure_future(self.tasks.failed.wait())]
        if self.lease is not None:
            waiters.append(asyncio.ensure_future(self.lease.lost.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
