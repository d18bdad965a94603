"""Knocks that arrive while the service is down are answered when it starts again, and a
crowd of knocks is handled side by side, each person getting exactly one DM."""

from __future__ import annotations

import asyncio

import pytest

from forum.bots import bot_credentials, bot_gateway
from forum.settings import database_url
from forum.storage import Database
from tests.harness import CHARTER_EN, CHARTER_FR, ForumStarter

pytestmark = pytest.mark.homeserver


async def test_knock_lost_in_a_crash_is_answered_at_start(
    start_forum: ForumStarter, make_user, tmp_path
):
    """The knock was received (the sync token moved past it) but never handled, as in a
    crash: at the next start the bot finds the pending knock on the homeserver."""
    home = tmp_path / "home"
    service = await start_forum("membership", home=home)
    settings = service.settings
    space = service.rooms["space"]
    await start_forum.stop(service)

    late = await make_user("late")
    await late.knock(space, "Bonjour, je voudrais rejoindre l'espace", via=service.via)
    db = await Database.open(database_url(settings, home))
    try:
        bot = bot_gateway(
            settings, db, "membership", bot_credentials(settings, home)["membership"], "test"
        )
        await bot.login()
        await bot.load_token()
        await bot.sync_once(0)  # no handlers: the knock is skipped, the token stored
        await bot.close()
    finally:
        await db.close()

    again = await start_forum("membership", data=service.data, home=home)
    try:
        room = await again.wait_dm(late, timeout=30)
        await again.wait_bot_text(late, room, CHARTER_FR, CHARTER_EN, timeout=30)
        assert again.dm_invites(late) == {room}
    finally:
        await start_forum.stop(again)


async def test_crowd_of_knocks_each_gets_one_dm(start_forum: ForumStarter, make_user):
    service = await start_forum("membership")
    try:
        space = service.rooms["space"]
        people = await asyncio.gather(*(make_user(f"crowd{i}") for i in range(12)))
        await asyncio.gather(
            *(p.knock(space, "Bonjour, je voudrais participer", via=service.via) for p in people)
        )
        rooms = await asyncio.gather(*(service.wait_dm(p, timeout=60) for p in people))
        await asyncio.gather(
            *(
                service.wait_bot_text(p, r, CHARTER_FR, CHARTER_EN, timeout=60)
                for p, r in zip(people, rooms, strict=True)
            )
        )
        for p, r in zip(people, rooms, strict=True):
            assert service.dm_invites(p) == {r}
        assert len(set(rooms)) == len(people)
    finally:
        await start_forum.stop(service)


async def test_dm_created_by_a_run_killed_before_recording_it_is_the_one_used(
    start_forum: ForumStarter, make_user, tmp_path
):
    """The bot created a person's DM and was killed (SIGKILL) before recording it in
    ``m.direct``; the person had already joined it. At the next start the same knock is
    answered in that DM: no second DM (seen in the fault suite: people were left waiting
    in a DM the bot had forgotten, and got a second one)."""
    home = tmp_path / "home"
    service = await start_forum("membership", home=home)
    settings = service.settings
    space = service.rooms["space"]
    await start_forum.stop(service)

    person = await make_user("orphan")
    db = await Database.open(database_url(settings, home))
    try:
        bot = bot_gateway(
            settings, db, "membership", bot_credentials(settings, home)["membership"], "test"
        )
        await bot.login()
        payload = {"preset": "trusted_private_chat", "is_direct": True, "invite": [person.user_id]}
        orphan = await bot.create_room(payload)  # create_dm's first half, then the kill
        await bot.close()
    finally:
        await db.close()
    await person.wait_for_invite(orphan)
    await person.join(orphan)
    await person.knock(space, "Bonjour, je voudrais participer", via=service.via)

    again = await start_forum("membership", data=service.data, home=home)
    try:
        await again.wait_bot_text(person, orphan, CHARTER_FR, CHARTER_EN, timeout=30)
        assert again.dm_invites(person) == {orphan}
        assert (await again.person(person.user_id)).dm_room_id == orphan
    finally:
        await start_forum.stop(again)
