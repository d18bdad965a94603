"""A person of another homeserver goes through the same flow: knock over federation,
the charter in a DM, acceptance, invites."""

from __future__ import annotations

import pytest

from tests.harness import CHARTER_EN, PUBLICATION_Q, ForumStarter, join_invited

pytestmark = [pytest.mark.homeserver, pytest.mark.federation]


async def test_remote_user_knocks_accepts_and_is_invited(synapse_pair, make_user_on, tmp_path):
    forum_hs, remote_hs = synapse_pair.a, synapse_pair.b
    async with ForumStarter(forum_hs, lambda: tmp_path) as start_forum:
        service = await start_forum("membership")
        remote = await make_user_on(remote_hs, "remote")
        space = service.ctx.rooms["space"]
        await remote.knock(space, "Hello, I would like to join", via=[forum_hs.server_name])
        room = await service.wait_dm(remote, timeout=30)
        charter = await service.wait_bot_text(remote, room, CHARTER_EN, timeout=30)
        mark = remote.mark()
        await remote.react(room, charter["event_id"], "✅")
        asked = await service.wait_bot_text(remote, room, *PUBLICATION_Q, timeout=30, after=mark)
        await remote.react(room, asked["event_id"], "👍")
        for room_id in [space, *service.ctx.rooms.topic_ids.values()]:
            await remote.wait_for_invite(room_id, timeout=30)
        await join_invited(remote, space, [forum_hs.server_name])
        records = await service.history(remote.user_id)
        assert [(r.scope, r.granted, r.method) for r in records] == [
            ("charter", True, "reaction"),
            ("publication", True, "reaction"),
        ]
