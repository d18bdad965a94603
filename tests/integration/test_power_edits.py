"""Both bots edit ``m.room.power_levels``: the moderation bot (mutes, locks) and the
membership bot (a member whose charter lapsed loses the right to post). Edits made at the
same time in the same rooms must all land: none may overwrite another."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import ForumStarter

pytestmark = pytest.mark.homeserver


async def test_concurrent_mutes_of_both_bots_all_land(start_forum: ForumStarter) -> None:
    """The moderation bot mutes three people (as ``!mute`` does) while the membership bot
    mutes three others (as a lapsed charter does), all at the same moment: afterwards all
    six are muted in every topic room."""
    forum = await start_forum("membership", "moderation", moderator=True, moderator_joins="*")
    # Power levels name anyone, member or not: six accounts of this server.
    people = [f"@someone{i}:{forum.server}" for i in range(6)]
    by_moderation, by_membership = people[:3], people[3:]
    bot = forum.bot
    membership = forum.feature("membership")
    await asyncio.gather(
        *(
            bot.sanctions.mute(
                p, None, "test", actor=forum.mod.user_id, source="command", event_id=None
            )
            for p in by_moderation
        ),
        *(membership.shared.set_muted(p, True) for p in by_membership),
    )
    rooms = list(forum.ctx.rooms.topic_ids.values())
    levels = {room: {p: await forum.power(room, p) for p in people} for room in rooms}
    lost = {room: [u for u, lvl in seen.items() if lvl != -1] for room, seen in levels.items()}
    assert not any(lost.values()), f"mutes overwritten: {lost}"
    # And both lift at the same moment too.
    await asyncio.gather(
        *(bot.actions.unmute(p) for p in by_moderation),
        *(membership.shared.set_muted(p, False) for p in by_membership),
    )
    still = {room: [p for p in people if await forum.power(room, p) != 0] for room in rooms}
    assert not any(still.values()), f"unmutes overwritten: {still}"
