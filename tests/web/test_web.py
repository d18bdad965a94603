"""The web app through aiohttp's test client, on the real factory and the real config."""

from __future__ import annotations

import copy
import json
import logging
import re
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from html.parser import HTMLParser

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from forum.i18n import I18n
from forum.settings import DEFAULT_CONFIG, Settings, load_settings, parse_settings
from forum.web import create_app, run_web

SETTINGS = load_settings(DEFAULT_CONFIG, env={})
I18N = I18n(SETTINGS.forum.languages)


async def up() -> bool:
    return True


async def down() -> bool:
    return False


async def broken() -> bool:
    raise ConnectionRefusedError("connection refused")


@asynccontextmanager
async def client_for(
    settings: Settings = SETTINGS,
    *,
    database_ping: Callable[[], object] = up,
    homeserver_ping: Callable[[], object] = up,
    extensions: Sequence[Callable[[web.Application], None]] = (),
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(
        settings,
        database_ping=database_ping,  # type: ignore[arg-type]
        homeserver_ping=homeserver_ping,  # type: ignore[arg-type]
        i18n=I18n(settings.forum.languages),
        extensions=extensions,
    )
    async with TestClient(TestServer(app)) as client:
        yield client


class Page(HTMLParser):
    """Text, links and the html lang of a page, as a reader (or a screen reader) gets them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.links: list[str] = []
        self.lang: str | None = None
        self.tags: set[str] = set()
        self._skip = 0
        self.feed(html)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        if tag == "html":
            self.lang = values.get("lang")
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


# --- language choice ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept_language", "expected"),
    [
        ("fr", "/fr/"),
        ("en", "/en/"),
        ("en-US;q=0.9", "/en/"),
        ("de-DE, en-GB;q=0.8, fr;q=0.5", "/en/"),
        ("fr-FR;q=0.4, en;q=0.7", "/en/"),
        ("xx-garbage;;q=zz, ,,;", "/fr/"),
        (None, "/fr/"),
    ],
)
async def test_root_redirects_to_the_readers_language(
    accept_language: str | None, expected: str
) -> None:
    headers = {"Accept-Language": accept_language} if accept_language is not None else {}
    async with client_for() as client:
        resp = await client.get("/", headers=headers, allow_redirects=False)
        assert resp.status == 302
        assert resp.headers["Location"] == expected
        assert "Accept-Language" in resp.headers["Vary"]


# --- home pages ---------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_home_lists_every_topic_in_its_language(lang: str) -> None:
    async with client_for() as client:
        resp = await client.get(f"/{lang}/")
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = Page(await resp.text())
    assert page.lang == lang
    assert {"header", "nav", "main", "footer"} <= page.tags
    text = page.all_text
    assert SETTINGS.forum.name[lang] in text
    assert SETTINGS.forum.description[lang] in text
    assert len(SETTINGS.topics) == 6
    for topic in SETTINGS.topics:
        assert topic.name[lang] in text
        assert topic.topic[lang] in text
        assert f"https://matrix.to/#/%23{topic.effective_alias}:localhost" in page.links
    lobby = f"https://matrix.to/#/%23{SETTINGS.rooms.lobby.alias}:localhost"
    assert lobby in page.links
    assert "Element" in text
    # the other language is one tap away, and there is a skip link
    other = "en" if lang == "fr" else "fr"
    assert f"/{other}/" in page.links
    assert "#main" in page.links


async def test_french_home_page_is_in_french() -> None:
    async with client_for() as client:
        fr = Page(await (await client.get("/fr/")).text()).all_text
        en = Page(await (await client.get("/en/")).text()).all_text
    assert "Comment nous rejoindre" in fr
    assert "How to join" not in fr
    assert "How to join" in en
    assert "Droits des enfants" in fr
    assert "Children's rights" in en


async def test_page_is_light_with_no_script_and_no_third_party_resource() -> None:
    async with client_for() as client:
        resp = await client.get("/fr/")
        html = await resp.text()
        assert "<script" not in html.lower()
        assert " style=" not in html  # inline styles would break the CSP
        stylesheets = [
            line.split('href="')[1].split('"')[0]
            for line in html.splitlines()
            if 'rel="stylesheet"' in line
        ]
        assert len(stylesheets) == 1
        assert stylesheets[0].startswith("/static/style.css?v=")
        css = await client.get(stylesheets[0].replace("&amp;", "&"))
        assert css.status == 200
        assert css.content_type == "text/css"
        assert "immutable" in css.headers["Cache-Control"]
        weight = len(html.encode()) + len(await css.read())
    assert weight < 30 * 1024, weight
    # no resource loaded from elsewhere (links people tap, and the page's own canonical
    # and language addresses, which nothing loads, are fine)
    for attr in ('src="http', 'href="http'):
        for line in html.splitlines():
            if attr in line:
                assert "<a " in line or re.match(r'<link rel="(canonical|alternate)"', line), line
    assert "matrix.to/#/#" not in html  # the # of an alias is written %23 (valid HTML)


async def test_security_headers_on_pages() -> None:
    async with client_for() as client:
        for path in ("/fr/", "/static/style.css", "/nowhere", "/healthz"):
            resp = await client.get(path)
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp
            assert "frame-ancestors 'none'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"


async def test_etag_and_not_modified() -> None:
    async with client_for() as client:
        first = await client.get("/en/")
        assert first.status == 200
        assert first.headers["Cache-Control"] == "public, max-age=300"
        etag = first.headers["ETag"]
        again = await client.get("/en/", headers={"If-None-Match": etag})
        assert again.status == 304
        assert again.headers["ETag"] == etag
        assert await again.read() == b""
        stale = await client.get("/en/", headers={"If-None-Match": 'W/"something-else"'})
        assert stale.status == 200
        # the French page is another representation
        assert (await client.get("/fr/")).headers["ETag"] != etag


async def test_static_files_are_cached() -> None:
    async with client_for() as client:
        plain = await client.get("/static/style.css")
        assert plain.status == 200
        assert "max-age=" in plain.headers["Cache-Control"]
        revalidated = await client.get(
            "/static/style.css", headers={"If-None-Match": plain.headers["ETag"]}
        )
        assert revalidated.status == 304
        missing = await client.get("/static/nothing.css")
        assert missing.status == 404


async def test_lang_without_slash_is_redirected() -> None:
    async with client_for() as client:
        resp = await client.get("/en", allow_redirects=False)
        assert resp.status in (301, 308)
        assert resp.headers["Location"] == "/en/"


# --- health ---------------------------------------------------------------------------------


async def test_healthz_ok() -> None:
    async with client_for() as client:
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"homeserver": "ok", "database": "ok"}
        assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("database", "homeserver", "expected"),
    [
        (down, up, {"homeserver": "ok", "database": "down"}),
        (up, broken, {"homeserver": "down", "database": "ok"}),
        (broken, down, {"homeserver": "down", "database": "down"}),
    ],
)
async def test_healthz_reports_what_is_down(
    database: Callable[[], object], homeserver: Callable[[], object], expected: dict[str, str]
) -> None:
    async with client_for(database_ping=database, homeserver_ping=homeserver) as client:
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert await resp.json() == expected
        assert resp.headers["Cache-Control"] == "no-store"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "accept_language", "lang", "title"),
    [
        ("/fr/no-such-page", None, "fr", "Page introuvable"),
        ("/en/no-such-page", "fr", "en", "Page not found"),
        ("/xx/", "en-US", "en", "Page not found"),
        ("/nowhere", "fr-FR, en;q=0.5", "fr", "Page introuvable"),
        ("/nowhere", None, "fr", "Page introuvable"),
    ],
)
async def test_not_found_page_in_the_readers_language(
    path: str, accept_language: str | None, lang: str, title: str
) -> None:
    headers = {"Accept-Language": accept_language} if accept_language else {}
    async with client_for() as client:
        resp = await client.get(path, headers=headers)
        assert resp.status == 404
        assert resp.content_type == "text/html"
        page = Page(await resp.text())
    assert page.lang == lang
    assert title in page.all_text
    assert f"/{lang}/" in page.links


async def test_not_found_is_json_under_api() -> None:
    async with client_for() as client:
        resp = await client.get("/api/nothing")
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert (await resp.json())["status"] == 404


def _failing_routes(app: web.Application) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail in /home/forum/token=abc")

    app.router.add_get("/en/boom", boom)
    app.router.add_get("/api/boom", boom)


async def test_server_error_page_hides_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="forum.web.app")
    async with client_for(extensions=[_failing_routes]) as client:
        resp = await client.get("/en/boom")
        assert resp.status == 500
        assert resp.content_type == "text/html"
        html = await resp.text()
        api = await client.get("/api/boom")
        assert api.status == 500
        api_body = await api.text()
    assert "Something went wrong" in Page(html).all_text
    for leak in ("Traceback", "RuntimeError", "secret detail", "token=abc"):
        assert leak not in html
        assert leak not in api_body
    assert json.loads(api_body)["status"] == 500
    # the operator still gets the whole story in the log
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors
    assert errors[0].exc_info is not None


async def test_extension_routes_are_served() -> None:
    def extension(app: web.Application) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello")

        app.router.add_get("/hello", hello)

    async with client_for(extensions=[extension]) as client:
        resp = await client.get("/hello")
        assert resp.status == 200
        assert await resp.text() == "hello"


# --- escaping ----------------------------------------------------------------------------------


async def test_names_are_escaped() -> None:
    data = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    data = copy.deepcopy(data)
    evil = "<script>alert(1)</script>"
    data["topics"][0]["name"] = {"fr": f"Droits {evil}", "en": f"Rights {evil}"}
    data["forum"]["description"] = {"fr": f"Desc \"'{evil}", "en": "Desc & co"}
    settings = parse_settings(data, "test", env={})
    async with client_for(settings) as client:
        html = await (await client.get("/fr/")).text()
        en = await (await client.get("/en/")).text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert f"Droits {evil}" in Page(html).all_text
    assert "Desc &amp; co" in en


# --- serving -----------------------------------------------------------------------------------


async def test_run_web_reports_the_bound_port() -> None:
    app = create_app(SETTINGS, database_ping=up, homeserver_ping=up, i18n=I18N)
    runner, port = await run_web(app, "127.0.0.1", 0)
    try:
        assert port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
    finally:
        await runner.cleanup()
