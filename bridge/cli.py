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
from bridge.export import ExportRefused, check_target
from bridge.repositories import DigestStore
from bridge.service import announcement, backfill
from bridge.site import DigestSite, export_site, summary_line
from bridge.weeks import parse_week, previous_week, week_of
from forum.i18n import I18n
from forum.kit import OperatorKit, command_group, load

EXIT_USAGE = 2


async def cmd_build(args: argparse.Namespace) -> int:
    settings = load(args)
    week = args.week or previous_week(datetime.now(UTC), settings.digest.timezone)
    try:
        parse_week(week)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async with OperatorKit.open(args, settings) as kit:
        if settings.digest.require_release and not args.without_review:
            async with kit.db.sessionmaker() as s:
                review = await DigestStore(s).review(week)
            if review is None or review.released_by is None:
                print(
                    f"error: the week {week} waits for the moderators' review "
                    "(digest.require_release): they post its preview with !apercu / !preview "
                    "in the management room and publish it with !publier / !release. To "
                    "publish it unreviewed, on your own responsibility: --without-review",
                    file=sys.stderr,
                )
                return 1
        rooms = await kit.rooms()
        async with kit.db.sessionmaker() as s, s.begin():
            await DigestStore(s).publish(week)
        site = DigestSite(settings, kit.db.sessionmaker, rooms, public_url=settings.web.public_url)
        digest = await site.week(week)
        if args.json:
            print(json.dumps(digest.to_json(), ensure_ascii=False, indent=2))
        else:
            gettext = site.gettext(settings.primary_language)
            print(f"{week}: {summary_line(digest, gettext)}")
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
            # As the schedule does, as the moderation bot; the kit starts the embedded
            # homeserver for it if ``forum run`` is not running.
            gateway = await kit.gateway("moderation")
            plain, rich = announcement(settings, site, digest)
            event_id = await gateway.send_text(rooms["announcements"], plain, rich)
            print(f"announced in the announcements room ({event_id})", file=sys.stderr)
    return 0


async def cmd_export(args: argparse.Namespace) -> int:
    """Export once. The running service keeps only ``digest.export_dir`` up to date."""
    directory = await asyncio.to_thread(Path(args.directory).resolve)
    async with OperatorKit.open(args) as kit:
        settings = kit.settings
        try:
            await asyncio.to_thread(check_target, directory, home=kit.home, force=args.force)
        except ExportRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        site = DigestSite(
            settings, kit.db.sessionmaker, await kit.rooms(), public_url=settings.web.public_url
        )
        try:
            n = await export_site(site, directory, home=kit.home, force=args.force)
        except ExportRefused as exc:  # something appeared there meanwhile
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    print(f"exported {n} files to {directory}")
    configured = settings.digest.export_dir
    if not configured or await asyncio.to_thread(Path(configured).resolve) != directory:
        print(
            "(exported once: the running service keeps only digest.export_dir up to date)",
            file=sys.stderr,
        )
    return 0


async def cmd_backfill(args: argparse.Namespace) -> int:
    settings = load(args)
    start = args.since or settings.digest.history_start
    if not start:
        print("error: set digest.history_start in the config or pass --since", file=sys.stderr)
        return EXIT_USAGE
    since = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(settings.digest.timezone))
    async with OperatorKit.open(args, settings) as kit:
        gateway = await kit.gateway("moderation", "digest")
        collector = DigestCollector(
            settings,
            kit.db.sessionmaker,
            gateway,
            gateway,
            await kit.rooms(),
            I18n(settings.forum.languages),
            lambda: None,
        )
        n = await backfill(
            collector, gateway, list(collector.rooms), since, progress=sys.stderr.isatty()
        )
    print(f"backfilled {n} events since {start}")
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``forum digest ...`` to the ``forum`` argument parser."""
    sub = command_group(subparsers, "digest", "the weekly public digest")
    p = sub.add_parser("build", help="build (and publish) one week's digest")
    p.add_argument("--week", help="ISO week like 2026-W48 (default: last complete week)")
    p.add_argument(
        "--announce",
        action="store_true",
        help="also post its summary in the announcements room, as the weekly schedule does",
    )
    p.add_argument("--json", action="store_true", help="print the digest as JSON")
    p.add_argument(
        "--without-review",
        action="store_true",
        help="publish even though the moderators have not released the week "
        "(digest.require_release)",
    )
    p.set_defaults(func=cmd_build)
    p = sub.add_parser(
        "export",
        help="write the public site as static files, once (into an empty directory, or "
        "one it exported to before)",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument(
        "--force",
        action="store_true",
        help="write beside files the export did not write (they are kept)",
    )
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("backfill", help="read room history back to digest.history_start")
    p.add_argument("--since", help="YYYY-MM-DD (default: digest.history_start)")
    p.set_defaults(func=cmd_backfill)
