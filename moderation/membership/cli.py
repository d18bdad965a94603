"""``forum members list [--json]`` and ``forum members show USER [--json]``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from forum.consent import ConsentRecords
from forum.kit import OperatorKit, command_group
from forum.storage import Database

from .export import export_person
from .repositories import People


def add_commands(sub: Any) -> None:
    msub = command_group(sub, "members", "members and their consents")
    lst = msub.add_parser("list", help="every person the membership bot knows, with status")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_list)
    show = msub.add_parser("show", help="one person: status and full consent history")
    show.add_argument("user", help="full Matrix id, or a local name on this homeserver")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)


async def list_members(db: Database) -> list[dict[str, Any]]:
    async with db.sessionmaker() as s:
        statuses = await ConsentRecords(s).statuses()
        people = {p.user_id: p for p in await People(s).all()}
    out = []
    for user_id in sorted(set(statuses) | set(people)):
        st, p = statuses.get(user_id), people.get(user_id)
        out.append(
            {
                "user_id": user_id,
                "step": p.step if p else None,
                "charter_version": st.charter_version if st else None,
                "publication": bool(st and st.publication),
                "muted": bool(p and p.muted),
                "pending_charter_version": p.reconsent_version if p else None,
            }
        )
    return out


async def cmd_list(args: argparse.Namespace) -> int:
    async with OperatorKit.open(args) as kit:
        rows = await list_members(kit.db)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no members")
        return 0
    for r in rows:
        charter = f"v{r['charter_version']}" if r["charter_version"] else "-"
        pub = "yes" if r["publication"] else "no"
        print(f"{r['user_id']}\t{r['step'] or '-'}\tcharter {charter}\tpublication {pub}")
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    async with OperatorKit.open(args) as kit:
        user = kit.settings.user_id(args.user)
        data = await export_person(kit.db.sessionmaker, user)
    if data["membership"] is None and not data["consent_records"]:
        print(f"unknown user {user}")
        return 1
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    st = data["status"]
    print(
        f"{user}: step {st['step']}, charter {st['charter_version'] or '-'}, "
        f"publication {'yes' if st['publication'] else 'no'}"
    )
    held: dict[str, bool] = {}  # scope -> granted by the record before
    for r in data["consent_records"]:
        # A "no" after a "yes" withdraws consent; a first "no" refuses it.
        what = "granted" if r["granted"] else "withdrawn" if held.get(r["scope"]) else "refused"
        held[r["scope"]] = bool(r["granted"])
        version = f" v{r['charter_version']}" if r["charter_version"] else ""
        print(f"  {r['created_at']}  {r['scope']}{version} {what} ({r['method']})")
    return 0
