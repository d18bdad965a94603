"""The published site as the public gets it: the static export served by a plain file
server with every link working, and a page rendered in headless Chromium."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
import feedparser
import pytest
from sqlalchemy import select

from bridge.models import DigestHighlight
from forum.homeserver import free_port
from tests.harness import OTHER_TOPIC, TOPIC, ForumStarter, eventually

pytestmark = pytest.mark.homeserver

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
LINK = re.compile(r'(?:href|src)="([^"]+)"')


async def published_forum(make_user, start_forum):
    mod = await make_user("mod")
    amina = await make_user("amina", display_name="Amina <b>&</b>")
    forum = await start_forum("digest", moderator=mod, moderator_joins=())
    for user in (mod, amina):
        await forum.join(user, forum.room(), forum.room(OTHER_TOPIC))
    await forum.consent(amina)
    texts = [
        "Les clubs de lecture pour les filles marchent bien dans les écoles de Kara.",
        "Les clubs de lecture ont besoin de livres en français et en langues locales.",
        "<script>alert(1)</script> Les écoles de Kara cherchent des bénévoles pour les clubs.",
    ]
    first = await amina.send_text(forum.room(), texts[0], f"<p>{texts[0]}</p>")
    for text in texts[1:]:
        await amina.send_text(forum.room(), text)
    await amina.send_text(forum.room(OTHER_TOPIC), "Égalité: les filles dans les clubs de codage.")
    await mod.react(forum.room(), first, "📰")

    async def stored() -> bool:
        async with forum.ctx.db.sessionmaker() as s:
            marked = await s.scalar(select(DigestHighlight.target))
        return len(await forum.stored_bodies()) == 4 and marked == first

    await eventually(stored, 20, "messages stored and the highlight marked")
    await forum.digest.publish(forum.week())
    return forum


async def test_static_export_served_by_plain_file_server(
    make_user, start_forum: ForumStarter, tmp_path
):
    forum = await published_forum(make_user, start_forum)
    export = tmp_path / "public"
    await forum.digest.export_to(export)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(export),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(base) as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(up, 15, "the file server answers")
            seen: dict[str, int] = {}
            todo = [base]
            while todo:
                url = todo.pop()
                if url in seen:
                    continue
                async with http.get(url) as r:
                    seen[url] = r.status
                    body = await r.text() if r.status == 200 else ""
                    ctype = r.headers.get("Content-Type", "")
                if "html" not in ctype and not url.endswith(".atom"):
                    continue
                for link in LINK.findall(body):
                    target = urljoin(url, link.replace("&amp;", "&")).split("#")[0]
                    if urlsplit(target).netloc == f"127.0.0.1:{port}":
                        todo.append(target)
                    else:
                        # Matrix links, and where to get the app ("How to join")
                        assert target.startswith(("https://matrix.to/", "https://element.io/")), (
                            target
                        )
    finally:
        server.terminate()
        await server.wait()
    broken = {u: s for u, s in seen.items() if s != 200}
    assert not broken, broken
    week = forum.week()
    paths = {urlsplit(u).path for u in seen}
    for path in (
        "/fr/index.html",
        "/en/index.html",
        f"/fr/week/{week}/index.html",
        f"/en/week/{week}/index.html",
        f"/fr/topic/{TOPIC}/index.html",
        "/fr/archive/index.html",
        "/static/style.css",
        "/fr/feed.atom",
    ):
        assert path in paths, (path, sorted(paths))
    assert (export / "static" / "share.png").read_bytes().startswith(b"\x89PNG")
    # The exported feed parses and the exported JSON matches the served one.
    parsed = feedparser.parse((export / "fr" / "feed.atom").read_text(encoding="utf-8"))
    assert not parsed.bozo
    assert len(parsed.entries) == 1
    _, served_json, _ = await forum.get("/api/digests.json")
    assert (export / "api" / "digests.json").read_text(encoding="utf-8") == served_json
    page = (export / "fr" / "week" / week / "index.html").read_text(encoding="utf-8")
    assert "clubs" in page
    assert "<script" not in page
    assert "alert(1)" not in page or "&lt;script&gt;alert(1)" in page
    assert "Amina &lt;b&gt;&amp;&lt;/b&gt;" in page


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed "
    "(apt-get install -y chromium); /usr/bin/chromium is absent",
)
async def test_page_in_headless_chromium(make_user, start_forum: ForumStarter):
    forum = await published_forum(make_user, start_forum)
    url = f"{forum.url}/fr/week/{forum.week()}/"
    status, page, _ = await forum.get(f"/fr/week/{forum.week()}/")
    assert status == 200
    # no third-party requests: every src/href that loads something is same-origin
    assert not re.search(r'(?:src|rel="stylesheet" href)="https?://', page)
    assert "<script" not in page
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "digest-week-fr.png"
    shot.unlink(missing_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        proc = await asyncio.create_subprocess_exec(
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=412,1400",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    log = (out + err).decode(errors="replace")
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert proc.returncode == 0, log[-3000:]
    assert not console, console
    assert "Content Security Policy" not in log
    assert shot.exists()
    assert shot.stat().st_size > 5_000
