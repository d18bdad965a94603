"""Requests per second and p99 latency for a digest week page under 50 concurrent clients,
side by side with a plain static file server serving the same bytes; and the page's
weight (HTML + CSS). Prints JSON.

    .venv/bin/python benchmarks/web.py [--seconds 10] [--clients 50] [--messages 5000]

Each server runs in its own subprocess; the load generator is this process (aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from digest import WEEK, fill, rooms, settings_data  # type: ignore[import-not-found]  # noqa: E402


async def serve_digest(url: str, port: int) -> None:
    from aiohttp import web

    from bridge.repositories import DigestStore
    from bridge.site import DigestSite, web_extension
    from forum.i18n import I18n
    from forum.settings import parse_settings
    from forum.storage import Database
    from forum.web import create_app

    settings = parse_settings(settings_data(), "bench", env={})
    db = await Database.open(url)
    async with db.sessionmaker() as s, s.begin():
        await DigestStore(s).publish(WEEK)
    site = DigestSite(settings, db.sessionmaker, rooms())

    async def ok() -> bool:
        return True

    app = create_app(
        settings,
        database_ping=ok,
        homeserver_ping=ok,
        i18n=I18n(settings.forum.languages),
        extensions=[web_extension(site)],
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def serve_static(directory: str, port: int) -> None:
    from aiohttp import web

    app = web.Application()
    app.router.add_static("/", directory)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.2)


async def load(url: str, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with http.get(url, headers={"Accept-Encoding": "identity"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def free_port() -> int:
    from forum.homeserver import free_port as fp

    return fp()


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, __file__, *args)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/web.db"
        await fill(url, args.messages)
        dport, sport = free_port(), free_port()
        procs = [await _spawn("--serve-digest", url, str(dport))]
        try:
            page_url = f"http://127.0.0.1:{dport}/fr/week/{WEEK}/"
            await wait_up(page_url)
            async with aiohttp.ClientSession() as http:
                async with http.get(page_url) as r:
                    html = await r.read()
                async with http.get(f"http://127.0.0.1:{dport}/static/style.css") as r:
                    css = await r.read()
            static_dir = Path(tmp) / "static-site"
            static_dir.mkdir()
            (static_dir / "week.html").write_bytes(html)
            procs.append(await _spawn("--serve-static", str(static_dir), str(sport)))
            static_url = f"http://127.0.0.1:{sport}/week.html"
            await wait_up(static_url)
            digest = await load(page_url, args.clients, args.seconds)
            static = await load(static_url, args.clients, args.seconds)
        finally:
            for p in procs:
                p.terminate()
                await p.wait()
    return {
        "benchmark": "web",
        "clients": args.clients,
        "seconds": args.seconds,
        "stored_messages": args.messages,
        "page": {
            "html_bytes": len(html),
            "css_bytes": len(css),
            "total_bytes": len(html) + len(css),
            "gzip_total_bytes": len(gzip.compress(html)) + len(gzip.compress(css)),
            "has_javascript": b"<script" in html,
            "target_bytes": 30_000,
        },
        "digest_page": digest,
        "static_same_bytes": static,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--serve-digest", nargs=2)
    parser.add_argument("--serve-static", nargs=2)
    a = parser.parse_args()
    if a.serve_digest:
        asyncio.run(serve_digest(a.serve_digest[0], int(a.serve_digest[1])))
    elif a.serve_static:
        asyncio.run(serve_static(a.serve_static[0], int(a.serve_static[1])))
    else:
        print(json.dumps(asyncio.run(main(a)), indent=2))
