"""The membership bot's entry flow through its three doors, on the real Synapse: people
knock, join the lobby or open a DM, read the charter, accept it, choose about
publication, and are invited; the consent records say what they did."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import pytest_asyncio

from forum.signals import MEMBER_LEFT, PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN
from tests.harness import (
    CHARTER_EN,
    CHARTER_FR,
    CONFIG_DIR,
    INVITED,
    PUBLICATION_Q,
    Forum,
    ForumStarter,
    is_membership,
)
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter) -> Forum:
    """One forum for the module (auto approval); each test uses its own people. An
    account the bots ignore is the forum's first user (``forum.users[0]``)."""
    ignored = await TestUser.create(start_module_forum.hs, "otherbot")
    forum = await start_module_forum(
        "membership",
        config={"bots": {"ignore": [ignored.user_id]}},
        membership={"flood_limit": 20, "flood_window_seconds": 4},
    )
    forum.users.append(ignored)
    return forum


def charter_sha(lang: str) -> str:
    text = (CONFIG_DIR / "charter" / lang / "v1.md").read_text(encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def test_knock_french_reply_and_duplicate_knock(forum, make_user):
    """Door 1: a knock with a French reason; a second knock opens no second DM."""
    amina = await make_user("amina")
    space = forum.ctx.rooms["space"]
    await amina.knock(space, "Bonjour, je voudrais rejoindre l'espace", via=forum.via)
    room = await forum.wait_dm(amina)
    charter = await forum.wait_bot_text(amina, room, CHARTER_FR, CHARTER_EN)
    assert CHARTER_FR in charter["content"]["body"]  # French guessed from the knock
    assert "<strong>Respect.</strong>" in charter["content"]["formatted_body"]
    # The same person knocks on a topic room too: same flow, no second DM.
    topic = forum.ctx.rooms.topic_ids["droits-enfants"]
    await amina.knock(topic, "Bonjour encore", via=forum.via)
    mark = amina.mark()
    await amina.send_text(room, "J’accepte !")
    await forum.wait_bot_text(amina, room, *PUBLICATION_Q, after=mark)
    mark = amina.mark()
    await amina.send_text(room, "Oui.")
    await forum.wait_invites(amina)
    await forum.wait_bot_text(amina, room, *INVITED, after=mark)
    assert forum.dm_invites(amina) == {room}
    records = await forum.history(amina.user_id)
    assert [(r.scope, r.granted, r.method) for r in records] == [
        ("charter", True, "reply"),
        ("publication", True, "reply"),
    ]
    assert records[0].charter_version == 1
    assert records[0].text_sha256 == charter_sha("fr")
    assert str(records[0].event_id).startswith("$")
    row = await forum.person(amina.user_id)
    assert row is not None
    assert (row.dm_room_id, row.step) == (room, "member")
    await forum.signals.wait(PUBLICATION_GRANTED, amina.user_id)
    # Accepting the invitation to the knocked topic room works: she is in.
    await amina.join(topic, via=forum.via)


async def test_lobby_door_language_question_reaction_and_refusal(forum, make_user):
    """Door 2: joining the lobby; the bot asks the language in both, ✅ and 👎."""
    kossi = await make_user("kossi")
    await kossi.join(forum.ctx.rooms["lobby"], via=forum.via)
    room = await forum.wait_dm(kossi)
    question = await forum.wait_bot_text(kossi, room, "Which language")
    assert "Dans quelle langue" in question["content"]["body"]
    mark = kossi.mark()
    await kossi.send_text(room, "English")
    charter = await forum.wait_bot_text(kossi, room, CHARTER_EN, after=mark)
    mark = kossi.mark()
    await kossi.react(room, charter["event_id"], "✅")
    asked = await forum.wait_bot_text(kossi, room, "public digest", after=mark)
    await kossi.react(room, asked["event_id"], "👎")
    await forum.wait_invites(kossi)
    records = await forum.history(kossi.user_id)
    assert [(r.scope, r.granted, r.method) for r in records] == [
        ("charter", True, "reaction"),
        ("publication", False, "reaction"),
    ]
    assert records[0].text_sha256 == charter_sha("en")
    assert records[0].event_id != charter["event_id"]  # the reaction's own id


async def test_the_help_of_one_command_in_french_and_english(forum, make_user):
    """``!aide statut`` gives a French member the details of ``!statut`` (usage, what it
    does, other names, examples), generated from the declared registry; ``!help status``
    gives an English member the same in English; a misspelt name gets the nearest one."""

    async def ask(user: TestUser, room: str, text: str, *expect: str) -> list[str]:
        mark = user.mark()
        await user.send_text(room, text)
        answer = await forum.wait_bot_text(user, room, *expect, after=mark)
        return str(answer["content"]["body"]).splitlines()

    ama, kwame = await make_user("amahelp"), await make_user("kwamehelp")
    dm, room = await asyncio.gather(
        forum.admit(ama, knock="Bonjour, je voudrais entrer"),
        forum.admit(kwame, knock="Hello, I would like to join please"),
    )
    fr = await ask(ama, dm, "!aide statut", "Montre la version de la charte")
    assert fr[0] == "!statut", fr
    assert fr[1] == "vos consentements et votre adhésion", fr
    assert {"Aussi : !status.", "Exemples :", "  !statut"} <= set(fr), fr
    assert "Commandes :" not in fr  # the details, not the whole list
    typo = await ask(ama, dm, "!aide statu", "Commande inconnue")
    assert typo[0] == "Commande inconnue : !statu. Vouliez-vous dire !statut ?", typo

    en = await ask(kwame, room, "!help status", "Shows the charter version")
    assert en[0] == "!status", en
    assert en[1] == "your consents and membership", en
    assert {"Also: !statut.", "Examples:", "  !status"} <= set(en), en
    listed = await ask(kwame, room, "!help", "Commands:")
    assert "Details and examples: !help COMMAND." in listed, listed


async def test_a_dm_command_with_a_bad_argument_gets_the_registrys_usage_error(forum, make_user):
    """The membership bot's DM commands have their arguments parsed by the shared registry,
    as the moderation bot's are: a missing, invalid or extra argument gets the usage line
    and what is wrong, in the person's language, and nothing is done (no empty report
    passed to the moderators, no status for a command it does not take)."""

    async def ask(user: TestUser, room: str, text: str, *expect: str) -> str:
        mark = user.mark()
        await user.send_text(room, text)
        answer = await forum.wait_bot_text(user, room, *expect, after=mark)
        return str(answer["content"]["body"])

    abla, kofi = await make_user("ablaargs"), await make_user("kofiargs")
    dm, room = await asyncio.gather(
        forum.admit(abla, knock="Bonjour, je voudrais entrer"),
        forum.admit(kofi, knock="Hello, I would like to join please"),
    )
    missing = await ask(abla, dm, "!signaler", "Utilisation", "Merci")
    assert missing == "Utilisation : !signaler MESSAGE (MESSAGE manquant)", missing
    invalid = await ask(abla, dm, "!publication peut-être", "Utilisation")
    assert invalid == "Utilisation : !publication oui|non (oui|non : peut-être n'est pas valable)"
    extra = await ask(abla, dm, "!statut maintenant", "Utilisation", "Charte")
    assert extra == "Utilisation : !statut (maintenant en trop)", extra

    missing = await ask(kofi, room, "!report", "Usage", "Thank")
    assert missing == "Usage: !report MESSAGE (MESSAGE missing)", missing
    invalid = await ask(kofi, room, "!publication maybe", "Usage")
    assert invalid == "Usage: !publication yes|no (yes|no: maybe is not valid)", invalid
    # A name with apostrophes is taken as written (no shell-like quoting).
    named = await ask(kofi, room, "!public-name Kofi d'Almeida l'aîné", "public name")
    assert "“Kofi d'Almeida l'aîné”" in named, named


@pytest.mark.parametrize("answer", ["I accept", "yes", "ACCEPT!", "jaccepte"])
async def test_each_reply_form_accepts(forum, make_user, answer):
    user = await make_user("forms")
    await user.knock(forum.ctx.rooms["space"], "Hello, I would like to join", via=forum.via)
    room = await forum.wait_dm(user)
    await forum.wait_bot_text(user, room, CHARTER_EN)
    mark = user.mark()
    await user.send_text(room, "maybe later")  # not an acceptance: a reminder
    await forum.wait_bot_text(user, room, "accept the charter", after=mark)
    mark = user.mark()
    await user.send_text(room, answer)
    await forum.wait_bot_text(user, room, "public digest", after=mark)
    records = await forum.history(user.user_id)
    assert [(r.scope, r.method) for r in records] == [("charter", "reply")]


async def test_dm_door_commands_and_bad_input(forum, make_user):
    """Door 3: a DM to the bot; then every DM command, nonsense and oversized input."""
    afi = await make_user("afi")
    room = await forum.open_dm_with_bot(afi)
    mark = afi.mark()
    await afi.send_text(room, "Hello, I would like to join please")
    await forum.wait_bot_text(afi, room, CHARTER_EN, after=mark)
    # A second DM from the same person is declined: one DM room per person.
    second = await afi.create_room(
        is_direct=True, invite=[forum.membership_bot_id], preset="trusted_private_chat"
    )
    await forum.wait_bot_text(afi, room, "We already talk here")
    await afi.wait_for(is_membership(second, forum.membership_bot_id, "leave"))
    mark = afi.mark()
    await afi.send_text(room, "yes")
    await forum.wait_bot_text(afi, room, "public digest", after=mark)
    await afi.send_text(room, "no")
    await forum.wait_invites(afi)

    async def ask(text: str, *expect: str) -> dict:
        mark = afi.mark()
        await afi.send_text(room, text)
        return await forum.wait_bot_text(afi, room, *expect, after=mark)

    helped = await ask("!help", "Commands:")
    for name in ("!aide", "!statut", "!publication", "!retirer", "!quitter", "!mes-donnees"):
        assert name in helped["content"]["body"]
    status = await ask("!status", "Charter:")
    assert "version 1 accepted" in status["content"]["body"]
    assert "Publication in the digest: no." in status["content"]["body"]
    await ask("!publication yes", "may be quoted")
    await forum.signals.wait(PUBLICATION_GRANTED, afi.user_id)
    await ask("!retirer", "will not be quoted")
    await forum.signals.wait(PUBLICATION_WITHDRAWN, afi.user_id)
    await ask("!withdraw", "nothing to withdraw")
    await ask("!publication maybe", "Usage")
    await ask("!frobnicate", "Unknown command")
    await ask("blah blah", "did not understand")
    await ask("x" * 60_000, "too long")  # near the 64 KiB event limit
    # My data: a JSON file in the DM with the whole consent history.
    mark = afi.mark()
    await afi.send_text(room, "!my-data")
    file_ev = await afi.wait_for(
        lambda e: e["room_id"] == room and e["content"].get("msgtype") == "m.file", after=mark
    )
    mxc = file_ev["content"]["url"]
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    data = await afi.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")
    assert data["user_id"] == afi.user_id
    assert [r["scope"] for r in data["consent_records"]] == [
        "charter",
        "publication",
        "publication",
        "publication",
    ]
    assert data["membership"]["dm_room_id"] == room
    # Leaving: removed from every forum room, consent ended.
    await ask("!quitter", "You have left")
    space = forum.ctx.rooms["space"]
    await afi.wait_for(
        is_membership(space, afi.user_id, "leave"),
        timeout=20,
    )
    await forum.signals.wait(MEMBER_LEFT, afi.user_id)
    row = await forum.person(afi.user_id)
    assert row is not None
    assert row.step == "left"
    last = (await forum.history(afi.user_id))[-1]
    assert (last.scope, last.granted, last.method) == ("charter", False, "command")
    assert forum.dm_invites(afi) == set()  # she opened the only DM herself


async def test_leaving_every_room_ends_publication(forum, make_user):
    yao = await make_user("yao")
    await forum.admit(yao, publication=True)
    for room in forum.ctx.rooms.forum_ids:
        await yao.leave(room)  # rejects each invitation
    await forum.signals.wait(PUBLICATION_WITHDRAWN, yao.user_id, timeout=30)
    await forum.signals.wait(MEMBER_LEFT, yao.user_id)
    records = await forum.history(yao.user_id)
    assert (records[-2].scope, records[-2].granted) == ("publication", False)


async def test_flood_is_noticed_once_then_ignored_until_quiet(forum, make_user):
    ama = await make_user("ama")
    await ama.knock(forum.ctx.rooms["space"], "Bonjour", via=forum.via)
    room = await forum.wait_dm(ama)
    await forum.wait_bot_text(ama, room, CHARTER_FR)
    mark = ama.mark()
    # 25 messages at once (the limit is 20 in a 4 s window, judged by send time).
    await asyncio.gather(*(ama.send_text(room, f"spam {i}") for i in range(25)))
    notice = await forum.wait_bot_text(ama, room, "trop de messages", after=mark, timeout=40)
    # The person falls silent for the whole window (4 s here): being quiet is the
    # condition itself, so this pause is the scenario, not a wait for an outcome.
    await asyncio.sleep(4.5)

    async def accept() -> dict:
        mark = ama.mark()
        await ama.send_text(room, "j'accepte")
        return await forum.wait_bot_text(ama, room, *PUBLICATION_Q, after=mark)

    # Answered again once quiet, and no second notice came before that answer.
    await forum.assert_nothing(
        ama,
        lambda e: (
            e["sender"] == forum.membership_bot_id and "trop de messages" in e["content"]["body"]
        ),
        accept,
        after=ama.events.index(notice) + 1,
        what="a second flood notice",
    )


async def test_ignored_accounts_get_no_dm(forum, make_user):
    other = forum.users[0]
    control = await make_user("control")
    await other.knock(forum.ctx.rooms["space"], "Hello", via=forum.via)
    await control.knock(forum.ctx.rooms["space"], "Hello", via=forum.via)
    echo_room = await other.create_room()
    # The bot handled the later knock, and not the ignored account's.
    await forum.assert_nothing(
        other,
        lambda e: forum.is_dm_invite(other, e),
        lambda: forum.wait_dm(control),
        after=0,
        echo_room=echo_room,
        what="a DM for an ignored account",
    )
    assert await forum.person(other.user_id) is None


async def test_a_member_who_closed_the_dm_can_open_a_new_one(forum, make_user):
    """Leaving the DM (closing the chat in a client) does not lock the person out: a new
    DM replaces the old one, which the bot leaves; there the bot answers."""
    yao = await make_user("yao")
    room = await forum.open_dm_with_bot(yao)
    mark = yao.mark()
    await yao.send_text(room, "English please")
    await forum.wait_bot_text(yao, room, CHARTER_EN, after=mark)
    await yao.send_text(room, "I accept")
    await forum.wait_bot_text(yao, room, "public digest", after=mark)
    await yao.send_text(room, "no")
    await forum.wait_invites(yao)
    await yao.leave(room)

    mark = yao.mark()
    fresh = await yao.create_room(
        is_direct=True, invite=[forum.membership_bot_id], preset="trusted_private_chat"
    )
    await forum.wait_bot_text(yao, fresh, "Commands:", after=mark)
    row = await forum.person(yao.user_id)
    assert row is not None
    assert row.dm_room_id == fresh
    mark = yao.mark()
    await yao.send_text(fresh, "!status")
    status = await forum.wait_bot_text(yao, fresh, "Charter:", after=mark)
    assert "version 1 accepted" in status["content"]["body"]
    # While the person is still in their DM, a second one is still declined.
    third = await yao.create_room(
        is_direct=True, invite=[forum.membership_bot_id], preset="trusted_private_chat"
    )
    await forum.wait_bot_text(yao, fresh, "We already talk here", after=mark)
    await yao.wait_for(is_membership(third, forum.membership_bot_id, "leave"))
