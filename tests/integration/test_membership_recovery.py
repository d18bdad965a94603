"""Knocks that arrive while the service is down are answered when it starts again, and a
crowd of knocks is handled side by side, each person getting exactly one DM."""

from __future__ import annotations

import asyncio

import pytest

from forum.bots import bot_credentials, bot_gateway
from forum.settings import database_url
from forum.storage import Database
from tests.forum_fixtures import forum_data, settings_from
from tests.membership_helpers import (
    CHARTER_EN,
    CHARTER_FR,
    dm_invites,
    start_service,
    via,
    wait_bot_text,
    wait_dm,
)

pytestmark = pytest.mark.homeserver


async def test_knock_lost_in_a_crash_is_answered_at_start(synapse, make_user, tmp_path):
    """The knock was received (the sync token moved past it) but never handled, as in a
    crash: at the next start the bot finds the pending knock on the homeserver."""
    settings = settings_from(forum_data(synapse))
    home = tmp_path / "home"
    service = await start_service(synapse, settings, home)
    space = service.result.room_ids["space"]
    await service.stop()

    late = await make_user("late")
    await late.knock(space, "Bonjour, je voudrais rejoindre l'espace", via=via(service))
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

    again = await start_service(synapse, settings, home)
    try:
        room = await wait_dm(late, again, timeout=30)
        await wait_bot_text(late, room, again, CHARTER_FR, CHARTER_EN, timeout=30)
        assert dm_invites(late, again) == {room}
    finally:
        await again.stop()


async def test_crowd_of_knocks_each_gets_one_dm(synapse, make_user, tmp_path):
    settings = settings_from(forum_data(synapse))
    service = await start_service(synapse, settings, tmp_path / "home")
    try:
        space = service.result.room_ids["space"]
        people = await asyncio.gather(*(make_user(f"crowd{i}") for i in range(12)))
        await asyncio.gather(
            *(p.knock(space, "Bonjour, je voudrais participer", via=via(service)) for p in people)
        )
        rooms = await asyncio.gather(*(wait_dm(p, service, timeout=60) for p in people))
        await asyncio.gather(
            *(
                wait_bot_text(p, r, service, CHARTER_FR, CHARTER_EN, timeout=60)
                for p, r in zip(people, rooms, strict=True)
            )
        )
        for p, r in zip(people, rooms, strict=True):
            assert dm_invites(p, service) == {r}
        assert len(set(rooms)) == len(people)
    finally:
        await service.stop()
