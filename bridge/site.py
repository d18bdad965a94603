"""The public digest: pages, Atom feed and JSON, served by the web app and exported as
static files. Everything is rendered from the store on demand (cached per change
generation), so an erasure reaches every output as soon as the store changes; and only
what its author's consent covers at that moment is shown (a consent record written since
the last build, by any process, makes the cache stale), so a late erasure never shows
what consent no longer covers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from babel.support import NullTranslations
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge.digest import ANNOUNCEMENTS, TopicDigest, WeekDigest, build_week
from bridge.export import check_target, write_export
from bridge.models import DigestWeek
from bridge.repositories import DigestStore
from bridge.weeks import WEEK_RE, week_monday
from forum.i18n import I18n
from forum.settings import Settings
from forum.web.app import (
    I18N_KEY,
    RENDERER_KEY,
    SETTINGS_KEY,
    STATIC_DIR,
    Renderer,
    join_context,
    matrix_to,
    page_language,
    render_page,
    site_url,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
LOCALE_DIR = HERE / "locale"
JSON_CACHE_CONTROL = "public, max-age=300"
MAX_HIGHLIGHTS = 12
#: weeks listed on the home page; the archive has the others, a page at a time
HOME_WEEKS = 5
ARCHIVE_PAGE_SIZE = 20
#: weeks shown on a topic's page and entries in the feed (the newest)
TOPIC_WEEKS = 8
FEED_ENTRIES = 20
#: the files of the static directory the export copies
EXPORTED_STATIC = ("style.css", "favicon.svg", "share.png")


class Texts:
    """The digest's texts in one language: ``t("...")`` and ``t.n(one, many, n)``."""

    def __init__(self, translations: NullTranslations) -> None:
        self._gettext = translations.gettext
        self._ngettext = translations.ngettext

    def __call__(self, message: str) -> str:
        return self._gettext(message)

    def n(self, singular: str, plural: str, n: int) -> str:
        return self._ngettext(singular, plural, n).format(n=n)


@dataclass(frozen=True)
class LocalWeek:
    """A :class:`WeekDigest` with its dates in the forum's time zone, for templates."""

    digest: WeekDigest
    tz: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self.digest, name)

    @property
    def start_local(self) -> dt.date:
        return self.digest.start.astimezone(ZoneInfo(self.tz)).date()

    @property
    def end_local(self) -> dt.date:
        end = self.digest.end.astimezone(ZoneInfo(self.tz)) - dt.timedelta(seconds=1)
        return end.date()


class DigestSite:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        room_ids: Mapping[str, str],
        *,
        public_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.room_ids = room_ids
        self.public_url = public_url
        self.i18n = I18n(settings.forum.languages, locale_dir=LOCALE_DIR)
        self.generation = 0
        self._cache: dict[str, tuple[int, WeekDigest]] = {}
        self._weeks: tuple[int, list[str]] | None = None
        self._lock = asyncio.Lock()
        self._consents: int | None = None
        self._export_renderer: Renderer | None = None
        self._updated: dict[str, tuple[int, dt.datetime]] = {}
        self._clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    # --- data -------------------------------------------------------------------------
    def changed(self) -> None:
        self.generation += 1

    async def follow_consents(self) -> None:
        """Every output shows a quote only while its author's consent covers it (filtered
        as it is built): a consent record written since the last build, by whichever
        process, makes the cached weeks stale, even before any erasure has run."""
        async with self.sessionmaker() as s:
            version = await DigestStore(s).consent_version()
        if version != self._consents:
            self._consents = version
            self.changed()

    async def weeks(self) -> list[str]:
        await self.follow_consents()
        if self._weeks is None or self._weeks[0] != self.generation:
            gen = self.generation
            async with self.sessionmaker() as s:
                self._weeks = (gen, await DigestStore(s).weeks())
        return self._weeks[1]

    async def week(self, week: str) -> WeekDigest:
        """One week (cached); every public output asks :meth:`weeks` first, which follows
        the consent records."""
        cached = self._cache.get(week)
        if cached and cached[0] == self.generation:
            return cached[1]
        async with self._lock:
            cached = self._cache.get(week)
            if cached and cached[0] == self.generation:
                return cached[1]
            gen = self.generation
            async with self.sessionmaker() as s:
                digest = await build_week(s, self.settings, self.room_ids, week)
            for topic in digest.topics:
                del topic.highlights[MAX_HIGHLIGHTS:]
            self._cache = {k: v for k, v in self._cache.items() if v[0] == gen}
            self._cache[week] = (gen, digest)
            return digest

    async def week_updated(self, week: str) -> dt.datetime:
        """When what the public sees of ``week`` last changed: an edit, an erasure, a
        withdrawn permission or a new name moves it. The store keeps a fingerprint of the
        week's public content and the time it was first seen (``digest_state``), so every
        process and every export agree; the first one is the week's build time."""
        cached = self._updated.get(week)
        if cached and cached[0] == self.generation:
            return cached[1]
        gen = self.generation
        digest = await self.week(week)
        content = json.dumps(digest.to_json(), sort_keys=True, ensure_ascii=False)
        fingerprint = hashlib.sha256(content.encode()).hexdigest()[:32]
        key = f"updated:{week}"
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            known = await store.get_state(key)
            mark, _, when_text = (known or "").partition(" ")
            if known and mark == fingerprint:
                when = dt.datetime.fromisoformat(when_text)
            else:
                built = await s.scalar(select(DigestWeek.built_at).where(DigestWeek.week == week))
                when = built if known is None and built is not None else self._clock()
                await store.set_state(key, f"{fingerprint} {when.isoformat()}")
        self._updated[week] = (gen, when)
        return when

    def week_name(self, lang: str, week: str, *, capital: bool = False) -> str:
        """``2026-W48`` as a reader says it: "semaine du 23 au 29 novembre 2026",
        "week of 23–29 November 2026"."""
        monday = week_monday(week)
        sunday = monday + dt.timedelta(days=6)
        if monday.year != sunday.year:
            first = "d MMMM y"
        elif monday.month != sunday.month:
            first = "d MMMM"
        else:
            first = "d"
        name = self.gettext(lang)("week of {start}–{end}").format(
            start=self.i18n.format_date(monday, lang, first),
            end=self.i18n.format_date(sunday, lang, "d MMMM y"),
        )
        return name[:1].upper() + name[1:] if capital else name

    def topics(self, lang: str) -> list[dict[str, str]]:
        out = []
        for t in self.settings.topics:
            room = self.room_ids.get(f"topic:{t.slug}")
            alias = self.settings.alias_id(t.effective_alias)
            out.append(
                {
                    "slug": t.slug,
                    "name": self.settings.text(t.name, lang),
                    "topic": self.settings.text(t.topic, lang),
                    "url": matrix_to(alias) if room else "",
                }
            )
        return out

    def export_renderer(self) -> Renderer:
        """The static export's renderer (templates compiled once, not at every export)."""
        if self._export_renderer is None:
            renderer = Renderer(I18n(self.settings.forum.languages), _static_url)
            renderer.add_loader(jinja2.FileSystemLoader(TEMPLATES))
            self._export_renderer = renderer
        return self._export_renderer

    def gettext(self, lang: str) -> Texts:
        return Texts(self.i18n.translations(lang))

    # --- page contexts ------------------------------------------------------------------
    def _names(self, lang: str) -> dict[str, Any]:
        return {
            "t": self.gettext(lang),
            "week_name": lambda week, capital=False: self.week_name(lang, week, capital=capital),
        }

    async def home_context(self, lang: str) -> dict[str, Any]:
        weeks = await self.weeks()
        latest = (
            LocalWeek(await self.week(weeks[0]), self.settings.digest.timezone) if weeks else None
        )
        return {
            "latest": latest,
            "weeks": weeks[:HOME_WEEKS],
            "more_weeks": len(weeks) > HOME_WEEKS,
            "topics": self.topics(lang),
            **join_context(self.settings, lang),
            **self._names(lang),
        }

    async def week_context(self, lang: str, week: str) -> dict[str, Any] | None:
        weeks = await self.weeks()
        if week not in weeks:
            return None
        i = weeks.index(week)
        digest = await self.week(week)
        t = self.gettext(lang)
        return {
            "digest": LocalWeek(digest, self.settings.digest.timezone),
            "newer": weeks[i - 1] if i > 0 else None,
            "older": weeks[i + 1] if i + 1 < len(weeks) else None,
            "page_description": t("{week}: {summary}").format(
                week=self.week_name(lang, week, capital=True), summary=summary_line(digest, t)
            ),
            **self._names(lang),
        }

    async def topic_context(self, lang: str, slug: str) -> dict[str, Any] | None:
        spec = self.settings.topic(slug)
        if spec is None:
            return None
        weeks = await self.weeks()
        entries: list[tuple[str, TopicDigest]] = []
        for week in weeks[:TOPIC_WEEKS]:
            digest = await self.week(week)
            topic = next((t for t in digest.topics if t.slug == slug), None)
            if topic is not None:
                entries.append((week, topic))
        t = self.gettext(lang)
        name = self.settings.text(spec.name, lang)
        description = self.settings.text(spec.topic, lang)
        return {
            "topic_name": name,
            "topic_description": description,
            "entries": entries,
            "more_weeks": len(weeks) > TOPIC_WEEKS,
            "page_description": t("{topic} in the weekly digest: {description}").format(
                topic=name, description=description
            ),
            **self._names(lang),
        }

    async def archive_context(self, lang: str, page: int) -> dict[str, Any] | None:
        """Page ``page`` (from 1) of the list of every published week, newest first."""
        weeks = await self.weeks()
        pages = max(1, -(-len(weeks) // ARCHIVE_PAGE_SIZE))
        if not 1 <= page <= pages:
            return None
        t = self.gettext(lang)
        forum = self.settings.text(self.settings.forum.name, lang)
        chunk = weeks[(page - 1) * ARCHIVE_PAGE_SIZE : page * ARCHIVE_PAGE_SIZE]
        return {
            "weeks": chunk,
            "page": page,
            "pages": pages,
            "newer_page": archive_path(lang, page - 1) if page > 1 else None,
            "older_page": archive_path(lang, page + 1) if page < pages else None,
            "page_description": t("Every weekly digest of {forum}, page {page} of {pages}.").format(
                forum=forum, page=page, pages=pages
            ),
            **self._names(lang),
        }

    async def feed_context(self, lang: str, base: str, renderer: Renderer) -> dict[str, Any]:
        t = self.gettext(lang)
        entries = []
        for week in (await self.weeks())[:FEED_ENTRIES]:
            digest = await self.week(week)
            html = renderer.render("digest_feed_entry.html", lang, digest=digest, t=t, root=base)
            entries.append(
                {
                    "week": week,
                    "title": t("Digest: {week}").format(week=self.week_name(lang, week)),
                    "updated": (await self.week_updated(week)).isoformat(),
                    "summary": summary_line(digest, t),
                    "html": html,
                }
            )
        updated = max((e["updated"] for e in entries), default="2000-01-01T00:00:00+00:00")
        urn = f"urn:forum-digest:{self.settings.server_name}:{lang}"
        return {"entries": entries, "base": base, "updated": updated, "t": t, "urn": urn}

    async def json_body(self) -> dict[str, Any]:
        return {"weeks": [(await self.week(w)).to_json() for w in await self.weeks()]}


SITE_KEY = web.AppKey("digest_site", DigestSite)


def archive_path(lang: str, page: int) -> str:
    return f"/{lang}/archive/" if page == 1 else f"/{lang}/archive/{page}/"


def summary_line(digest: WeekDigest, t: Callable[[str], str]) -> str:
    active = [x for x in digest.topics if not x.empty and x.slug != ANNOUNCEMENTS]
    return t("{messages} messages in {topics} active topics, {highlights} highlights.").format(
        messages=digest.messages,
        topics=len(active),
        highlights=sum(len(x.highlights) for x in digest.topics),
    )


# --- web routes ---------------------------------------------------------------------------


def _base_url(request: web.Request, site: DigestSite) -> str:
    if site.public_url:
        return site.public_url.rstrip("/") + "/"
    return site_url(request)


def _urls(request: web.Request) -> dict[str, Any]:
    """The site's root and the page's canonical address (the site's public URL first)."""
    base = _base_url(request, request.app[SITE_KEY])
    return {"site_url": base, "page_url": base + request.path.lstrip("/")}


async def home(request: web.Request) -> web.StreamResponse:
    lang = page_language(request)
    site = request.app[SITE_KEY]
    ctx = await site.home_context(lang)
    return render_page(request, "digest_home.html", lang, root="/", **_urls(request), **ctx)


async def week_page(request: web.Request) -> web.StreamResponse:
    lang = page_language(request)
    week = request.match_info["week"]
    ctx = await request.app[SITE_KEY].week_context(lang, week) if WEEK_RE.match(week) else None
    if ctx is None:
        raise web.HTTPNotFound()
    return render_page(request, "digest_week.html", lang, root="/", **_urls(request), **ctx)


async def topic_page(request: web.Request) -> web.StreamResponse:
    lang = page_language(request)
    ctx = await request.app[SITE_KEY].topic_context(lang, request.match_info["slug"])
    if ctx is None:
        raise web.HTTPNotFound()
    return render_page(request, "digest_topic.html", lang, root="/", **_urls(request), **ctx)


async def archive_page(request: web.Request) -> web.StreamResponse:
    lang = page_language(request)
    number = request.match_info.get("page", "1")
    page = int(number) if number.isdigit() and not number.startswith("0") else 0
    if "page" in request.match_info and page == 1:
        raise web.HTTPNotFound()  # page 1 is /archive/
    ctx = await request.app[SITE_KEY].archive_context(lang, page)
    if ctx is None:
        raise web.HTTPNotFound()
    return render_page(request, "digest_archive.html", lang, root="/", **_urls(request), **ctx)


async def feed(request: web.Request) -> web.StreamResponse:
    lang = page_language(request)
    site = request.app[SITE_KEY]
    settings = request.app[SETTINGS_KEY]
    renderer = request.app[RENDERER_KEY]
    ctx = await site.feed_context(lang, _base_url(request, site), renderer)
    body = renderer.render(
        "digest_feed.xml",
        lang,
        forum_name=settings.text(settings.forum.name, lang),
        forum_description=settings.text(settings.forum.description, lang),
        **ctx,
    )
    return web.Response(text=body, content_type="application/atom+xml", charset="utf-8")


async def api_digests(request: web.Request) -> web.StreamResponse:
    body = json.dumps(await request.app[SITE_KEY].json_body(), ensure_ascii=False).encode()
    response = web.Response(
        body=body,
        content_type="application/json",
        headers={"Cache-Control": JSON_CACHE_CONTROL},
    )
    response.etag = hashlib.sha256(body).hexdigest()[:32]
    if request.if_none_match and any(e.value == response.etag.value for e in request.if_none_match):  # type: ignore[union-attr]
        return web.Response(status=304, headers={"ETag": f'"{response.etag.value}"'})  # type: ignore[union-attr]
    return response


def web_extension(site: DigestSite) -> Callable[[web.Application], None]:
    def extend(app: web.Application) -> None:
        app[SITE_KEY] = site
        app[RENDERER_KEY].add_loader(jinja2.FileSystemLoader(TEMPLATES))
        languages = "|".join(re.escape(lang) for lang in app[I18N_KEY].languages)
        lang = f"{{lang:(?:{languages})}}"
        app.router.add_get(f"/{lang}/", home, name="home")  # the digest is the home page
        app.router.add_get(f"/{lang}/week/{{week}}/", week_page, name="digest_week")
        app.router.add_get(f"/{lang}/topic/{{slug}}/", topic_page, name="digest_topic")
        app.router.add_get(f"/{lang}/archive/", archive_page, name="digest_archive")
        app.router.add_get(f"/{lang}/archive/{{page:\\d+}}/", archive_page, name="digest_archive_n")
        app.router.add_get(f"/{lang}/feed.atom", feed, name="digest_feed")
        app.router.add_get("/api/digests.json", api_digests, name="digest_json")

    return extend


# --- static export --------------------------------------------------------------------------

_LINK = re.compile(r'(href|src)="/([^"]*)"')


def relativize(html: str, depth: int) -> str:
    """Make site-absolute links relative for a page ``depth`` directories deep."""
    prefix = "../" * depth

    def sub(m: re.Match[str]) -> str:
        path = m.group(2)
        if path.startswith("static/"):
            path = path.split("?", 1)[0]
        elif path == "" or path.endswith("/"):
            path += "index.html"
        return f'{m.group(1)}="{prefix}{path}"'

    return _LINK.sub(sub, html)


def _static_url(name: str) -> str:
    return f"/static/{name}"


async def export_site(
    site: DigestSite, directory: Path, *, home: Path | None = None, force: bool = False
) -> int:
    """Write the whole public site into ``directory``; return how many files. Only the
    export's own files are written and removed (:mod:`bridge.export`); a directory that
    holds others is refused unless ``force``; never into a project root nor into or above
    ``home`` (raises :class:`~bridge.export.ExportRefused`)."""
    await asyncio.to_thread(check_target, directory, home=home, force=force)
    settings = site.settings
    forum_i18n = I18n(settings.forum.languages)
    renderer = site.export_renderer()
    files: dict[str, bytes] = {}
    base = site.public_url.rstrip("/") + "/" if site.public_url else "../"
    root_url = site.public_url.rstrip("/") + "/" if site.public_url else "/"

    def page(path: str, template: str, lang: str, context: dict[str, Any]) -> None:
        rest = path.split("/", 1)[1] if "/" in path else ""
        rest = rest.removesuffix("index.html")
        links = [
            {"lang": o, "name": forum_i18n.language_name(o), "url": f"/{o}/{rest}"}
            for o in settings.forum.languages
        ]
        html = renderer.render(
            template,
            lang,
            forum_name=settings.text(settings.forum.name, lang),
            forum_description=settings.text(settings.forum.description, lang),
            language_links=links,
            root="/",
            site_url=root_url,
            page_url=root_url + path.removesuffix("index.html") if site.public_url else "",
            **context,
        )
        files[path] = relativize(html, path.count("/")).encode()

    weeks = await site.weeks()
    for lang in settings.forum.languages:
        page(f"{lang}/index.html", "digest_home.html", lang, await site.home_context(lang))
        for week in weeks:
            ctx = await site.week_context(lang, week)
            assert ctx is not None
            page(f"{lang}/week/{week}/index.html", "digest_week.html", lang, ctx)
        for topic in settings.topics:
            tctx = await site.topic_context(lang, topic.slug)
            assert tctx is not None
            page(f"{lang}/topic/{topic.slug}/index.html", "digest_topic.html", lang, tctx)
        number = 1
        while (actx := await site.archive_context(lang, number)) is not None:
            where = archive_path(lang, number).lstrip("/")
            page(f"{where}index.html", "digest_archive.html", lang, actx)
            number += 1
        fctx = await site.feed_context(lang, base, renderer)
        files[f"{lang}/feed.atom"] = renderer.render(
            "digest_feed.xml",
            lang,
            forum_name=settings.text(settings.forum.name, lang),
            forum_description=settings.text(settings.forum.description, lang),
            **fctx,
        ).encode()
    primary = settings.primary_language
    files["index.html"] = (
        relativize(files[f"{primary}/index.html"].decode(), 0)
        .replace('href="../', 'href="')
        .encode()
    )
    files["api/digests.json"] = json.dumps(await site.json_body(), ensure_ascii=False).encode()
    for name in EXPORTED_STATIC:
        files[f"static/{name}"] = (STATIC_DIR / name).read_bytes()
    return await asyncio.to_thread(write_export, directory, files, home=home, force=force)
