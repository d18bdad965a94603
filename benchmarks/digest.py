"""Build and render one week's digest from 10k, 100k and 1M stored messages across 10
topics; print JSON: seconds and peak memory for build+render, and the floor (just reading
the week's light rows once from the database; the build reads them twice).

    .venv/bin/python benchmarks/digest.py [--sizes 10000,100000,1000000]

No homeserver is needed: the digest is built from the store. Each measurement runs in a
fresh subprocess so that its peak RSS is its own; so does the fill, as a child starts with
the peak RSS of the process it was forked from (Linux keeps ``ru_maxrss`` across exec).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WEEK = "2026-W48"
TOPICS = 10
_WORDS_TEXT = (
    "école filles cantines éducation jeunes droits campagne plaidoyer santé village ministère "
    "formation réseau égalité enfants mariage protection radio influence numérique soutien "
    "school girls rights campaign health training network equality children protection"
)
WORDS = _WORDS_TEXT.split()


def settings_data() -> dict[str, Any]:
    data = tomllib.loads((ROOT / "forum" / "config" / "forum.toml").read_text(encoding="utf-8"))
    data["topics"] = [
        {
            "slug": f"topic-{i}",
            "name": {"fr": f"Thème {i}", "en": f"Topic {i}"},
            "topic": {"fr": "…", "en": "…"},
        }
        for i in range(TOPICS)
    ]
    return data


def rooms() -> dict[str, str]:
    out = {f"topic:topic-{i}": f"!room{i}:bench" for i in range(TOPICS)}
    out["announcements"] = "!ann:bench"
    return out


async def fill(url: str, n: int) -> None:
    from bridge.models import DigestActivity, DigestMessage
    from bridge.repositories import keyword_text
    from bridge.weeks import week_bounds
    from forum.consent import ConsentRow
    from forum.storage import Database

    db = await Database.open(url)
    start, _ = week_bounds(WEEK, "Africa/Lome")
    rnd = random.Random(n)
    step = timedelta(days=7) / n
    batch: list[dict[str, Any]] = []
    acts: list[dict[str, Any]] = []
    async with db.engine.begin() as conn:
        # every sender consented before the week: the outputs show covered words only
        await conn.execute(
            ConsentRow.__table__.insert(),
            [
                {
                    "user_id": f"@user{u}:bench",
                    "scope": "publication",
                    "granted": True,
                    "method": "bench",
                    "created_at": start - timedelta(days=1),
                }
                for u in range(501)
            ],
        )
        for i in range(n):
            topic = i % TOPICS
            ts = start + step * i
            words = rnd.choices(WORDS, k=rnd.randint(6, 30))
            body = " ".join(words[:12]) + ". " + " ".join(words[12:]) + "."
            sender = f"@user{rnd.randint(0, 500)}:bench"
            keywords, length = keyword_text(body)
            batch.append(
                {
                    "event_id": f"$e{i}",
                    "room_id": f"!room{topic}:bench",
                    "topic": f"topic-{topic}",
                    "sender": sender,
                    "display_name": sender[1:7],
                    "body": body,
                    "html": None,
                    "ts": ts,
                    "reply_to": None,
                    "thread_root": None,
                    "edited": False,
                    "basis": "consent",
                    "keywords": keywords,
                    "words": length,
                }
            )
            acts.append(
                {
                    "event_id": f"$e{i}",
                    "room_id": f"!room{topic}:bench",
                    "kind": "message",
                    "who": sender[-12:],
                    "ts": ts,
                }
            )
            if len(batch) >= 20_000:
                await conn.execute(DigestMessage.__table__.insert(), batch)
                await conn.execute(DigestActivity.__table__.insert(), acts)
                batch, acts = [], []
        if batch:
            await conn.execute(DigestMessage.__table__.insert(), batch)
            await conn.execute(DigestActivity.__table__.insert(), acts)
    await db.close()


async def build_and_render(
    settings: Any, sessionmaker: Any, room_ids: dict[str, str], week: str
) -> dict[str, Any]:
    """Build one week's digest from the store and render its page (French), as the web
    app does on a request; the page's size and the key points found. Used here and by
    :mod:`benchmarks.scale` (inside the running service)."""
    import jinja2

    from bridge.site import TEMPLATES, DigestSite, LocalWeek
    from forum.i18n import I18n
    from forum.web.app import Renderer

    site = DigestSite(settings, sessionmaker, room_ids)
    digest = await site.week(week)
    renderer = Renderer(I18n(settings.forum.languages), lambda n: f"/static/{n}")
    renderer.add_loader(jinja2.FileSystemLoader(TEMPLATES))
    html = renderer.render(
        "digest_week.html",
        "fr",
        forum_name="f",
        forum_description="d",
        language_links=[],
        root="/",
        digest=LocalWeek(digest, settings.digest.timezone),
        newer=None,
        older=None,
        t=site.gettext("fr"),
        week_name=lambda week, capital=False: site.week_name("fr", week, capital=capital),
    )
    return {
        "page_bytes": len(html.encode()),
        "key_points": sum(len(t.key_points) for t in digest.topics),
    }


async def measure(url: str, what: str) -> dict[str, Any]:
    from bridge.repositories import DigestStore
    from bridge.weeks import week_bounds
    from forum.settings import parse_settings
    from forum.storage import Database

    settings = parse_settings(settings_data(), "bench", env={})
    db = await Database.open(url)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if what == "floor":
        start, end = week_bounds(WEEK, settings.digest.timezone)
        rows = 0
        async with db.sessionmaker() as s:
            async for partition in DigestStore(s).keyword_rows(start, end):
                rows += len(partition)
        out["rows"] = rows
    else:
        out |= await build_and_render(settings, db.sessionmaker, rooms(), WEEK)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_rss_mb"] = round(peak / 1024, 1)
    out["peak_rss_growth_mb"] = round((peak - base_rss) / 1024, 1)
    await db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--one", nargs=2, metavar=("URL", "WHAT"))
    parser.add_argument("--fill", nargs=2, metavar=("URL", "MESSAGES"))
    args = parser.parse_args()
    if args.fill:
        asyncio.run(fill(args.fill[0], int(args.fill[1])))
        return
    if args.one:
        print(json.dumps(asyncio.run(measure(args.one[0], args.one[1]))))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            url = f"sqlite+aiosqlite:///{tmp}/bench-{n}.db"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--fill", url, str(n)], check=True)
            fill_s = time.perf_counter() - t0
            row: dict[str, Any] = {"messages": n, "fill_seconds": round(fill_s, 1)}
            for what in ("floor", "build_render"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", url, what],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row[what] = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "digest",
                "week": WEEK,
                "topics": TOPICS,
                "targets": {"100000": {"seconds": 2, "peak_rss_mb": 150}},
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
