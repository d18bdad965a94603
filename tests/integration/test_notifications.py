"""Questions that reach a phone (issue #13, defects 2, 3 and 4), as a real client sees them
through its own sync: every question the bots ask of a person is an ``m.text`` naming that
person in ``m.mentions`` (Element's default ``.m.rule.suppress_notices`` silences notices),
purely informative echoes stay notices; a reminder comes before a re-consent deadline; the
bot puts ✅ / 👍 / 👎 on its own yes/no questions, so a tap answers (👍 and ✅ both mean
yes, the bot's own reactions never do); the DM with the welcome bot is not named after the
forum."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from bridge.models import QuotePermission
from forum.storage import utcnow
from moderation.membership.models import CHARTER, MEMBER
from moderation.membership.repositories import People
from tests.harness import (
    CHARTER_EN,
    CHARTER_FR,
    PUBLICATION_Q,
    Forum,
    ForumStarter,
    config_dir_with_charters,
    eventually,
)
from tests.matrix_user import MatrixRequestError, TestUser

pytestmark = pytest.mark.homeserver

Event = dict[str, Any]


def assert_asks(event: Event, *people: str) -> None:
    """``event`` is a question that notifies ``people``: an ``m.text`` (not a notice, which
    the default push rules silence) naming them in ``m.mentions``."""
    content = event["content"]
    assert event["type"] == "m.room.message"
    assert content["msgtype"] == "m.text", content.get("body")
    mentioned = set(content.get("m.mentions", {}).get("user_ids", []))
    assert set(people) <= mentioned, (people, mentioned)


def assert_informs(event: Event) -> None:
    """``event`` only informs: a notice."""
    assert event["content"]["msgtype"] == "m.notice", event["content"].get("body")


async def bot_reactions(
    forum: Forum, user: TestUser, room: str, event_id: str, keys: set[str], after: int = 0
) -> None:
    """``user`` sees the membership bot's reactions ``keys`` on ``event_id``."""
    waiting = set(keys)

    def pred(e: Event) -> bool:
        rel = e["content"]["m.relates_to"]
        if (
            e["room_id"] == room
            and e["type"] == "m.reaction"
            and e["sender"] == forum.membership_bot_id
            and rel["event_id"] == event_id
        ):
            waiting.discard(rel["key"])
        return not waiting

    await user.wait_for(pred, 20, after=after)


async def room_name(user: TestUser, room: str) -> str | None:
    """The room's ``m.room.name`` as ``user`` reads it (None: the room has none)."""
    try:
        content = await user.get_state_event(room, "m.room.name")
    except MatrixRequestError as exc:
        if exc.status != 404:
            raise
        return None
    return str(content.get("name", ""))


async def step_of(forum: Forum, user_id: str) -> str | None:
    person = await forum.person(user_id)
    return person.step if person else None


async def test_questions_notify_and_echoes_inform(start_forum: ForumStarter, make_user):
    """Language, charter, publication, approval card and quote question: each an m.text
    mentioning whom it asks; the acknowledgements stay notices."""
    forum = await start_forum(
        "membership",
        "digest",
        moderator=True,
        config={"membership": {"approval": "moderators"}},
    )
    kafui = await make_user("kafui", display_name="Kafui")
    mark = kafui.mark()
    dm = await kafui.create_room(
        is_direct=True, invite=[forum.membership_bot_id], preset="trusted_private_chat"
    )
    language = await forum.wait_bot_text(kafui, dm, "Which language", after=mark)
    assert_asks(language, kafui.user_id)

    mark = kafui.mark()
    await kafui.send_text(dm, "français")
    charter = await forum.wait_bot_text(kafui, dm, CHARTER_FR, after=mark)
    assert_asks(charter, kafui.user_id)

    mark = kafui.mark()
    await kafui.send_text(dm, "J'accepte")
    publication = await forum.wait_bot_text(kafui, dm, *PUBLICATION_Q, after=mark)
    assert_asks(publication, kafui.user_id)

    mark = kafui.mark()
    mod_mark = forum.mod.mark()
    await kafui.send_text(dm, "non")  # so that a quote of hers is asked for, below
    noted = await forum.wait_bot_text(kafui, dm, "ne seront pas cités", after=mark)
    assert_informs(noted)
    waiting = await forum.wait_bot_text(kafui, dm, "modératrice", after=mark)
    assert_informs(waiting)

    # The approval card notifies the moderators of the management room by name, and
    # shows the person asking as a pill.
    management = forum.ctx.rooms["management"]
    card = await forum.wait_bot_text(
        forum.mod, management, f"adhésion de {kafui.user_id}", after=mod_mark
    )
    assert_asks(card, forum.mod.user_id)
    assert f'href="https://matrix.to/#/{kafui.user_id}"' in card["content"]["formatted_body"]
    assert kafui.user_id not in card["content"]["m.mentions"]["user_ids"], (
        "the person asking is not in the management room: naming them there notifies nobody"
    )
    assert forum.membership_bot_id not in card["content"]["m.mentions"]["user_ids"]

    mod_mark = forum.mod.mark()
    reply = await forum.mod.send_text(management, f"!approve {kafui.user_id}")
    echo = await forum.wait_bot_text(forum.mod, management, kafui.user_id, after=mod_mark)
    assert echo["event_id"] != reply
    assert_informs(echo)

    # The digest's quote question, in the same DM.
    await forum.wait_invites(kafui)
    room = forum.room()
    await forum.join(kafui, room)
    await forum.join(forum.mod, room)
    target = await kafui.send_text(room, "QUOTE-NOTIFY: les filles à l'école")
    mark = kafui.mark()
    await forum.mod.react(room, target, "📰")
    quote_q = await forum.wait_bot_text(kafui, dm, "QUOTE-NOTIFY", after=mark)
    assert_asks(quote_q, kafui.user_id)


async def test_one_tap_answers(start_forum: ForumStarter, make_user):
    """The bot reacts ✅ on the charter and 👍 / 👎 on the publication and quote questions;
    a tap on its reaction (the same key) answers; 👍 accepts the charter; the bot's own
    reactions answer nothing. (A quote is asked for only of who refused publication.)"""
    forum = await start_forum("membership", "digest", moderator=True, moderator_joins=())
    ama = await make_user("ama", display_name="Ama")
    mark = ama.mark()
    await ama.knock(forum.rooms["space"], "Bonjour, je voudrais rejoindre", via=forum.via)
    dm = await forum.wait_dm(ama, after=mark)
    charter = await forum.wait_bot_text(ama, dm, CHARTER_FR, CHARTER_EN)
    await bot_reactions(forum, ama, dm, charter["event_id"], {"✅"})
    # The bot's own ✅ is not an acceptance.
    await forum.outbox_idle()
    assert await step_of(forum, ama.user_id) == CHARTER
    assert not [r for r in await forum.history(ama.user_id) if r.scope == "charter"]

    # 👍 on the charter accepts it (a phone's quickest reaction).
    mark = ama.mark()
    await ama.react(dm, charter["event_id"], "👍")
    publication = await forum.wait_bot_text(ama, dm, *PUBLICATION_Q, after=mark)
    await bot_reactions(forum, ama, dm, publication["event_id"], {"👍", "👎"})
    charters = [(r.granted, r.method) for r in await forum.history(ama.user_id)]
    assert charters == [(True, "reaction")]
    assert await step_of(forum, ama.user_id) != MEMBER

    # Tapping the bot's 👎 (a client sends the same key) answers no.
    mark = ama.mark()
    await ama.react(dm, publication["event_id"], "👎")
    await forum.wait_bot_text(ama, dm, "ne seront pas cités", after=mark)
    await forum.wait_invites(ama)
    records = [(r.scope, r.granted, r.method) for r in await forum.history(ama.user_id)]
    assert records[-1] == ("publication", False, "reaction")

    # A quote question: 👍 / 👎 from the bot; a tap on 👍 allows this one quote.
    room = forum.room()
    await forum.join(ama, room)
    await forum.join(forum.mod, room)
    target = await ama.send_text(room, "QUOTE-TAP: un message à citer")
    mark = ama.mark()
    await forum.mod.react(room, target, "📰")
    quote_q = await forum.wait_bot_text(ama, dm, "QUOTE-TAP", after=mark)
    await bot_reactions(forum, ama, dm, quote_q["event_id"], {"👍", "👎"}, after=mark)

    async def answer() -> bool | None:
        async with forum.ctx.db.sessionmaker() as s:
            row = await s.get(QuotePermission, target)
            return row.granted if row else None

    assert await answer() is None, "the bot's own reactions are no answer"
    mark = ama.mark()
    await ama.react(dm, quote_q["event_id"], "👍")
    await forum.wait_bot_text(ama, dm, "paraîtra dans le résumé public", after=mark)
    await eventually(lambda: _granted(answer), 10, "the quote allowed")


async def _granted(answer: Any) -> bool:
    return await answer() is True


async def test_reconsent_asks_reminds_and_a_tap_accepts(
    start_forum: ForumStarter, make_user, tmp_path
):
    """A new charter: the re-consent request notifies and carries the bot's ✅; some hours
    before the deadline a reminder (an m.text mentioning the person, replying to the
    request) comes; tapping ✅ accepts."""
    config_dir = config_dir_with_charters(tmp_path / "config", versions=(1, 2))
    home = tmp_path / "home"
    first = await start_forum("membership", home=home, config_dir=config_dir)
    data = first.data
    try:
        yao = await make_user("yao")
        dm = await first.admit(yao)
    finally:
        await start_forum.stop(first)

    v2 = copy.deepcopy(data)
    # The reminder comes 24 hours before the deadline by default (reminder_hours).
    v2["membership"]["charter"].update({"version": 2, "grace_days": 3})
    mark = yao.mark()
    second = await start_forum("membership", data=v2, home=home, config_dir=config_dir)
    try:
        asked = await second.wait_bot_text(yao, dm, "La charte a changé", after=mark)
        assert_asks(asked, yao.user_id)
        await bot_reactions(second, yao, dm, asked["event_id"], {"✅"}, after=mark)
        row = await second.person(yao.user_id)
        assert row is not None
        assert row.reconsent_version == 2
        # No reminder while the deadline is days away.
        await second.assert_nothing(
            yao,
            lambda e: e["room_id"] == dm and "Rappel" in e["content"]["body"],
            second.membership_marker(yao, dm),
            after=mark,
            what="a reminder three days before the deadline",
        )
        # Time passes: the deadline is now 20 hours away, within the 24 hours of reminder.
        async with second.ctx.db.sessionmaker() as s, s.begin():
            person = await People(s).get(yao.user_id)
            assert person is not None
            person.grace_deadline = utcnow() + timedelta(hours=20)
        mark = yao.mark()
        reminder = await second.wait_bot_text(yao, dm, "Rappel", after=mark)
        assert_asks(reminder, yao.user_id)
        relates = reminder["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
        assert relates == asked["event_id"]
        # Only one reminder for one deadline.
        await second.assert_nothing(
            yao,
            lambda e: (
                e["room_id"] == dm
                and e["event_id"] != reminder["event_id"]
                and "Rappel" in e["content"]["body"]
            ),
            second.membership_marker(yao, dm),
            after=mark,
            what="a second reminder",
        )
        # A tap on the bot's ✅ accepts version 2.
        mark = yao.mark()
        await yao.react(dm, asked["event_id"], "✅")
        thanks = await second.wait_bot_text(yao, dm, "version 2 est enregistrée", after=mark)
        assert_informs(thanks)
        row = await second.person(yao.user_id)
        assert row is not None
        assert (row.reconsent_version, row.grace_deadline) == (None, None)
    finally:
        await start_forum.stop(second)


async def test_welcome_dm_is_not_named_after_the_forum(start_forum: ForumStarter, make_user):
    """The DM the welcome bot opens has no name of its own: clients name it after the bot,
    and the newcomer does not see two "Espace commun" entries."""
    forum = await start_forum("membership")
    koffi = await make_user("koffi")
    mark = koffi.mark()
    await koffi.knock(forum.rooms["space"], "Bonjour", via=forum.via)
    dm = await forum.wait_dm(koffi, after=mark)
    await forum.wait_bot_text(koffi, dm, CHARTER_FR, CHARTER_EN)
    space_name = forum.settings.text(forum.settings.forum.name)
    name = await room_name(koffi, dm)
    assert name in (None, ""), f"the DM is named {name!r} (the Space: {space_name!r})"
    # Still a DM the client lists as one, with the bot.
    members = await koffi.request("GET", f"/_matrix/client/v3/rooms/{dm}/joined_members")
    assert set(members["joined"]) == {koffi.user_id, forum.membership_bot_id}
