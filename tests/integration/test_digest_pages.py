"""The public pages as a reader, a sharing app and a feed reader get them, rendered from a
real store (SQLite and PostgreSQL) by the real web app: the home invites to join, every
page shares well (its own description, OpenGraph, canonical, a share image), quotes carry
their language, weeks read as dates, the archive has pages, the feed's ``<updated>``
follows edits and erasures, and pages stay light."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from html.parser import HTMLParser

import feedparser
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from bridge.digest import language_of
from bridge.repositories import DigestStore
from bridge.site import DigestSite, web_extension
from bridge.weeks import week_bounds
from forum.consent import ConsentRow
from forum.i18n import I18n
from forum.settings import DEFAULT_CONFIG, load_settings
from forum.storage import Database
from forum.web import create_app

SETTINGS = load_settings(DEFAULT_CONFIG, env={})
PUBLIC = "https://forum.example.org/"
WEEK = "2026-W48"  # Monday 23 to Sunday 29 November 2026
ROOMS = {f"topic:{t.slug}": f"!{t.slug}:localhost" for t in SETTINGS.topics}
ROOMS["announcements"] = "!annonces:localhost"
FRENCH = "Les clubs de lecture pour les filles marchent bien dans les écoles de Kara."
ENGLISH = "The reading clubs for girls are working well in the schools of Kara and we thank them."
KB = 1024

Client = TestClient  # type: ignore[type-arg]


async def fill_week(
    db: Database, week: str, *, per_topic: int = 40, people: int = 8, highlights: int = 0
) -> None:
    """A realistic week: consenting people writing in every topic, in French and English,
    two highlights in the first topic (one French, one English), or ``highlights`` in
    every topic, published."""
    start, _ = week_bounds(week, SETTINGS.digest.timezone)
    async with db.sessionmaker() as s, s.begin():
        for i in range(people):
            s.add(
                ConsentRow(
                    user_id=f"@p{i}:localhost",
                    scope="publication",
                    granted=True,
                    method="test",
                    created_at=start - timedelta(days=30),
                )
            )
        store = DigestStore(s)
        for t_index, topic in enumerate(SETTINGS.topics):
            room = ROOMS[f"topic:{topic.slug}"]
            for n in range(per_topic):
                who = f"@p{(n + t_index) % people}:localhost"
                if n == 0:
                    body = FRENCH
                elif n == 1:
                    body = ENGLISH
                elif n % 3:
                    body = (
                        f"Message {n} sur {topic.slug}: les écoles de la région {n % 7} "
                        "organisent des ateliers pour les filles et les jeunes femmes, "
                        "avec des bénévoles et des livres en langues locales."
                    )
                else:
                    body = (
                        f"Message {n} about {topic.slug}: the schools of region {n % 7} "
                        "hold workshops for girls and young women, with volunteers "
                        "and books in local languages."
                    )
                event_id = f"${week}-{topic.slug}-{n}"
                ts = start + timedelta(hours=1 + n, minutes=t_index)
                await store.add_activity(event_id, room, "message", who, ts)
                await store.put_message(
                    event_id=event_id,
                    room_id=room,
                    topic=topic.slug,
                    sender=who,
                    display_name=f"Personne {who[2:4]}",
                    body=body,
                    html=None,
                    ts=ts,
                    reply_to=None,
                    thread_root=None,
                    edited=False,
                    basis="consent",
                )
            marked = range(highlights) if highlights else (0, 1) if t_index == 0 else ()
            for n in marked:
                await store.mark(
                    f"${week}-{topic.slug}-{n}",
                    room,
                    f"@p{(n + t_index) % people}:localhost",
                    "À lire" if n == 2 else None,
                    f"$marker-{week}-{topic.slug}-{n}",
                    "@mod:localhost",
                    "ok",
                )
        await store.publish(week)


@pytest_asyncio.fixture(loop_scope="session")
async def site(db: Database) -> DigestSite:
    return DigestSite(SETTINGS, db.sessionmaker, ROOMS, public_url=PUBLIC)


@pytest_asyncio.fixture(loop_scope="session")
async def client(site: DigestSite) -> AsyncIterator[Client]:
    async def up() -> bool:
        return True

    app = create_app(
        SETTINGS,
        database_ping=up,
        homeserver_ping=up,
        i18n=I18n(SETTINGS.forum.languages),
        extensions=[web_extension(site)],
    )
    async with TestClient(TestServer(app)) as c:
        yield c


class Head(HTMLParser):
    """The meta and link tags of a page, the text a reader sees, and each quote's lang."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.meta: dict[str, str] = {}
        self.links: dict[str, list[str]] = {}
        self.quote_langs: list[str | None] = []
        self.text: list[str] = []
        self._skip = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "meta":
            key = a.get("property") or a.get("name")
            if key:
                self.meta[key] = a.get("content", "")
        elif tag == "link":
            self.links.setdefault(a.get("rel", ""), []).append(a.get("href", ""))
        elif tag == "blockquote":
            self.quote_langs.append(dict(attrs).get("lang"))
        elif tag in ("style", "script", "head"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


async def get(client: Client, path: str) -> str:
    resp = await client.get(path)
    assert resp.status == 200, (path, resp.status)
    return await resp.text()


# --- defect 5: the home invites to join ---------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "heading", "install"),
    [("fr", "Comment nous rejoindre", "Element X"), ("en", "How to join", "Element X")],
)
async def test_every_home_says_how_to_join(client: Client, lang: str, heading: str, install: str):
    html = await get(client, f"/{lang}/")
    page = Head(html)
    text = page.all_text
    assert heading in text
    lobby = f"https://matrix.to/#/%23{SETTINGS.rooms.lobby.alias}:{SETTINGS.server_name}"
    assert f'href="{lobby}"' in html
    assert "Element" in text
    assert install in text
    assert ("charte" if lang == "fr" else "charter") in text


# --- defect 6: pages that share well ---------------------------------------------------------


async def test_every_page_has_its_own_description_and_share_tags(db: Database, client: Client):
    await fill_week(db, WEEK)
    paths = [
        "/fr/",
        "/en/",
        f"/fr/week/{WEEK}/",
        f"/en/week/{WEEK}/",
        f"/fr/topic/{SETTINGS.topics[0].slug}/",
        "/fr/archive/",
    ]
    descriptions = set()
    for path in paths:
        page = Head(await get(client, path))
        for key in ("description", "og:title", "og:description", "og:url", "og:image"):
            assert page.meta.get(key), (path, key, page.meta)
        assert page.meta["og:url"] == PUBLIC + path[1:], path
        assert page.links.get("canonical") == [PUBLIC + path[1:]], path
        assert page.meta["og:description"] == page.meta["description"]
        descriptions.add(page.meta["description"])
        image = page.meta["og:image"]
        assert image.startswith(PUBLIC), image
        resp = await client.get("/" + image.removeprefix(PUBLIC))
        assert resp.status == 200
        assert resp.content_type in ("image/png", "image/jpeg")
        assert len(await resp.read()) < 50 * KB
        alternates = page.links.get("alternate", [])
        assert any(a.startswith(PUBLIC + "en/") for a in alternates), alternates
    assert len(descriptions) == len(paths), descriptions


async def test_quotes_carry_the_language_they_were_written_in(db: Database, client: Client):
    await fill_week(db, WEEK)
    for lang in ("fr", "en"):
        html = await get(client, f"/{lang}/week/{WEEK}/")
        page = Head(html)
        assert len(page.quote_langs) == 2
        assert page.quote_langs == ["fr", "en"], page.quote_langs
        # the key points too: every one says its language
        points = re.findall(r'<li class="key-point"[^>]*>', html)
        assert points
        assert all(' lang="' in p for p in points), points


async def test_weeks_read_as_dates(db: Database, client: Client):
    await fill_week(db, WEEK)
    fr = Head(await get(client, f"/fr/week/{WEEK}/")).all_text
    en = Head(await get(client, f"/en/week/{WEEK}/")).all_text
    assert "semaine du 23 au 29 novembre 2026" in fr.lower()
    assert "week of 23–29 November 2026" in en or "Week of 23–29 November 2026" in en
    for path in ("/fr/", "/en/", "/fr/archive/", f"/fr/topic/{SETTINGS.topics[0].slug}/"):
        assert WEEK not in Head(await get(client, path)).all_text, path
    feed = feedparser.parse(await get(client, "/en/feed.atom"))
    assert "23–29 November 2026" in feed.entries[0].title


async def test_no_page_leaves_the_hash_of_an_alias_unescaped(db: Database, client: Client):
    await fill_week(db, WEEK)
    for path in ("/fr/", "/en/", f"/fr/week/{WEEK}/", "/fr/archive/", "/en/feed.atom"):
        body = await get(client, path)
        assert "matrix.to/#/#" not in body, path
    for topic in SETTINGS.topics:
        assert "matrix.to/#/#" not in await get(client, f"/en/topic/{topic.slug}/")


async def test_the_archive_has_pages(db: Database, client: Client):
    weeks = [f"2025-W{n:02d}" for n in range(1, 46)]
    async with db.sessionmaker() as s, s.begin():
        for w in weeks:
            await DigestStore(s).publish(w)
    home = await get(client, "/fr/")
    # the home lists only the latest weeks and points to the archive
    assert home.count("/fr/week/") < 12
    assert 'href="/fr/archive/"' in home
    first = await get(client, "/fr/archive/")
    assert "/fr/week/2025-W45/" in first
    assert "/fr/week/2025-W01/" not in first
    assert 'href="/fr/archive/2/"' in first
    seen = set(re.findall(r"/fr/week/(2025-W\d\d)/", first))
    page, n = first, 1
    while (m := re.search(r'href="(/fr/archive/\d+/)" rel="next"', page)) is not None:
        n += 1
        assert n < 10
        page = await get(client, m.group(1))
        seen |= set(re.findall(r"/fr/week/(2025-W\d\d)/", page))
    assert seen == set(weeks)
    assert n >= 2
    assert (await client.get("/fr/archive/99/")).status == 404


def entry_updated(feed: feedparser.FeedParserDict) -> datetime:
    return datetime.fromisoformat(feed.entries[0].updated)


async def test_the_feed_updated_follows_an_edit_and_an_erasure(
    db: Database, site: DigestSite, client: Client
):
    await fill_week(db, WEEK)
    first = feedparser.parse(await get(client, "/fr/feed.atom"))
    assert not first.bozo
    before = entry_updated(first)
    async with db.sessionmaker() as s, s.begin():
        assert await DigestStore(s).edit_message(
            f"${WEEK}-{SETTINGS.topics[0].slug}-0",
            "@p0:localhost",
            "Les clubs de lecture ont trouvé de nouveaux livres à Kara.",
            None,
        )
    site.changed()  # what the service's watch loop does when the change counter moves
    edited = feedparser.parse(await get(client, "/fr/feed.atom"))
    assert "nouveaux livres" in edited.entries[0].content[0].value
    after_edit = entry_updated(edited)
    assert after_edit > before
    assert datetime.fromisoformat(edited.feed.updated) >= after_edit
    async with db.sessionmaker() as s, s.begin():
        assert await DigestStore(s).erase_user("@p0:localhost")
    site.changed()
    erased = feedparser.parse(await get(client, "/fr/feed.atom"))
    assert "nouveaux livres" not in erased.entries[0].content[0].value
    assert entry_updated(erased) > after_edit
    # nothing changed: the same date
    again = feedparser.parse(await get(client, "/fr/feed.atom"))
    assert entry_updated(again) == entry_updated(erased)


# --- light pages ------------------------------------------------------------------------------


async def test_pages_stay_light_with_a_realistic_week(db: Database, client: Client):
    # three weeks, each: 6 topics x 40 messages by 8 people, 3 highlights in every topic
    for w in ("2026-W46", "2026-W47", WEEK):
        await fill_week(db, w, highlights=3)
    sizes = {}
    topic = f"/fr/topic/{SETTINGS.topics[0].slug}/"
    for path in ("/fr/", f"/fr/week/{WEEK}/", "/fr/archive/", "/en/", f"/en/week/{WEEK}/", topic):
        body = (await get(client, path)).encode()
        sizes[path] = len(body)
        assert b"<script" not in body, path
        assert len(body) < 30 * KB, (path, len(body))
    css = await client.get("/static/style.css")
    assert "@media print" in await css.text()
    print("page sizes (bytes):", sizes)


@pytest.mark.parametrize(
    ("week", "fr", "en"),
    [
        ("2026-W48", "semaine du 23 au 29 novembre 2026", "week of 23–29 November 2026"),
        (
            "2026-W49",
            "semaine du 30 novembre au 6 décembre 2026",
            "week of 30 November–6 December 2026",
        ),
        (
            "2026-W53",
            "semaine du 28 décembre 2026 au 3 janvier 2027",
            "week of 28 December 2026–3 January 2027",
        ),
    ],
)
def test_a_week_reads_as_its_dates_across_months_and_years(week: str, fr: str, en: str):
    site = DigestSite(SETTINGS, None, ROOMS)  # type: ignore[arg-type]  # names only
    assert site.week_name("fr", week) == fr
    assert site.week_name("en", week) == en
    assert site.week_name("fr", week, capital=True) == fr[:1].upper() + fr[1:]


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        (FRENCH, "fr"),
        (ENGLISH, "en"),
        ("Merci pour le partage, c'est très utile pour nous.", "fr"),
        ("Thanks, this is what we needed for the club.", "en"),
        ("Kara 2026 !!", "fr"),  # nothing tells: the forum's first language
    ],
)
def test_a_quote_language_is_told_from_its_words(text: str, lang: str):
    assert language_of(text, SETTINGS.primary_language) == lang
