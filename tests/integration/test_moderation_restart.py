"""Timed mutes survive a restart of the whole service and expire on time; the audit log
is read by operators with ``forum moderation log`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import pytest
import tomli_w

from forum.app import Service
from forum.storage.repositories import ProcessedEvents
from moderation.bot import add_commands
from moderation.bot.bot import PENDING_COMMAND
from moderation.bot.repositories import Audit, Mutes, State
from tests.harness import ForumStarter, eventually, is_reply

pytestmark = pytest.mark.homeserver


async def nothing_pending(service: Service) -> None:
    """Wait until no command is stored as pending (the last one ran to its end)."""
    assert service.ctx is not None

    async def none_pending() -> bool:
        async with service.ctx.db.sessionmaker() as s:
            return not await State(s).with_prefix(PENDING_COMMAND)

    await eventually(none_pending, 10, "no command pending", interval=0.05)


async def test_timed_mute_expires_across_a_restart(
    start_forum: ForumStarter, db_url, tmp_path, capsys
):
    home = tmp_path / "home"
    forum = await start_forum(
        "moderation", moderator=True, moderator_joins="*", db_url=db_url, home=home
    )
    mod = forum.mod
    data = forum.data
    person = await forum.member("timed")
    await forum.command(f"!mute {person.user_id} 20s trop de messages")
    for room in forum.forum_rooms:
        assert await forum.power(room, person.user_id) == -1
    await start_forum.stop(forum)

    # Started again on the same database: provisioning reconciles the power levels and
    # keeps the mute (it used to replace the whole ``users`` map, so every restart lifted
    # every mute for the moments before the bot muted again, and the person could post);
    # the bot lifts the mute by itself at the stored deadline.
    mark = mod.mark()
    second = await start_forum(
        "moderation", data=data, home=home, moderator=mod, moderator_joins=()
    )
    await mod.send_text(forum.topic, "après le redémarrage")
    sentinel = await mod.wait_for_text(forum.topic, "après le redémarrage", 20, after=mark)
    written = [
        e["content"].get("users", {})
        for e in mod.events[mark : mod.events.index(sentinel)]
        if e["room_id"] in forum.forum_rooms and e["type"] == "m.room.power_levels"
    ]
    lifted = [users for users in written if users.get(person.user_id) != -1]
    assert not lifted, f"the restart lifted the mute: {lifted}"
    async with second.ctx.db.sessionmaker() as s:
        mute = await Mutes(s).get(person.user_id)
    assert mute is not None
    assert mute.until is not None
    assert datetime.now(UTC) < mute.until, "the restart took longer than the mute"
    assert await forum.power(forum.topic, person.user_id) == -1
    await mod.wait_for(
        lambda e: (
            e["type"] == "m.room.message"
            and e["room_id"] == forum.mgmt
            and person.user_id in e["content"]["body"]
            and "expiré" in e["content"]["body"]
        ),
        40,
        after=mark,
    )
    for room in forum.forum_rooms:
        assert await forum.power(room, person.user_id) == 0
    await person.send_text(forum.topic, "je peux reparler")

    # The operator's view of the audit log.
    config = tmp_path / "forum.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["--config", str(config), "moderation", "log", "--user", person.user_id, "--json"]
    )
    capsys.readouterr()
    assert await args.func(args) == 0
    entries = json.loads(capsys.readouterr().out)
    actions = [(e["action"], e["actor"], e["source"]) for e in entries]
    assert actions == [
        ("mute:20s", mod.user_id, "command"),
        ("unmute", forum.bot_id, "timer"),
    ]
    assert entries[0]["reason"] == "trop de messages"
    assert len(entries[0]["rooms"]) == len(forum.forum_rooms)
    assert entries[0]["event_id"]
    args = parser.parse_args(["--config", str(config), "moderation", "log"])
    assert await args.func(args) == 0
    text = capsys.readouterr().out
    assert "mute:20s" in text
    assert person.user_id in text


async def test_a_command_cut_short_by_a_crash_runs_at_the_next_start(
    start_forum: ForumStarter, tmp_path
):
    """The bot stores a command before its event counts as handled; a command whose event
    was handled but whose actions a crash cut short runs when the bot starts again."""
    home = tmp_path / "home"
    forum = await start_forum("moderation", moderator=True, moderator_joins="*", home=home)
    mod = forum.mod
    # A command that ran to the end leaves nothing pending.
    await forum.command("!help")
    await nothing_pending(forum.service)
    person = await forum.member("cut")
    await start_forum.stop(forum)

    # The state a crash leaves: the command event handled (its sync token is past
    # it), its actions not done, the command stored as pending.
    event_id = await mod.send_text(forum.mgmt, f"!ban {person.user_id} spam")
    # written as an operator's tool would (the stopped service's writes are fenced: it
    # no longer holds the service lease)
    forum.ctx.db.guard.disarm()
    async with forum.ctx.db.sessionmaker() as s, s.begin():
        await ProcessedEvents(s).mark(forum.bot_id, event_id)
        await State(s).set(
            PENDING_COMMAND + event_id,
            {"sender": mod.user_id, "body": f"!ban {person.user_id} spam", "ts": 0},
        )
    mark = mod.mark()
    second = await start_forum(
        "moderation", data=forum.data, home=home, moderator=mod, moderator_joins=()
    )
    await forum.wait_membership(person.user_id, "ban", after=mark, timeout=30)
    echo = await mod.wait_for(is_reply(forum.mgmt, forum.bot_id, event_id), 20, after=mark)
    assert person.user_id in echo["content"]["body"]
    await nothing_pending(second.service)
    async with second.ctx.db.sessionmaker() as s:
        bans = [e for e in await Audit(s).entries(person.user_id) if e.action == "ban"]
    assert len(bans) == 1  # run once, not once more by a replay
