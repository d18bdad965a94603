"""Encrypted direct chats with the bots (issue #13, point 1), through an encrypting client
(nio with its Olm machine, as Element X encrypts every new DM) on the real Synapse: the
welcome bot's whole consent flow, ``!mes-donnees``, a report to the moderation bot, a
restart of the service in the middle, and a message whose key was withheld from the bot.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nio.crypto.attachments import decrypt_attachment

from bridge.models import QuotePermission
from tests.harness import CHARTER_EN, PUBLICATION_Q, Forum, ForumStarter, eventually, is_membership
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


async def quote_granted(forum: Forum, target: str) -> bool:
    async with forum.ctx.db.sessionmaker() as s:
        row = await s.get(QuotePermission, target)
        return row is not None and row.granted is True


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter) -> Forum:
    return await start_module_forum("membership", "moderation", "digest", moderator=True)


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
    assert charter["content"]["formatted_body"]
    mark = ama.mark()
    await ama.react(room, charter["event_id"], "✅")  # an encrypted reaction
    await ama.wait_for(from_bot(room, bot, *PUBLICATION_Q), 20, after=mark)
    await ama.send_text(room, "no")
    await forum.wait_invites(ama)
    history = await forum.history(ama.user_id)
    assert [(r.scope, r.granted) for r in history] == [("charter", True), ("publication", False)]
    # what the bot stored of the reaction: its clear form, not the encrypted event
    assert history[0].method == "reaction"

    # !mes-donnees: the summary and the JSON file come encrypted; the file too is an
    # encrypted attachment that only she can open.
    mark = ama.mark()
    await ama.send_text(room, "!mes-donnees")
    await ama.wait_for(from_bot(room, bot, "everything stored about you"), 20, after=mark)
    file_ev = await ama.wait_for(
        lambda e: (
            e["room_id"] == room
            and e.get("_encrypted") is True
            and e["content"].get("msgtype") == "m.file"
        ),
        20,
        after=mark,
    )
    attachment = file_ev["content"]["file"]
    assert "url" not in file_ev["content"]
    server, media_id = attachment["url"].removeprefix("mxc://").split("/", 1)
    cipher = await ama.download(server, media_id)
    assert b"consent_records" not in cipher
    data = json.loads(
        decrypt_attachment(
            cipher, attachment["key"]["k"], attachment["hashes"]["sha256"], attachment["iv"]
        )
    )
    assert data["user_id"] == ama.user_id
    assert [r["scope"] for r in data["consent_records"]] == ["charter", "publication"]

    # The digest's quote question comes encrypted in the same DM; an encrypted reply
    # answers it.
    topic = forum.room()
    await forum.join(ama, topic)
    await forum.join(forum.mod, topic)
    target = await ama.send_text(topic, "QUOTE-E2E: une phrase à citer")
    mark = ama.mark()
    await forum.mod.react(topic, target, "📰")
    question = await ama.wait_for(from_bot(room, bot, "QUOTE-E2E"), 20, after=mark)
    mark = ama.mark()
    answer = {
        "msgtype": "m.text",
        "body": "yes",
        "m.relates_to": {"m.in_reply_to": {"event_id": question["event_id"]}},
    }
    await ama.send(room, "m.room.message", answer)
    await ama.wait_for(lambda e: from_bot(room, bot, "")(e), 20, after=mark)
    await eventually(lambda: quote_granted(forum, target), 10, "the quote granted")


async def test_unreadable_message_is_explained_after_one_key_request(forum: Forum):
    """A message whose key was withheld from the bot: the bot asks the sender's device
    for the key once, then explains in clear terms (in both languages: it does not know
    hers yet) how to fix it, in reply; her next message is read."""
    bot = forum.membership_bot_id
    esi = await forum.user("esi", encrypted=True)
    room = await open_encrypted_dm(esi, bot)
    await esi.wait_for(from_bot(room, bot, "Which language"), 30)
    mark = esi.mark()
    unreadable = await esi.send_withholding(room, "English please", bot)
    request = await esi.wait_for(
        lambda e: (
            e["_section"] == "to_device"
            and e["type"] == "m.room_key_request"
            and e["sender"] == bot
            and e["content"]["body"]["room_id"] == room
        ),
        20,
        after=mark,
    )
    assert request["content"]["action"] == "request"
    told = await esi.wait_for(from_bot(room, bot, "could not read your message"), 20, after=mark)
    body = told["content"]["body"]
    assert "Je n’ai pas pu lire votre message" in body
    assert "send it again" in body
    assert told["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == unreadable
    assert told["content"]["m.mentions"] == {"user_ids": [esi.user_id]}
    assert told["content"]["msgtype"] == "m.text"
    mark = esi.mark()
    await esi.send_text(room, "English")
    await esi.wait_for(from_bot(room, bot, CHARTER_EN), 20, after=mark)
    # one request per session: the key was asked for once
    requests = [e for e in esi.events if e["type"] == "m.room_key_request"]
    assert len(requests) == 1


async def test_report_in_an_encrypted_dm_with_the_moderation_bot(forum: Forum):
    """A member reports a message to the moderation bot in an encrypted DM: the case
    card reaches the moderators and the thanks come encrypted, in her language."""
    author = await forum.member("e2eauthor")
    reporter = await forum.user("e2ereporter", encrypted=True)
    await forum.join_forum(reporter)
    bad = await author.send_text(forum.topic, "message à signaler")
    dm = await open_encrypted_dm(reporter, forum.bot_id)
    await reporter.wait_for(is_membership(dm, forum.bot_id, "join"), 20)
    mark, mod_mark = reporter.mark(), forum.mod.mark()
    link = f"https://matrix.to/#/{forum.topic}/{bad}?via={forum.hs.server_name}"
    await reporter.send_text(dm, f"!report harcèlement {link}")
    card = await forum.mod.wait_for(
        lambda e: (
            e["room_id"] == forum.mgmt
            and e["sender"] == forum.bot_id
            and "Dossier n°" in e["content"]["body"]
            and reporter.user_id in e["content"]["body"]
        ),
        20,
        after=mod_mark,
    )
    assert author.user_id in card["content"]["body"]
    await reporter.wait_for(from_bot(dm, forum.bot_id, "Merci"), 20, after=mark)


async def test_restart_keeps_the_device_and_reads_the_next_message(
    start_forum: ForumStarter, tmp_path: Path
):
    """The service restarts in the middle of the consent flow: the bot comes back with
    the same device and keys (kept private in FORUM_HOME), reads the member's next
    encrypted answer and goes on encrypted."""
    home = tmp_path / "home"
    first = await start_forum("membership", home=home)
    bot = first.membership_bot_id
    device = first.ctx.membership_gateway.device_id
    kofi = await first.user("kofi", encrypted=True)
    room = await open_encrypted_dm(kofi, bot)
    await kofi.wait_for(from_bot(room, bot, "Which language"), 30)
    mark = kofi.mark()
    await kofi.send_text(room, "English")
    await kofi.wait_for(from_bot(room, bot, CHARTER_EN), 20, after=mark)
    await start_forum.stop(first)

    again = await start_forum("membership", data=first.data, home=home)
    assert again.ctx.membership_gateway.device_id == device
    mark = kofi.mark()
    await kofi.send_text(room, "I accept")
    await kofi.wait_for(from_bot(room, bot, *PUBLICATION_Q), 20, after=mark)
    store = home / "crypto"
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in store.rglob("*")}
    assert modes
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for p, mode in modes.items():
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    assert all(p.is_dir() for p in store.iterdir())  # one directory per bot account


async def test_a_lost_encryption_store_does_not_stop_the_service(
    start_forum: ForumStarter, tmp_path: Path
):
    """The operator removed FORUM_HOME/crypto (or restored an old backup without it): the
    service still starts, and a new encrypted DM works."""
    home = tmp_path / "home"
    first = await start_forum("membership", home=home)
    await start_forum.stop(first)
    await asyncio.to_thread(shutil.rmtree, home / "crypto")
    again = await start_forum("membership", data=first.data, home=home)
    bot = again.membership_bot_id
    device = again.ctx.membership_gateway.device_id
    assert device != first.ctx.membership_gateway.device_id  # a new device, new keys
    yaw = await again.user("yaw", encrypted=True)
    room = await open_encrypted_dm(yaw, bot)
    await yaw.wait_for(from_bot(room, bot, "Which language"), 30)
    # the new device is kept from then on (the lost one's empty store left beside it)
    await start_forum.stop(again)
    third = await start_forum("membership", data=first.data, home=home)
    assert third.ctx.membership_gateway.device_id == device
    mark = yaw.mark()
    await yaw.send_text(room, "English")
    await yaw.wait_for(from_bot(room, bot, CHARTER_EN), 20, after=mark)


async def bot_keys(user: TestUser, bot: str) -> dict[str, Any]:
    """The bot's devices whose keys a member's client finds (``keys/query``)."""
    found = await user.request("POST", "/_matrix/client/v3/keys/query", {"device_keys": {bot: []}})
    devices = found.get("device_keys", {}).get(bot, {})
    return devices if isinstance(devices, dict) else {}


async def test_a_bot_device_removed_by_the_operator_comes_back_as_a_new_device(
    start_forum: ForumStarter,
):
    """The operator removed the bot's session (a "sign out" of its device in an admin
    tool, as after a suspected leak), its keys with it: the bot logs in again as a new
    device with new keys and reads the next encrypted answer. Logging in again under the
    same device id made the device again with no keys, and members' clients, which
    remember it as removed, never shared a room key with it again: the bot stayed deaf
    to every encrypted DM."""
    forum = await start_forum("membership")
    bot = forum.membership_bot_id
    gateway = forum.ctx.membership_gateway
    device, token = gateway.device_id, gateway.access_token
    yao = await forum.user("yao", encrypted=True)
    room = await open_encrypted_dm(yao, bot)
    await yao.wait_for(from_bot(room, bot, "Which language"), 30)
    assert device in await bot_keys(yao, bot)

    operator = await TestUser.create(forum.hs, "operator", admin=True, sync=False)
    forum.users.append(operator)
    await operator.request("DELETE", f"/_synapse/admin/v2/users/{bot}/devices/{device}")
    assert device not in await bot_keys(yao, bot)
    # something happens in the DM: the bot's sync comes back, and its next one is refused
    await yao.request(
        "PUT", f"/_matrix/client/v3/rooms/{room}/state/m.room.topic", {"topic": "bonjour"}
    )

    async def logged_in_again() -> bool:
        return gateway.access_token not in (None, token) and gateway.device_id != device

    await eventually(logged_in_again, 45, "the bot logged in again as a new device")

    async def keys_published() -> bool:
        return set(await bot_keys(yao, bot)) == {gateway.device_id}

    await eventually(keys_published, 20, "the new device's keys published, alone")
    mark = yao.mark()
    await yao.send_text(room, "English")
    await yao.wait_for(from_bot(room, bot, CHARTER_EN), 30, after=mark)
