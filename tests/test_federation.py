"""Two real Synapse servers federating on loopback."""

from __future__ import annotations

import pytest

from tests.conftest import MakeUserOn, SynapsePair

pytestmark = pytest.mark.federation


async def test_two_servers_federate(synapse_pair: SynapsePair, make_user_on: MakeUserOn) -> None:
    a, b = synapse_pair
    alice = await make_user_on(a, "alice")
    bob = await make_user_on(b, "bob")
    room_id = await alice.create_room(preset="public_chat", room_alias_name="agora")
    alias = f"#agora:{a.server_name}"

    assert await bob.join(alias) == room_id
    await alice.wait_for(
        lambda e: (
            e["room_id"] == room_id
            and e["type"] == "m.room.member"
            and e["state_key"] == bob.user_id
            and e["content"]["membership"] == "join"
        )
    )
    sent = await alice.send_text(room_id, "Bienvenue, Bob")
    assert (await bob.wait_for_text(room_id, "Bienvenue, Bob"))["event_id"] == sent
    reply = await bob.send_text(room_id, "Merci Alice")
    assert (await alice.wait_for_text(room_id, "Merci Alice"))["event_id"] == reply
