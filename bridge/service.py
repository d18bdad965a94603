"""Wiring the digest into the service: ``setup(ctx)`` registers the collector, the signal
receivers, the web extension, the scheduler, the re-export task and the watch on the
store's change counter (changes committed by other processes: ``forum digest build``)."""

from __future__ import annotations

import asyncio
import html
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge.collector import ASK_KIND, DigestCollector
from bridge.digest import WeekDigest
from bridge.export import ExportRefused
from bridge.personal import PersonalDigest
from bridge.preview import ReviewDesk
from bridge.repositories import DigestStore
from bridge.site import DigestSite, export_site, summary_line, web_extension
from bridge.weeks import previous_week
from forum.events import Membership, Message, Reaction, Redaction, parse_room_event
from forum.gateway import Gateway
from forum.public_names import RELABEL_KIND
from forum.settings import Settings
from forum.signals import ERASE_PERSON_KIND, PERMISSION_WITHDRAWN

if TYPE_CHECKING:
    from forum.context import ServiceContext

log = logging.getLogger(__name__)

EXPORT_DEBOUNCE_SECONDS = 1.0
#: a failed export is tried again after 1 s, doubling up to this (with jitter)
EXPORT_RETRY_CAP_SECONDS = 30.0
#: how often the service looks for digest changes made by another process
WATCH_SECONDS = 1.0
#: the watch is stale (``/healthz``) after this long without a look
WATCH_STALE = 120.0
#: where versions before issue #11 kept the last ``forum digest export`` directory
EXPORT_STATE_KEY = "export_dir"
#: the store's key of the time of the last scheduled build (ISO 8601, UTC)
SCHEDULE_STATE_KEY = "schedule_last_run"
#: the schedule looks at the clock at least this often (a clock set forward is noticed)
SCHEDULE_TICK_SECONDS = 30.0
#: a scheduled build that runs this long after its time is announced as late
SCHEDULE_LATE_AFTER = timedelta(minutes=10)
#: the schedule is stale after this long without a look
SCHEDULE_STALE = 600.0


class DigestService:
    """The digest at work: the collector, the public site, its exports and the weekly
    publication, announced in the announcements room by the moderation bot."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        rooms: Mapping[str, str],
        moderation_gateway: Gateway,
        membership_gateway: Gateway,
        notify_outbox: Callable[[], None],
        public_url: str | None,
        home: Path | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.home = home
        self.sessionmaker = sessionmaker
        self.rooms = rooms
        self.moderation_gateway = moderation_gateway
        self.site = DigestSite(settings, sessionmaker, rooms, public_url=public_url)
        self.collector = DigestCollector(
            settings,
            sessionmaker,
            moderation_gateway,
            membership_gateway,
            rooms,
            self.site.i18n,
            self.changed,
            notify_outbox,
        )
        self.clock = clock
        self.review = ReviewDesk(
            settings,
            sessionmaker,
            rooms,
            moderation_gateway,
            self.site.i18n,
            clock,
            self.release,
            self.upcoming,
        )
        self._dirty = asyncio.Event()
        self._seen_version: tuple[int, int] | None = None
        self.exports = 0
        #: directories :meth:`export_to` exported to in this process (with ``force``)
        self._targets: dict[Path, bool] = {}
        self._refusals: dict[Path, str] = {}

    def changed(self) -> None:
        self.site.changed()
        self._dirty.set()

    async def export_dirs(self) -> list[Path]:
        """The directories kept up to date after every change: the operator's
        ``digest.export_dir``, and those :meth:`export_to` wrote in this process. A
        one-off ``forum digest export DIR`` is not one of them."""
        dirs: list[Path] = []
        if self.settings.digest.export_dir:
            dirs.append(await asyncio.to_thread(Path(self.settings.digest.export_dir).resolve))
        dirs += [d for d in self._targets if d not in dirs]
        return dirs

    async def export_all(self) -> None:
        """Refresh every export. A directory the export may not write into (files of
        someone else appeared there) is skipped with an error in the log, once per
        reason, and tried again at the next change; the others are written."""
        for directory in await self.export_dirs():
            try:
                await export_site(
                    self.site, directory, home=self.home, force=self._targets.get(directory, False)
                )
            except ExportRefused as exc:
                if self._refusals.get(directory) != str(exc):
                    log.error("digest: export to %s refused: %s", directory, exc)
                self._refusals[directory] = str(exc)
            else:
                self._refusals.pop(directory, None)
        self.exports += 1

    async def export_to(self, directory: Path, *, force: bool = False) -> int:
        """Export the site to ``directory`` and keep it up to date after every change
        while this service runs (raises :class:`ExportRefused` where it may not write)."""
        directory = await asyncio.to_thread(directory.resolve)
        n = await export_site(self.site, directory, home=self.home, force=force)
        self._targets[directory] = force
        return n

    async def forget_cli_export(self) -> None:
        """Versions before issue #11 re-exported after every change to the last directory
        of ``forum digest export``, kept in the store; say so once and forget it."""
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            last = await store.get_state(EXPORT_STATE_KEY)
            if last:
                log.warning(
                    "digest: %s is no longer re-exported after every change (it was the last "
                    "`forum digest export` directory); set digest.export_dir to keep a "
                    "directory up to date",
                    last,
                )
                await store.set_state(EXPORT_STATE_KEY, "")

    async def export_step(self) -> None:
        """Re-export after a change (erasure, edit, curation), debounced. The flag is
        cleared as an export starts, so a change that arrives during it sets it again and
        is exported next; a failed export sets it again before its error goes up to the
        supervisor, which tries again after a backoff."""
        await self._dirty.wait()
        await asyncio.sleep(EXPORT_DEBOUNCE_SECONDS)
        self._dirty.clear()
        try:
            await self.export_all()
        except BaseException:
            self._dirty.set()
            raise

    async def watch_step(self) -> float:
        """Notice what other processes commit (``forum digest build``, another instance):
        every writer bumps the store's change counter; when it moves, the site's cache is
        dropped and the exports are refreshed. A new consent record (a withdrawal whose
        erasure has not run yet) refreshes them too: outputs filter by current consent."""
        async with self.sessionmaker() as s:
            store = DigestStore(s)
            version = (await store.version(), await store.consent_version())
        if self._seen_version is not None and version != self._seen_version:
            self.changed()
        self._seen_version = version
        return WATCH_SECONDS

    async def publish(self, week: str) -> WeekDigest:
        async with self.sessionmaker() as s, s.begin():
            await DigestStore(s).publish(week)
        self.changed()
        return await self.site.week(week)

    async def scheduled_build(self, moment: datetime, *, late: bool = False) -> WeekDigest:
        week = previous_week(moment, self.settings.digest.timezone)
        digest = await self.publish(week)
        await self.export_all()
        await self.announce(digest, late=late)
        return digest

    async def release(self, week: str) -> None:
        """A moderator released the week (``!publier``): published and announced now."""
        digest = await self.publish(week)
        await self.export_all()
        await self.announce(digest)

    def upcoming(self) -> tuple[str, datetime]:
        """The next scheduled publication after now: (the week it publishes, when)."""
        digest = self.settings.digest
        now = self.clock().astimezone(ZoneInfo(digest.timezone))
        due: datetime = croniter(digest.schedule, now).get_next(datetime)
        return previous_week(due, digest.timezone), due

    def week_url(self, lang: str, week: str) -> str:
        return week_url(self.settings, self.site, lang, week)

    async def announce(self, digest: WeekDigest, *, late: bool = False) -> str:
        room = self.rooms["announcements"]
        plain, rich = announcement(self.settings, self.site, digest, late=late)
        return await self.moderation_gateway.send_text(room, plain, rich)

    async def schedule_step(self, now: Callable[[], datetime]) -> float:
        """One look at the schedule (cron and time zone of ``[digest]``); returns the
        seconds until the next look.

        The time of the last scheduled build is stored: a build whose time came while
        the service was down runs once at start (the latest one only, announced as
        late), and a clock set back never builds a week twice. The clock is looked at
        again at least every :data:`SCHEDULE_TICK_SECONDS`, so a clock set forward
        is noticed."""
        digest = self.settings.digest
        tz = ZoneInfo(digest.timezone)
        current = now()
        async with self.sessionmaker() as s:
            stored = await DigestStore(s).get_state(SCHEDULE_STATE_KEY)
        if stored is None:  # the first start: the schedule begins now (a build due in the
            # last minutes, while the service was starting, is made)
            last = current - SCHEDULE_LATE_AFTER
            await self._schedule_done(last)
        else:
            last = datetime.fromisoformat(stored)
        due: datetime = croniter(digest.schedule, last.astimezone(tz)).get_next(datetime)
        window = timedelta(hours=digest.preview_hours)
        if due > current:
            if current >= due - window:  # the preview's time came
                await self.review.ensure(previous_week(due, digest.timezone), due)
                until = due
            else:
                until = due - window
            return max(0.0, min(SCHEDULE_TICK_SECONDS, (until - current).total_seconds()))
        # the latest time that came (several missed weeks: only the last one is built)
        latest: datetime = croniter(
            digest.schedule, (current + timedelta(seconds=1)).astimezone(tz)
        ).get_prev(datetime)
        week = previous_week(latest, digest.timezone)
        # no publication unseen: the preview is posted first if it was not (the service
        # was down), and the moderators have their window
        review = await self.review.ensure(week, latest)
        if review.released_at is None:
            if digest.require_release or review.held_by:
                # it waits for a moderator's !publier; the schedule goes on to next week
                await self.review.remind(review)
                await self._schedule_done(latest)
                return 0.0
            ready = review.posted_at + window
            if current < ready:
                return max(0.0, min(SCHEDULE_TICK_SECONDS, (ready - current).total_seconds()))
            late = current - latest > SCHEDULE_LATE_AFTER
            if late:
                log.warning("digest: the build due at %s was missed; building it now", latest)
            await self.scheduled_build(latest, late=late)
        await self._schedule_done(latest)
        return 0.0

    async def _schedule_done(self, moment: datetime) -> None:
        async with self.sessionmaker() as s, s.begin():
            await DigestStore(s).set_state(SCHEDULE_STATE_KEY, moment.astimezone(UTC).isoformat())


async def backfill(
    collector: DigestCollector,
    gateway: Gateway,
    rooms: list[str],
    since: datetime,
    *,
    progress: bool = False,
) -> int:
    """Read each room's history back to ``since`` and feed it to the collector (without
    curation: old marks do not send questions)."""
    since_ms = int(since.timestamp() * 1000)
    handled = 0
    for i, room in enumerate(rooms, 1):
        events: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await gateway.messages(room, from_token=token, direction="b", limit=100)
            chunk = [e for e in page.get("chunk") or [] if isinstance(e, dict)]
            older = [e for e in chunk if int(e.get("origin_server_ts") or 0) >= since_ms]
            events.extend(older)
            token = page.get("end")
            if progress:
                sys.stderr.write(
                    f"\rbackfill: room {i}/{len(rooms)} {_bar(i - 1, len(rooms))} "
                    f"{len(events)} events"
                )
                sys.stderr.flush()
            if not token or len(older) < len(chunk) or not chunk:
                break
        for raw in reversed(events):
            ev = parse_room_event(room, raw)
            if ev is None or ev.sender in collector.settings.ignored_user_ids:
                continue
            if isinstance(ev, Message):
                await collector.on_message(ev)
            elif isinstance(ev, Reaction):
                await collector.count_reaction(ev)
            elif isinstance(ev, Redaction):
                await collector.on_redaction(ev)
            elif isinstance(ev, Membership):
                await collector.on_membership(ev)
            handled += 1
    if progress:
        sys.stderr.write(f"\rbackfill: {_bar(len(rooms), len(rooms))} {handled} events\n")
    return handled


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + "]"


async def setup(ctx: ServiceContext) -> DigestService:
    """The digest component (``bridge.setup``)."""
    service = DigestService(
        settings=ctx.settings,
        sessionmaker=ctx.db.sessionmaker,
        rooms=ctx.rooms,
        moderation_gateway=ctx.moderation_gateway,
        membership_gateway=ctx.membership_gateway,
        notify_outbox=ctx.outbox.notify,
        public_url=ctx.settings.web.public_url,
        home=ctx.home,
        clock=ctx.clock,
    )
    await service.forget_cli_export()
    service.collector.register()
    ctx.moderation_gateway.on(Message, service.review.on_message)
    ctx.moderation_gateway.on(Reaction, service.review.on_reaction)
    ctx.moderation_gateway.on(Redaction, service.review.on_redaction)
    ctx.register.dm_claim(service.collector.claims_dm)
    ctx.register.pending_questions(service.collector.pending_questions)
    service.collector.questions_pending = ctx.register.pending_questions_of
    ctx.register.outbox_executor(ASK_KIND, service.collector.ask_from_outbox)
    # a withdrawal or a leaving: written to the outbox in its own transaction, retried
    ctx.register.outbox_executor(ERASE_PERSON_KIND, service.collector.erase_from_outbox)
    # a new public name: the person's quotes take it (written with the change, retried)
    ctx.register.outbox_executor(RELABEL_KIND, service.collector.relabel_from_outbox)
    personal = PersonalDigest(
        ctx.settings, ctx.db.sessionmaker, service.site, service.week_url, service.changed
    )
    ctx.signals.connect(PERMISSION_WITHDRAWN, personal.withdraw)
    ctx.register.personal_data(personal)
    ctx.register.web_routes(web_extension(service.site))
    ctx.tasks.every("digest:export", service.export_step, retry_cap=EXPORT_RETRY_CAP_SECONDS)
    ctx.tasks.every("digest:watch", service.watch_step, critical=True, stale_after=WATCH_STALE)
    if ctx.schedules:  # time-driven: on the service's clock
        clock = ctx.clock
        ctx.tasks.every(
            "digest:schedule",
            partial(service.schedule_step, clock),
            critical=True,
            stale_after=SCHEDULE_STALE,
        )
    if ctx.settings.digest.history_start:
        ctx.tasks.start("digest:backfill", _first_backfill(ctx, service))
    return service


async def _first_backfill(ctx: ServiceContext, service: DigestService) -> None:
    async with ctx.db.sessionmaker() as s:
        done = await DigestStore(s).get_state("backfilled")
    if done:
        return
    start = ctx.settings.digest.history_start
    assert start is not None
    since = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(ctx.settings.digest.timezone))
    rooms = list(service.collector.rooms)
    n = await backfill(service.collector, ctx.moderation_gateway, rooms, since)
    async with ctx.db.sessionmaker() as s, s.begin():
        await DigestStore(s).set_state("backfilled", datetime.now(UTC).isoformat())
    log.info("digest: backfilled %d event(s)", n)
    service.changed()


def week_url(settings: Settings, site: DigestSite, lang: str, week: str) -> str:
    """The public address of one week's page."""
    base = site.public_url or settings.web.public_url
    if not base:
        base = f"http://{settings.web.host}:{settings.web.port}"
    return f"{base.rstrip('/')}/{lang}/week/{week}/"


def announcement(
    settings: Settings, site: DigestSite, digest: WeekDigest, *, late: bool = False
) -> tuple[str, str]:
    """The post for the announcements room (plain, HTML): the week's summary in every
    forum language, with the link to its page; ``late``: it says the digest comes late
    (its scheduled time passed while the service was down)."""
    plain: list[str] = []
    rich: list[str] = []
    for lang in settings.forum.languages:
        t = site.gettext(lang)
        title = t("Digest of week {week}").format(week=digest.week)
        if late:
            title = t("{title} (late)").format(title=title)
        line = summary_line(digest, t)
        url = week_url(settings, site, lang, digest.week)
        plain.append(f"{title}: {line} {url}")
        rich.append(
            f'<p><a href="{html.escape(url)}">{html.escape(title)}</a>: {html.escape(line)}</p>'
        )
    return "\n".join(plain), "".join(rich)
