"""``forum members list|show`` on real databases (SQLite and PostgreSQL), and the pure
text helpers of the membership bot."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import tomli_w

from forum.consent import ConsentRecords
from forum.storage import Database
from moderation.membership.cli import add_commands
from moderation.membership.repositories import People
from tests.harness import forum_data


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forum")
    p.add_argument("--config", "-c")
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


async def run(config, *argv: str) -> int:
    args = parser().parse_args(["--config", str(config), *argv])
    return await args.func(args)


async def test_members_list_and_show(db: Database, db_url, tmp_path, capsys, monkeypatch):
    hs = SimpleNamespace(url="http://127.0.0.1:9", server_name="forum.test")
    data = forum_data(hs, db_url=db_url)  # type: ignore[arg-type]
    config = tmp_path / "forum.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    monkeypatch.setenv("FORUM_HOME", str(tmp_path))
    async with db.sessionmaker() as s, s.begin():
        records = ConsentRecords(s)
        await records.add(
            "@amina:forum.test",
            "charter",
            True,
            method="reply",
            charter_version=1,
            text_sha256="a" * 64,
            event_id="$1",
        )
        await records.add(
            "@amina:forum.test",
            "publication",
            True,
            method="reaction",
            charter_version=1,
            event_id="$2",
        )
        await records.add("@amina:forum.test", "publication", False, method="command")
        row = await People(s).create("@amina:forum.test", "knock", "fr")
        row.step, row.dm_room_id = "member", "!dm:forum.test"
    assert await run(config, "members", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "user_id": "@amina:forum.test",
            "step": "member",
            "charter_version": 1,
            "publication": False,
            "muted": False,
            "pending_charter_version": None,
        }
    ]
    assert await run(config, "members", "list") == 0
    assert "@amina:forum.test\tmember\tcharter v1\tpublication no" in capsys.readouterr().out
    assert await run(config, "members", "show", "amina", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(r["scope"], r["granted"], r["method"]) for r in shown["consent_records"]] == [
        ("charter", True, "reply"),
        ("publication", True, "reaction"),
        ("publication", False, "command"),
    ]
    assert shown["membership"]["dm_room_id"] == "!dm:forum.test"
    assert await run(config, "members", "show", "@amina:forum.test") == 0
    text = capsys.readouterr().out
    assert "publication withdrawn (command)" in text
    # A first "no" is a refusal, not a withdrawal.
    async with db.sessionmaker() as s, s.begin():
        await ConsentRecords(s).add("@kossi:forum.test", "publication", False, method="reply")
    assert await run(config, "members", "show", "@kossi:forum.test") == 0
    text = capsys.readouterr().out
    assert "publication refused (reply)" in text
    assert await run(config, "members", "show", "@nobody:forum.test") == 1
    assert "unknown user" in capsys.readouterr().out
