"""``forum digest build|export|backfill``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bridge.collector import DigestCollector
from bridge.digest import WeekDigest
from bridge.service import EXPORT_STATE_KEY, announcement, backfill
from bridge.site import DigestSite, export_site, summary_line
from bridge.store import DigestStore
from bridge.weeks import parse_week, previous_week, week_of
from forum.settings import Settings, database_url, forum_home, load_settings
from forum.storage import Database
from forum.storage.repositories import RoomRegistry

EXIT_USAGE = 2


async def _open(args: argparse.Namespace) -> tuple[Settings, Database, dict[str, str]]:
    settings = load_settings(args.config)
    db = await Database.open(database_url(settings, forum_home()))
    async with db.sessionmaker() as s:
        rooms = {r.key: r.room_id for r in await RoomRegistry(s).all()}
    return settings, db, rooms


async def cmd_build(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    week = args.week or previous_week(datetime.now(UTC), settings.digest.timezone)
    try:
        parse_week(week)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    settings, db, rooms = await _open(args)
    try:
        async with db.sessionmaker() as s, s.begin():
            await DigestStore(s).publish(week)
        site = DigestSite(settings, db.sessionmaker, rooms, public_url=settings.web.public_url)
        digest = await site.week(week)
        if args.json:
            print(json.dumps(digest.to_json(), ensure_ascii=False, indent=2))
        else:
            t = site.gettext(settings.primary_language)
            print(f"{week}: {summary_line(digest, t)}")
            for topic in digest.topics:
                print(
                    f"  {topic.slug}: {len(topic.highlights)} highlight(s), "
                    f"{len(topic.key_points)} key point(s), {topic.messages} message(s), "
                    f"{topic.participants} participant(s), {topic.new_members} new member(s)"
                )
            if not args.week:
                now = week_of(datetime.now(UTC), settings.digest.timezone)
                print(f"(the last complete week; the week in progress is {now}: --week {now})")
        if args.announce:
            event_id = await _announce(settings, db, rooms, site, digest)
            print(f"announced in the announcements room ({event_id})", file=sys.stderr)
    finally:
        await db.close()
    return 0


async def _announce(
    settings: Settings, db: Database, rooms: dict[str, str], site: DigestSite, digest: WeekDigest
) -> str:
    """Post the week's summary in the announcements room as the moderation bot (as the
    schedule does), starting the embedded homeserver for it if ``forum run`` is not."""
    from forum.app import bot_credentials, embedded_homeserver, make_gateway

    home = forum_home()
    hs = None
    if settings.homeserver.mode == "embedded":
        embedded = embedded_homeserver(settings, home)
        if not embedded.running_elsewhere():
            embedded.prepare()
            await embedded.start()
            hs = embedded
    creds = bot_credentials(settings, home)["moderation"]
    gw = make_gateway(settings, db, settings.moderation_bot_id, creds, "forum moderation bot")
    try:
        await gw.login()
        plain, rich = announcement(settings, site, digest)
        return await gw.send_text(rooms["announcements"], plain, rich)
    finally:
        await gw.close()
        if hs is not None:
            await hs.stop()


async def cmd_export(args: argparse.Namespace) -> int:
    settings, db, rooms = await _open(args)
    try:
        site = DigestSite(settings, db.sessionmaker, rooms, public_url=settings.web.public_url)
        directory = await asyncio.to_thread(Path(args.directory).resolve)
        n = await export_site(site, directory)
        async with db.sessionmaker() as s, s.begin():
            await DigestStore(s).set_state(EXPORT_STATE_KEY, str(directory))
        print(f"exported {n} files to {directory}")
    finally:
        await db.close()
    return 0


async def cmd_backfill(args: argparse.Namespace) -> int:
    from forum.app import bot_credentials, make_gateway
    from forum.i18n import I18n

    settings, db, rooms = await _open(args)
    start = args.since or settings.digest.history_start
    if not start:
        print("error: set digest.history_start in the config or pass --since", file=sys.stderr)
        await db.close()
        return EXIT_USAGE
    since = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(settings.digest.timezone))
    home = forum_home()
    creds = bot_credentials(settings, home)
    gw = make_gateway(settings, db, settings.moderation_bot_id, creds["moderation"], "digest")
    try:
        await gw.login()
        collector = DigestCollector(
            settings,
            db.sessionmaker,
            gw,
            gw,
            rooms,
            I18n(settings.forum.languages),
            lambda: None,
        )
        n = await backfill(
            collector, gw, list(collector.rooms), since, progress=sys.stderr.isatty()
        )
        print(f"backfilled {n} events since {start}")
    finally:
        await gw.close()
        await db.close()
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``forum digest ...`` to the ``forum`` argument parser."""
    digest = subparsers.add_parser("digest", help="the weekly public digest")
    sub = digest.add_subparsers(dest="digest_command", required=True)
    p = sub.add_parser("build", help="build (and publish) one week's digest")
    p.add_argument("--week", help="ISO week like 2026-W48 (default: last complete week)")
    p.add_argument(
        "--announce",
        action="store_true",
        help="also post its summary in the announcements room, as the weekly schedule does",
    )
    p.add_argument("--json", action="store_true", help="print the digest as JSON")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("export", help="write the public site as static files")
    p.add_argument("directory")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("backfill", help="read room history back to digest.history_start")
    p.add_argument("--since", help="YYYY-MM-DD (default: digest.history_start)")
    p.set_defaults(func=cmd_backfill)
