"""Bad input in the consent conversation (issue #10, "Bad input"), on the real Synapse:
answers in any form, replies to questions already answered or unknown, edits of an
answer, a burst of answers, a DM shared with a third person. Each gets a clear reply in
the person's language and nothing wrong is recorded."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from tests.harness import CHARTER_EN, CHARTER_FR, INVITED, Forum, ForumStarter
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver

QUESTION = "Encore une question"  # the publication question (French)
ALREADY = "Cette question a déjà reçu une réponse"
EDITED = "Un message modifié ne change pas une réponse"
PERSONAL = "Cette conversation est personnelle"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter) -> Forum:
    return await start_module_forum("membership")


async def knock(forum: Forum, user: TestUser) -> tuple[str, dict]:
    """``user`` knocks (in French); returns the DM and the charter message."""
    await user.knock(forum.ctx.rooms["space"], "Bonjour, je voudrais rejoindre", via=forum.via)
    room = await forum.wait_dm(user)
    charter = await forum.wait_bot_text(user, room, CHARTER_FR, CHARTER_EN)
    return room, charter


async def records(forum: Forum, user: TestUser) -> list[tuple[str, bool]]:
    return [(r.scope, r.granted) for r in await forum.history(user.user_id)]


def reply(body: str, to: str) -> dict:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": to}}}


def edit(body: str, of: str) -> dict:
    return {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": of},
    }


@pytest.mark.parametrize(("charter", "publication"), [("OUI!!", "Oui 👍"), ("ouí", "d’accord.")])
async def test_answers_in_any_case_accent_punctuation_or_emoji(
    forum: Forum, make_user, charter: str, publication: str
):
    user = await make_user("kossi")
    room, _ = await knock(forum, user)
    mark = user.mark()
    await user.send_text(room, charter)
    await forum.wait_bot_text(user, room, QUESTION, after=mark)
    mark = user.mark()
    await user.send_text(room, publication)
    await forum.wait_invites(user)
    await forum.wait_bot_text(user, room, *INVITED, after=mark)
    assert await records(forum, user) == [("charter", True), ("publication", True)]


async def test_an_edit_never_changes_an_answer(forum: Forum, make_user):
    """Defect: editing the charter's "oui" into "non" was taken as the publication
    answer (a "no" recorded that the person never gave to that question)."""
    user = await make_user("edem")
    room, _ = await knock(forum, user)
    mark = user.mark()
    accepted = await user.send_text(room, "oui")
    await forum.wait_bot_text(user, room, QUESTION, after=mark)

    mark = user.mark()
    await user.send(room, "m.room.message", edit("non", accepted))
    told = await forum.wait_bot_text(user, room, EDITED, after=mark)
    assert "!publication" in told["content"]["body"]
    await forum.outbox_idle()
    assert await records(forum, user) == [("charter", True)]

    # The question still waits; a real answer counts, and an edit of it changes nothing.
    mark = user.mark()
    answer = await user.send_text(room, "non")
    await forum.wait_invites(user)
    mark = user.mark()
    await user.send(room, "m.room.message", edit("oui", answer))
    await forum.wait_bot_text(user, room, EDITED, after=mark)
    await forum.outbox_idle()
    assert await records(forum, user) == [("charter", True), ("publication", False)]


async def test_a_burst_of_answers_counts_once(forum: Forum, make_user):
    """Defect: three "oui" sent at once accepted the charter and answered the publication
    question nobody had read yet (it was not even asked)."""
    user = await make_user("afi")
    room, _ = await knock(forum, user)
    mark = user.mark()
    await asyncio.gather(*(user.send_text(room, "oui") for _ in range(3)))
    await forum.wait_bot_text(user, room, QUESTION, after=mark)

    async def told_twice() -> bool:
        bodies = [
            str(e["content"].get("body", ""))
            for e in user.events[mark:]
            if e.get("sender") == forum.membership_bot_id
        ]
        return sum(ALREADY in b for b in bodies) == 2

    from tests.harness import eventually

    await eventually(told_twice, 20, "the two other answers told it was answered")
    await forum.outbox_idle()
    assert await records(forum, user) == [("charter", True)]
    row = await forum.person(user.user_id)
    assert row is not None
    assert row.step == "publication"


async def test_replies_to_answered_or_unknown_questions(forum: Forum, make_user):
    user = await make_user("yawa")
    room, charter = await knock(forum, user)
    mark = user.mark()
    await user.send_text(room, "j'accepte")
    await forum.wait_bot_text(user, room, QUESTION, after=mark)

    # "non" in reply to the charter, answered already: told so, nothing recorded.
    mark = user.mark()
    await user.send(room, "m.room.message", reply("non", charter["event_id"]))
    await forum.wait_bot_text(user, room, ALREADY, after=mark)
    # "oui" in reply to her own message (no question): told so.
    own = await user.send_text(room, "une remarque")
    mark = user.mark()
    await user.send(room, "m.room.message", reply("oui", own))
    await forum.wait_bot_text(user, room, "ne répond à aucune question", after=mark)
    # A ✅ on the charter again: told so.
    mark = user.mark()
    await user.react(room, charter["event_id"], "✅")
    await forum.wait_bot_text(user, room, ALREADY, after=mark)
    await forum.outbox_idle()
    assert await records(forum, user) == [("charter", True)]


async def test_a_dm_shared_with_a_third_person(forum: Forum, make_user):
    """Defect: someone invited into another person's DM with the bot was met with
    silence; now they are told the conversation is personal, and nothing they write
    or react there is recorded for the DM's owner."""
    owner = await make_user("ama")
    guest = await make_user("kodjo")
    room, charter = await knock(forum, owner)
    await owner.invite(room, guest.user_id)
    await guest.join(room)

    mark = guest.mark()
    await guest.send_text(room, "oui")
    told = await forum.wait_bot_text(guest, room, PERSONAL, after=mark)
    assert owner.user_id in told["content"]["body"]
    mark = guest.mark()
    await guest.react(room, charter["event_id"], "✅")
    await forum.wait_bot_text(guest, room, PERSONAL, after=mark)
    mark = guest.mark()
    await guest.send_text(room, "!publication oui")
    await forum.wait_bot_text(guest, room, PERSONAL, after=mark)
    await forum.outbox_idle()
    assert await records(forum, owner) == []
    assert await records(forum, guest) == []

    # The owner's own answers still count.
    mark = owner.mark()
    await owner.send_text(room, "oui")
    await forum.wait_bot_text(owner, room, QUESTION, after=mark)
    assert await records(forum, owner) == [("charter", True)]
