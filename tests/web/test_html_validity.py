"""The public pages pass the Nu HTML Checker (the W3C's validator, ``vnu.jar``): no error
on the home, a week, a topic and the archive, in French and English, nor in the static
export. Java and the checker (npm's ``vnu-jar``, into .venv/vnu) are installed by
``make browser``; without them the test is skipped and says why."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

import tests.integration.test_digest_pages as pages
from bridge.site import DigestSite, web_extension
from forum.i18n import I18n
from forum.storage import Database
from forum.web import create_app

ROOT = Path(__file__).resolve().parents[2]
VNU = ROOT / ".venv" / "vnu" / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"
JAVA = shutil.which("java")

pytestmark = [
    pytest.mark.skipif(JAVA is None, reason="no java on this machine (make browser)"),
    pytest.mark.skipif(
        not VNU.exists(),
        reason=f"the Nu HTML Checker is not installed (make browser runs npm for it); {VNU}",
    ),
]


async def check(files: list[Path]) -> list[dict[str, object]]:
    """The checker's errors on ``files`` (warnings and notes left out)."""
    assert JAVA is not None
    proc = await asyncio.create_subprocess_exec(
        JAVA,
        "-jar",
        str(VNU),
        "--errors-only",
        "--format",
        "json",
        *map(str, files),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        _, err = await proc.communicate()
    # vnu writes its JSON report on stderr; its exit status is 1 when it found errors
    report = json.loads(err.decode())
    return [m for m in report["messages"] if m.get("type") == "error"]


async def test_public_pages_pass_the_nu_html_checker(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'forum.db'}")
    files: list[Path] = []
    try:
        await pages.fill_week(db, "2026-W47")
        await pages.fill_week(db, pages.WEEK)
        site = DigestSite(pages.SETTINGS, db.sessionmaker, pages.ROOMS, public_url=pages.PUBLIC)

        async def up() -> bool:
            return True

        app = create_app(
            pages.SETTINGS,
            database_ping=up,
            homeserver_ping=up,
            i18n=I18n(pages.SETTINGS.forum.languages),
            extensions=[web_extension(site)],
        )
        topic = pages.SETTINGS.topics[0].slug
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for path in (
                "/",
                "/fr/",
                "/en/",
                f"/fr/week/{pages.WEEK}/",
                f"/en/week/{pages.WEEK}/",
                f"/fr/topic/{topic}/",
                f"/en/topic/{topic}/",
                "/fr/archive/",
                "/en/archive/",
            ):
                response = await client.get(path)
                assert response.status == 200, path
                html = await response.text()
                file = tmp_path / ("page" + path.replace("/", "_") + ".html")
                file.write_text(html, encoding="utf-8")
                files.append(file)
    finally:
        await db.close()
    errors = await check(files)
    shown = [
        f"{Path(str(e.get('url', ''))).name}:{e.get('lastLine')}: {e.get('message')}"
        for e in errors
    ]
    assert not errors, "\n".join(shown)
