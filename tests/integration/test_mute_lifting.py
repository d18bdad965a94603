"""A timed mute is lifted in every room, even when one room's change fails at first: its
record stays until every room's power levels were changed, and the timer tries again."""

from __future__ import annotations

from typing import Any

import pytest

from forum.errors import Forbidden
from moderation.bot.actions import MUTED_LEVEL
from moderation.bot.repositories import Mutes
from tests.harness import ForumStarter, eventually

pytestmark = pytest.mark.homeserver


async def test_a_timed_mute_whose_lifting_failed_in_one_room_is_lifted_later(
    start_forum: ForumStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write of the power levels that lifts the mute in one topic room is
    refused: the mute stays recorded, and a later look of the timer lifts it there too."""
    forum = await start_forum("moderation", moderator=True, moderator_joins="*")
    loud = await forum.member("loud")
    gateway = forum.bot.actions.gateway
    real_put_state = gateway.put_state
    failing_room = forum.room()
    refused: list[str] = []

    async def put_state(
        room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        lifting = (content.get("users") or {}).get(loud.user_id) != MUTED_LEVEL
        if (
            room_id == failing_room
            and event_type == "m.room.power_levels"
            and lifting
            and not refused
        ):
            refused.append(room_id)  # the homeserver refuses this one write
            raise Forbidden("M_FORBIDDEN: injected refusal", status=403, errcode="M_FORBIDDEN")
        return await real_put_state(room_id, event_type, content, state_key)

    monkeypatch.setattr(gateway, "put_state", put_state)
    await forum.command(f"!mute {loud.user_id} 2s trop fort")
    rooms = list(forum.forum_rooms)
    assert failing_room in rooms

    async def was_refused() -> bool:
        return bool(refused)

    await eventually(was_refused, 30, "the first lifting refused in one room")

    async def lifted() -> bool:
        return all([await forum.power(room, loud.user_id) == 0 for room in rooms])

    await eventually(lifted, 40, "the mute lifted in every room, the refused one included")

    async def forgotten() -> bool:
        async with forum.ctx.db.sessionmaker() as s:
            return await Mutes(s).get(loud.user_id) is None

    await eventually(forgotten, 20, "the mute's record removed once lifted everywhere")


async def test_a_mute_given_again_while_the_last_one_is_being_lifted_is_lifted_too(
    start_forum: ForumStarter,
) -> None:
    """A mute is given again (a resumed !mute after a restart) while the timer is lifting
    the last one (seen in the long fault run): the lifting removed the new record when it
    finished, the new mute's room changes came after, and two rooms stayed muted with no
    record left to lift them. A mute and its lifting wait for each other: the new mute is
    recorded, applied and later lifted by the timer in every room."""
    import asyncio
    from datetime import timedelta

    forum = await start_forum("moderation", moderator=True, moderator_joins="*")
    again = await forum.member("again")
    actions = forum.bot.actions
    rooms = list(forum.forum_rooms)
    await actions.mute(again.user_id, actions.clock() + timedelta(seconds=30), "1", "@t:x")
    lifting = asyncio.create_task(actions.unmute(again.user_id))  # the timer's lifting
    await asyncio.sleep(0)  # it has read the record and is changing the rooms
    until = actions.clock() + timedelta(seconds=2)
    await actions.mute(again.user_id, until, "2", "@t:x")  # the resumed command
    await lifting

    async def recorded() -> bool:
        async with forum.ctx.db.sessionmaker() as s:
            return await Mutes(s).get(again.user_id) is not None

    async def lifted() -> bool:
        levels = [await forum.power(room, again.user_id) for room in rooms]
        return all(level == 0 for level in levels) and not await recorded()

    await eventually(lifted, 40, "the second mute lifted by the timer in every room")
