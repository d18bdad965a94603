"""Encrypted direct chats with the bots (issue #13, point 1), through an encrypting client
(nio with its Olm machine, as Element X encrypts every new DM) on the real Synapse: the
welcome bot's whole consent flow, ``!mes-donnees``, a report to the moderation bot, a
restart of the service in the middle, and a message whose key was withheld from the bot.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from tests.harness import CHARTER_EN, PUBLICATION_Q, Forum, ForumStarter
from tests.matrix_user import Event, TestUser

pytestmark = pytest.mark.homeserver

ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


async def open_encrypted_dm(user: TestUser, bot: str) -> str:
    """A new DM as Element X opens it: encrypted from its first event, ``is_direct``."""
    return await user.create_room(
        is_direct=True,
        invite=[bot],
        preset="trusted_private_chat",
        initial_state=[ENCRYPTION],
    )


def from_bot(room: str, bot: str, *needles: str) -> Any:
    """A message of ``bot`` in ``room`` that was encrypted and reads one of ``needles``."""

    def match(e: Event) -> bool:
        body = str(e["content"].get("body", ""))
        return (
            e["room_id"] == room
            and e["sender"] == bot
            and e["type"] == "m.room.message"
            and e.get("_encrypted") is True
            and any(n in body for n in needles)
        )

    return match


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter) -> Forum:
    return await start_module_forum("membership", "moderation", moderator=True)


async def test_consent_flow_in_an_encrypted_dm(forum: Forum):
    """A newcomer opens an encrypted DM with the welcome bot and goes through language,
    charter and publication consent answering in encrypted messages; the bot's questions
    come encrypted; she is invited and her consent is recorded."""
    bot = forum.membership_bot_id
    ama = await forum.user("ama", encrypted=True)
    room = await open_encrypted_dm(ama, bot)
    await ama.wait_for(from_bot(room, bot, "Which language"), 30)
    mark = ama.mark()
    await ama.send_text(room, "English")
    charter = await ama.wait_for(from_bot(room, bot, CHARTER_EN), 20, after=mark)
    mark = ama.mark()
    await ama.send_text(room, "I accept")
    await ama.wait_for(from_bot(room, bot, *PUBLICATION_Q), 20, after=mark)
    await ama.send_text(room, "yes")
    await forum.wait_invites(ama)
    history = await forum.history(ama.user_id)
    assert [(r.scope, r.granted) for r in history] == [("charter", True), ("publication", True)]
    assert charter["content"]["formatted_body"]
