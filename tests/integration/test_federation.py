"""Two real Synapse servers federating on loopback."""

from __future__ import annotations

import pytest

from tests.conftest import MakeUserOn, SynapsePair
from tests.harness import ForumStarter, is_membership

pytestmark = pytest.mark.federation


async def test_two_servers_federate(synapse_pair: SynapsePair, make_user_on: MakeUserOn) -> None:
    a, b = synapse_pair
    alice = await make_user_on(a, "alice")
    bob = await make_user_on(b, "bob")
    room_id = await alice.create_room(preset="public_chat", room_alias_name="agora")
    alias = f"#agora:{a.server_name}"

    assert await bob.join(alias) == room_id
    await alice.wait_for(is_membership(room_id, bob.user_id, "join"))
    sent = await alice.send_text(room_id, "Bienvenue, Bob")
    assert (await bob.wait_for_text(room_id, "Bienvenue, Bob"))["event_id"] == sent
    reply = await bob.send_text(room_id, "Merci Alice")
    assert (await alice.wait_for_text(room_id, "Merci Alice"))["event_id"] == reply


async def test_remote_user_sees_the_space_and_knocks(
    synapse_pair: SynapsePair, make_user_on: MakeUserOn, tmp_path
) -> None:
    """A user of the second server sees the forum's Space hierarchy and knocks on a topic."""
    a, b = synapse_pair
    async with ForumStarter(a, lambda: tmp_path) as start_forum:
        service = await start_forum()
        settings = service.settings
        ids = service.rooms
        remote = await make_user_on(b, "remote")
        # Joining the public lobby by alias brings the forum to server b.
        await remote.join(settings.alias_id(settings.rooms.lobby.alias))
        # Server b is not in the Space: it asks server a (MSC4235 `via`, enabled on the
        # embedded homeserver).
        space = ids["space"].replace("!", "%21").replace(":", "%3A")
        found = await remote.request(
            "GET",
            f"/_matrix/client/v1/rooms/{space}/hierarchy",
            params=[("org.matrix.msc4235.via", a.server_name)],
        )
        rooms = {r["room_id"]: r for r in found["rooms"]}
        topic_id = ids["topic:egalite-filles"]
        assert rooms[topic_id]["name"] == "Égalité des filles et des jeunes femmes"
        assert rooms[topic_id]["join_rule"] == "knock_restricted"

        moderation_bot = service.ctx.moderation_gateway
        before = await moderation_bot.members(topic_id, membership="knock")
        assert remote.user_id not in before
        await remote.knock(
            topic_id, "Je travaille sur la scolarisation des filles", via=[a.server_name]
        )
        knocks = await moderation_bot.members(topic_id, membership="knock")
        assert knocks[remote.user_id]["reason"] == "Je travaille sur la scolarisation des filles"
