"""An accessibility check of the public pages in headless Chromium with axe-core: no
serious or critical violation on the home, a week, a topic and the archive, in French
and English. Chromium (Debian's package) and axe-core (from npm, into .venv/axe) are
installed by ``make browser``; without them the test is skipped and says why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import tests.integration.test_digest_pages as pages
from bridge.site import DigestSite, web_extension
from forum.i18n import I18n
from forum.storage import Database
from forum.web import create_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / ".venv" / "axe" / "node_modules" / "axe-core" / "axe.min.js"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (make browser); /usr/bin/chromium is absent",
    ),
    pytest.mark.skipif(
        not AXE.exists(),
        reason=f"axe-core is not installed (make browser runs npm for it); {AXE} is absent",
    ),
]

DEVTOOLS = re.compile(r"DevTools listening on (ws://[^\s]+)")


class Tab:
    """One Chromium tab driven through the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mine = self.next_id
        await self.ws.send_json({"id": mine, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == mine:
                assert "error" not in message, message
                return dict(message.get("result", {}))

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        # the page has no script: it is loaded once its readyState is complete
        for _ in range(200):
            state = await self.call(
                "Runtime.evaluate", expression="document.readyState", returnByValue=True
            )
            if state["result"].get("value") == "complete":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{url} did not finish loading")

    async def axe(self, source: str) -> list[dict[str, Any]]:
        await self.call("Runtime.evaluate", expression=source)
        result = await self.call(
            "Runtime.evaluate",
            expression=(
                "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations"
                ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
                " nodes: v.nodes.map(n => n.html).slice(0, 3)})))"
            ),
            awaitPromise=True,
            returnByValue=True,
        )
        assert "exceptionDetails" not in result, result
        return list(result["result"]["value"])


@contextlib.asynccontextmanager
async def chromium_tab() -> AsyncIterator[Tab]:
    profile = tempfile.mkdtemp(prefix="chromium-axe-")
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--window-size=412,900",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        browser_ws = ""
        async with asyncio.timeout(60):
            while not browser_ws:
                line = (await proc.stderr.readline()).decode(errors="replace")
                assert line, "chromium stopped before its DevTools endpoint was up"
                if m := DEVTOOLS.search(line):
                    browser_ws = m.group(1)
        port = browser_ws.split(":")[2].split("/")[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = json.loads(await r.text())
            page = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Tab(ws)
                await tab.call("Page.enable")
                await tab.call("Page.setBypassCSP", enabled=True)  # axe is injected by us
                yield tab
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def test_public_pages_have_no_serious_accessibility_violation(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'forum.db'}")
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
        source = AXE.read_text(encoding="utf-8")
        found: dict[str, list[dict[str, Any]]] = {}
        async with TestServer(app, host="127.0.0.1") as server, chromium_tab() as tab:
            topic = pages.SETTINGS.topics[0].slug
            for path in (
                "/fr/",
                "/en/",
                f"/fr/week/{pages.WEEK}/",
                f"/en/week/{pages.WEEK}/",
                f"/fr/topic/{topic}/",
                "/fr/archive/",
            ):
                await tab.open(str(server.make_url(path)))
                violations = await tab.axe(source)
                found[path] = violations
    finally:
        await db.close()
    serious = {
        path: [v for v in vs if v["impact"] in ("serious", "critical")]
        for path, vs in found.items()
    }
    print("axe-core violations:", json.dumps(found, ensure_ascii=False))
    assert not any(serious.values()), serious
