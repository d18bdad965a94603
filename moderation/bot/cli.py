"""``forum moderation log [--user USER] [--json]``: the audit log for operators."""

from __future__ import annotations

import argparse
import json
from typing import Any

from forum.kit import OperatorKit, command_group

from .repositories import Audit


async def cmd_log(args: argparse.Namespace) -> int:
    async with OperatorKit.open(args) as kit, kit.db.sessionmaker() as s:
        entries = await Audit(s).entries(args.user, limit=args.limit)
    if args.json:
        print(json.dumps([e.as_json() for e in entries], ensure_ascii=False, indent=2))
        return 0
    for e in entries:
        dry = " [dry run]" if e.dry_run else ""
        reason = f" — {e.reason}" if e.reason else ""
        print(
            f"{e.created_at:%Y-%m-%d %H:%M:%S} {e.action}{dry} {e.target} by {e.actor} "
            f"({e.source}, {len(e.rooms)} room(s)){reason}"
        )
    if not entries:
        print("no moderation action recorded")
    return 0


def add_commands(subparsers: Any) -> None:
    sub = command_group(subparsers, "moderation", "the moderation bot")
    p = sub.add_parser("log", help="show the moderation audit log")
    p.add_argument("--user", help="only actions about (or by) this user id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=1000, help="at most this many entries")
    p.set_defaults(func=cmd_log)
