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
